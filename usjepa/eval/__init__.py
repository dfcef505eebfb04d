"""Probing frozen encoders: cached features, linear / attentive / kNN / regression probes, metrics, suites.

The plain API for fixed features is `linear_probe(train=(X, y), val=(X, y), test=(X, y))`; `usjepa probe CONFIG`
runs a whole suite (encoders x datasets x protocol) into one results table. The names below load on first use
(usjepa.lazy), so the probe config (`usjepa.eval.config`, `usjepa.eval.spec`) reads without torch.
"""

from __future__ import annotations

from usjepa.lazy import lazy_exports

_EXPORTS = {
    "attentive_probe": "usjepa.eval.attentive",
    "ProbeResult": "usjepa.eval.suite",
    "run_probe": "usjepa.eval.suite",
    "ProbeRunConfig": "usjepa.eval.spec",
    "load_probe_config": "usjepa.eval.config",
    "apply_corruption": "usjepa.eval.corruptions",
    "build_probe_encoder": "usjepa.eval.encoders",
    "FeatureSet": "usjepa.eval.features",
    "extract_features": "usjepa.eval.features",
    "knn_probe": "usjepa.eval.knn",
    "linear_probe": "usjepa.eval.linear",
    "bootstrap_ci": "usjepa.eval.metrics",
    "classification_metrics": "usjepa.eval.metrics",
    "regression_metrics": "usjepa.eval.metrics",
    "periodic_probe": "usjepa.eval.periodic",
    "quick_linear_probe": "usjepa.eval.periodic",
    "regression_probe": "usjepa.eval.regression",
    "DegenerateSplitError": "usjepa.eval.splits",
    "PatientLeakageError": "usjepa.eval.splits",
    "check_no_leakage": "usjepa.eval.splits",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
