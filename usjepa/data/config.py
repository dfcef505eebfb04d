"""The `data:` config section (owned by usjepa.data)."""

from __future__ import annotations

from dataclasses import dataclass, field

PANES = ("split", "whole")  # data.panes
COLOUR_FRAMES = ("skip", "gray", "keep")  # data.colour_frames
SOURCES = ("simulate", "folder", "manifest", "dicom", "video", "ultrabench", "prepared")  # data.source


@dataclass
class DataConfig:
    source: str = "simulate"  # simulate | folder | manifest | dicom | video | ultrabench | prepared (shards)
    root: str = ""  # folder / UltraBench root / simulated dataset dir (generated there when missing) / shard folder
    manifest: str = ""  # CSV or Parquet manifest
    task: str = "lesion"  # simulator task, or the label column for labelled sources ("folder": sub-folder names)
    num_images: int = 512  # simulator: images to generate when root is empty
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 0
    channels: int = 1  # images leave the pipeline with 1 or 3 channels, floats in [0, 1]
    # none | fan (crop to the fan, clear outside it) | usjepa (whole frame: gray, small colour marks inpainted,
    # 2-98 percentile rescale with percentiles from inside the fan) | usrc (fan + the usjepa rescale; USrc-JEPA)
    preprocess: str = "none"
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])  # random-resized-crop aspect w / h
    bad_item_threshold: float = 0.05  # stop with an error when more than this share of items is bad
    # --- region (fan) mask and geometry
    region: str = "auto"  # auto (mask files, else estimated) | given (mask files only) | estimate | none (all True)
    resize: str = "pad"  # pad (keep aspect, zero pad) | squash, for un-augmented views
    # default (gain/contrast/gamma jitter + blur + speckle) | usjepa (contrast, blur, speckle: the paper's list)
    # | trivial (TrivialAugment-style) | none (geometry only: V-JEPA / SALT, MAE)
    augment_policy: str = "default"
    hflip: float = 0.5
    vflip: float = 0.0
    # --- sources
    frame_stride: int = 1  # DICOM cine / video: keep every n-th frame
    max_frames: int = 0  # DICOM cine / video: at most this many frames per file, evenly spread (0 = all)
    panes: str = "split"  # multi-pane exports: split (each pane is an item with its own region) | whole (one item)
    colour_frames: str = "skip"  # colour / power Doppler frames: skip (reported) | gray (colour inpainted) | keep
    max_side: int = 0  # `usjepa data prepare`: longer side of stored frames (0 = twice the larger model.img_size side)
    patient_regex: str = ""  # folder sources: regex on the relative path whose group 1 is the patient id
    groups: str = "auto"  # kept whole by splits: auto (patient, else video/study id) | none (each file) | a column
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # when the source has no splits
    # --- balanced sampling (US-JEPA: per-dataset cap; organ weights fix organ bias)
    balance: str = "none"  # none | dataset | organ
    balance_cap: int = 50000  # N_cap: a group counts with min(|group|, cap) items
    balance_weights: dict[str, float] = field(default_factory=dict)  # extra multiplier per dataset / organ name
    # --- simulator (source=simulate)
    sim_size: int = 256
    sim_frames_per_patient: int = 4
    sim_dress: float = 0.5  # share of simulated patients with scanner overlays
    sim_probe: str = ""  # linear / curvilinear / phased; "" = a mix
    sim_organ: str = ""  # liver / kidney / muscle / breast; "" = a mix
    sim_lesion_size: list[float] = field(default_factory=list)  # [lo, hi] diameter / depth; [] = [0.08, 0.25]
    sim_workers: int = 0  # processes that simulate (0 = one per CPU core, at most 8); the data do not depend on it
