"""The `data:` config section (owned by usjepa.data)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    source: str = "simulate"  # simulate | folder | manifest | dicom | video | ultrabench
    root: str = ""  # folder / UltraBench root / simulated dataset dir (generated there when missing)
    manifest: str = ""  # CSV or Parquet manifest
    task: str = "lesion"  # simulator task, or the label column for labelled sources
    num_images: int = 512  # simulator: images to generate when root is empty
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 0
    channels: int = 1  # images leave the pipeline with 1 or 3 channels, floats in [0, 1]
    preprocess: str = "none"  # none | usjepa (grayscale, overlay inpaint, 2-98 percentile rescale in region)
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    bad_item_threshold: float = 0.05  # stop with an error when more than this share of items is bad
