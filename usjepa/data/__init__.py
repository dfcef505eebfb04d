"""Ultrasound data: the B-mode simulator (`usjepa.data.sim`), sources (folders, manifests, DICOM, video,
UltraBench), fan-aware preprocessing, seedable transforms, balanced sampling weights and patient-grouped splits.

The names below load on first use (usjepa.lazy), so the light `usjepa.data.spec` imports no numpy or torch.
"""

from __future__ import annotations

from usjepa.data.spec import DataConfig
from usjepa.lazy import lazy_exports

_EXPORTS = {
    "build_dataset": "usjepa.data.build",
    "load_table": "usjepa.data.build",
    "simulated_root": "usjepa.data.build",
    "UltrasoundDataset": "usjepa.data.dataset",
    "collate_skip_bad": "usjepa.data.dataset",
    "BadItem": "usjepa.data.errors",
    "DataError": "usjepa.data.errors",
    "sampling_weights": "usjepa.data.samplers",
    "SplitLeakageError": "usjepa.data.splits",
    "check_patient_leakage": "usjepa.data.splits",
    "make_patient_splits": "usjepa.data.splits",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["DataConfig", *_EXPORTS]
