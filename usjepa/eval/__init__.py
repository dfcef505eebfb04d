"""Probing frozen encoders: cached features, linear / attentive / kNN / regression probes, metrics, suites.

The plain API for fixed features is `linear_probe(train=(X, y), val=(X, y), test=(X, y))`; `usjepa probe CONFIG`
runs a whole suite (encoders x datasets x protocol) into one results table.
"""

from usjepa.eval.attentive import attentive_probe
from usjepa.eval.config import ProbeRunConfig, load_probe_config
from usjepa.eval.corruptions import apply_corruption
from usjepa.eval.encoders import build_probe_encoder
from usjepa.eval.features import FeatureSet, extract_features
from usjepa.eval.knn import knn_probe
from usjepa.eval.linear import linear_probe
from usjepa.eval.metrics import bootstrap_ci, classification_metrics, regression_metrics
from usjepa.eval.periodic import periodic_probe, quick_linear_probe
from usjepa.eval.regression import regression_probe
from usjepa.eval.splits import DegenerateSplitError, PatientLeakageError, check_no_leakage
from usjepa.eval.suite import ProbeResult, run_probe

__all__ = ["DegenerateSplitError", "FeatureSet", "PatientLeakageError", "ProbeResult", "ProbeRunConfig",
           "apply_corruption", "attentive_probe", "bootstrap_ci", "build_probe_encoder", "check_no_leakage",
           "classification_metrics", "extract_features", "knn_probe", "linear_probe", "load_probe_config",
           "periodic_probe", "quick_linear_probe", "regression_metrics", "regression_probe", "run_probe"]
