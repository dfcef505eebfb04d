"""The `data:` config section (owned by usjepa.data) and the names its keys accept (light: no numpy, no torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from usjepa.registry import Registry
from usjepa.spec import Spec, at_least, choice, fail, interval, key, within

# a source's target reads its item table: (data section) -> DataFrame (usjepa.data.tables); optional facts:
# `kinds` (file kinds a folder source lists), `check` ((data section, img_size) -> None, run when the config loads
# and before the table is read) and `dataset` ((table, data section, img_size, augment, seed, class names) ->
# Dataset; default usjepa.data.dataset.UltrasoundDataset), each a `module:attribute` string; `generated` (items
# are made on first use: no folder to find, single-pane B-mode frames), `reads_manifest` (the table is a file,
# data.manifest or <data.root>/manifest.csv), `prepared` (already shards: nothing to prepare)
DATA_SOURCES = Registry("data source")
DATA_SOURCES.register("simulate", "usjepa.data.tables:simulate_table",
                      summary="B-mode simulator (generated into data.root when missing)", generated=True)
DATA_SOURCES.register("folder", "usjepa.data.tables:files_table",
                      summary="images, DICOM and video files under data.root", kinds=("image", "dicom", "video"))
DATA_SOURCES.register("manifest", "usjepa.data.tables:manifest_table", summary="a CSV / Parquet table of files",
                      reads_manifest=True)
DATA_SOURCES.register("dicom", "usjepa.data.tables:files_table", summary="DICOM files under data.root",
                      kinds=("dicom",))
DATA_SOURCES.register("video", "usjepa.data.tables:files_table", summary="video files under data.root",
                      kinds=("video",))
DATA_SOURCES.register("ultrabench", "usjepa.data.tables:ultrabench_table", summary="an UltraBench dataset folder")
DATA_SOURCES.register("prepared", "usjepa.data.tables:prepared_table",
                      summary="shards written by `usjepa data prepare`",
                      check="usjepa.data.shards:check_prepared", dataset="usjepa.data.prepared:prepared_dataset",
                      prepared=True)
SOURCES = DATA_SOURCES.names()  # data.source
PANES = ("split", "whole")  # data.panes
COLOUR_FRAMES = ("skip", "gray", "keep")  # data.colour_frames
PREPROCESS = ("none", "fan", "usjepa", "usrc")  # data.preprocess
# The rules that turn an item and its data settings into pixels (preprocess, crop, resize, region). Bump it when a
# setting's pixels change meaning, so that every stored view (teacher target caches, probe feature caches,
# prepared shards) is rebuilt instead of silently reused. 1: data.preprocess=usjepa cropped to the fan;
# 2: data.preprocess=usjepa keeps the whole frame (usrc crops to the fan).
VIEW_VERSION = 2
AUGMENT_POLICIES = ("default", "usjepa", "trivial", "none")  # data.augment_policy
REGIONS = ("auto", "given", "estimate", "none")  # data.region
RESIZE = ("pad", "squash")  # data.resize
BALANCE = ("none", "dataset", "organ")  # data.balance
# the simulator's vocabulary (usjepa.data.sim.phantom draws from these)
ORGANS = ("liver", "kidney", "muscle", "breast")
LESIONS = ("normal", "cyst", "solid_hypoechoic", "solid_hyperechoic")
PROBES = ("linear", "curvilinear", "phased")


@dataclass
class DataConfig(Spec):
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

    def check(self) -> None:
        DATA_SOURCES.check(self.source, "source")
        for name, names in (("preprocess", PREPROCESS), ("augment_policy", AUGMENT_POLICIES), ("region", REGIONS),
                            ("resize", RESIZE), ("balance", BALANCE), ("panes", PANES),
                            ("colour_frames", COLOUR_FRAMES), ("sim_probe", PROBES), ("sim_organ", ORGANS)):
            if getattr(self, name) or not name.startswith("sim_"):  # sim_probe / sim_organ "": a mix
                choice(getattr(self, name), names, name)
        for name, lo in (("num_images", 1), ("batch_size", 1), ("num_workers", 0), ("frame_stride", 1),
                         ("max_frames", 0), ("max_side", 0), ("balance_cap", 1), ("sim_size", 16),
                         ("sim_frames_per_patient", 1), ("sim_workers", 0)):
            at_least(getattr(self, name), lo, name)
        if self.channels not in (1, 3):
            fail(f"{key('channels')} must be 1 or 3, got {self.channels}")
        interval(self.crop_scale, "crop_scale", 0.0, 1.0, open_lo=True)
        interval(self.crop_ratio, "crop_ratio", 0.0, open_lo=True)
        for name in ("bad_item_threshold", "hflip", "vflip", "sim_dress"):
            within(getattr(self, name), 0.0, 1.0, name)
        fr = list(self.split_fractions)
        if len(fr) != 3 or min(fr) < 0 or sum(fr) <= 0:
            fail(f"{key('split_fractions')} must be [train, val, test] shares >= 0, not all 0, got {fr}")
        if any(w < 0 for w in self.balance_weights.values()):
            fail(f"{key('balance_weights')} must be >= 0, got {dict(self.balance_weights)}")
        if self.patient_regex:
            try:
                re.compile(self.patient_regex)
            except re.error as e:
                fail(f"{key('patient_regex')}='{self.patient_regex}' is not a regular expression ({e})")
        if len(self.sim_lesion_size):
            from usjepa.data.sim.phantom import check_lesion_size

            try:
                check_lesion_size(list(self.sim_lesion_size))
            except ValueError as e:
                fail(f"{key('sim_lesion_size')}: {e}")
