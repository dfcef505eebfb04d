"""Ultrasound data: the B-mode simulator (`usjepa.data.sim`), sources (folders, manifests, DICOM, video,
UltraBench), fan-aware preprocessing, seedable transforms, balanced sampling weights and patient-grouped splits."""

from usjepa.data.build import build_dataset, load_table, simulated_root
from usjepa.data.config import DataConfig
from usjepa.data.dataset import UltrasoundDataset, collate_skip_bad
from usjepa.data.errors import BadItem, DataError
from usjepa.data.samplers import sampling_weights
from usjepa.data.splits import SplitLeakageError, check_patient_leakage, make_patient_splits

__all__ = ["BadItem", "DataConfig", "DataError", "SplitLeakageError", "UltrasoundDataset", "build_dataset",
           "check_patient_leakage", "collate_skip_bad", "load_table", "make_patient_splits", "sampling_weights",
           "simulated_root"]
