"""The probe run's sections: which encoders, which labelled datasets, which protocol (`usjepa probe CONFIG`).

Encoders and datasets are mappings keyed by a short name, so a single entry can be changed from the
command line (`encoders.salt.path=runs/salt/latest.pt`, `datasets.lesion.data.num_images=256`).
Every section is a `Spec` that checks itself when built (usjepa.spec); `ENCODER_KINDS` and `CORRUPTIONS` are the
registries the probe code builds from. Loading (YAML, overrides, dropping entries) is usjepa.eval.config.
Light: no torch, no omegaconf at import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from launch.spec import LaunchConfig
from teachers.spec import TeacherConfig
from usjepa.data.spec import DataConfig
from usjepa.registry import Registry
from usjepa.spec import Spec, at_least, choice, each_choice, fail, key, positive

ENCODER_KINDS = Registry("probe encoder kind")  # facts: needs = the field that must be set
ENCODER_KINDS.register("student", "usjepa.eval.encoders:checkpoint_encoder", "a usjepa training checkpoint or export",
                       needs="path")
ENCODER_KINDS.register("mae", "usjepa.eval.encoders:checkpoint_encoder", "a usjepa MAE checkpoint or export",
                       needs="path")
ENCODER_KINDS.register("teacher", "usjepa.eval.encoders:teacher_encoder", "any teacher-zoo model", needs="teacher")
ENCODER_KINDS.register("timm", "usjepa.eval.encoders:timm_encoder", "a timm model", needs="timm_model")
ENCODER_KINDS.register("random", "usjepa.eval.encoders:random_encoder", "a fresh initialisation of another encoder's "
                       "architecture", needs="like")
CORRUPTIONS = Registry("corruption")
CORRUPTIONS.register("blur", "usjepa.eval.corruptions:gaussian_blur")
CORRUPTIONS.register("contrast", "usjepa.eval.corruptions:contrast_depletion")
CORRUPTIONS.register("speckle", "usjepa.eval.corruptions:correlated_speckle")
POOLINGS = ("mean", "cls", "cls+mean")
PRESETS = ("grid", "usjepa")
LABEL_KINDS = ("classification", "regression")
SOLVERS = ("lbfgs", "adamw")
DECAYS = ("decoupled", "l2")
SEVERITIES = (1, 2, 3)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "npu", "mtia", "xla")  # `device`: torch device types (":N" ok)
_NEEDS_HINT = {
    "path": "needs a checkpoint (latest.pt, best.pt or encoder.safetensors)",
    "teacher": "name a teacher-zoo family (e.g. timm, mae)",
    "timm_model": "give a timm model name, e.g. vit_small_patch16_224",
    "like": "kind=random copies the architecture of another encoder: give its name in this config or a checkpoint path",
}


@dataclass
class ProbeEncoderSpec(Spec):
    """One encoder to probe. `kind` picks how it is built; the mapping key is its name in the table."""

    kind: str = "student"  # student | mae | teacher | timm | random
    path: str = ""  # student/mae: latest.pt, best.pt, step_N.pt or encoder.safetensors; timm: optional weights file
    which: str = "model"  # network inside a training checkpoint (model | target_encoder)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # kind=teacher: a teacher-zoo spec
    timm_model: str = ""  # kind=timm: model name, e.g. vit_small_patch16_224
    timm_options: dict = field(default_factory=dict)  # kind=timm: extra create_model kwargs (img_size, in_chans, ...)
    like: str = ""  # kind=random: name of another encoder in this config (or a checkpoint path) to copy the shape of
    seed: int = 0  # kind=random: initialisation seed

    def check(self) -> None:
        ENCODER_KINDS.check(self.kind, "kind")
        needs = ENCODER_KINDS.fact(self.kind, "needs")
        value = self.teacher.family if needs == "teacher" else getattr(self, needs)
        if not value:
            fail(f"{key(needs + '.family' if needs == 'teacher' else needs)} is empty; kind={self.kind}: "
                 f"{_NEEDS_HINT[needs]}")


@dataclass
class SplitNames(Spec):
    """Split names passed to `build_dataset` ("train", "val", "test", "all" = every item, or a union "train+val").

    An empty val (or test) is carved out of train, whole patients at a time (see `val_size` / `test_size`).
    """

    train: str = "train"
    val: str = "val"
    test: str = "test"

    def check(self) -> None:
        if not self.train:
            fail(f"{key('train')} is empty; name the training split")


@dataclass
class ProbeDatasetSpec(Spec):
    """A labelled dataset and the task read from it."""

    data: DataConfig = field(default_factory=lambda: DataConfig(augment=False))
    label_kind: str = "classification"  # classification | regression (reads the item's `target`)
    splits: SplitNames = field(default_factory=SplitNames)
    val_size: float = 0.0  # when splits.val is "": items (>= 1) or share (< 1) of train carved out as val, whole groups
    test_size: float = 0.0  # when splits.test is "": the same for test
    expected_sizes: list[int] = field(default_factory=list)  # [train, val, test] as published; mismatch -> warning
    max_items: int = 0  # cap per split (0 = all); for quick runs
    img_size: list[int] = field(default_factory=list)  # [H, W]; empty = protocol.img_size

    def check(self) -> None:
        choice(self.label_kind, LABEL_KINDS, "label_kind")
        for part, size in (("val", self.val_size), ("test", self.test_size)):
            if not getattr(self.splits, part) and size <= 0:
                fail(f"{key('splits.' + part)} is empty and {key(part + '_size')} is 0: name a {part} split or set "
                     f"{part}_size to carve one out of train")
            if size < 0 or (size >= 1 and size != int(size)):
                fail(f"{key(part + '_size')}={size:g} must be a share in (0, 1) or a whole number of items")
        if self.expected_sizes and len(self.expected_sizes) != 3:
            fail(f"{key('expected_sizes')} must be [train, val, test], got {list(self.expected_sizes)}")
        at_least(self.max_items, 0, "max_items", " (0: all)")
        _check_img_size(self.img_size, "img_size", allow_empty=True)


@dataclass
class ProtocolConfig(Spec):
    """How the probes are trained and what is reported. `preset: usjepa` pins the US-JEPA paper's recipe."""

    preset: str = "grid"  # grid (wd x pooling x last-k, select on val) | usjepa (one head, the paper's recipe)
    img_size: list[int] = field(default_factory=lambda: [224, 224])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # linear probe
    solver: str = "lbfgs"  # lbfgs (L2-regularised heads solved to their optimum) | adamw (the US-JEPA recipe)
    wds: list[float] = field(default_factory=list)  # [] = lbfgs: wd = 1 / (C N) for C = 1e-4..1e4; adamw: [1e-4]
    tol: float = 1e-2  # lbfgs: certified relative distance to the optimum for a head to count as converged
    max_iter: int = 500  # lbfgs: iterations per head; heads that need more are flagged and not selected
    lrs: list[float] = field(default_factory=lambda: [1e-3])  # adamw
    decay: str = "decoupled"  # adamw: decoupled (AdamW weight decay) | l2 (penalty in the loss)
    pooling: list[str] = field(default_factory=lambda: ["mean", "cls"])  # mean | cls | cls+mean (cls needs a CLS token)
    last_k: list[int] = field(default_factory=lambda: [1])  # concatenated last k blocks (get_intermediate_layers)
    epochs: int = 150  # adamw
    batch_size: int = 32  # adamw; 0 = full batch
    patience: int = 15  # adamw: early stopping on val loss (epochs), keeping the best weights; 0 = train to the end
    standardize: bool = True  # z-score pooled features with train statistics (linear, kNN)
    whiten: bool = False  # lbfgs: also fit heads on Ledoit-Wolf whitened features (each set), chosen on val
    class_balanced: bool = False  # inverse-frequency class weights in the loss
    select_metric: str = "macro_f1"  # val metric that picks the head (regression: r2)
    # extra settings
    few_shot: list[float] = field(default_factory=list)  # stratified train shares, e.g. [0.01, 0.05, 0.1, 0.5, 1.0]
    robustness: bool = False  # train clean, test on corrupted test images
    corruptions: list[str] = field(default_factory=lambda: ["blur", "contrast", "speckle"])
    severities: list[int] = field(default_factory=lambda: [1, 2, 3])
    attentive: bool = False
    attentive_lrs: list[float] = field(default_factory=lambda: [1e-2, 1e-3])
    attentive_wds: list[float] = field(default_factory=lambda: [0.01, 0.1])
    attentive_epochs: int = 20
    attentive_standardize: bool = True  # z-score each token channel with train statistics before the pooler
    attentive_depth: int = 0  # self-attention blocks before the cross-attention pooler (V-JEPA 2 uses 3)
    knn: bool = False
    knn_k: list[int] = field(default_factory=lambda: [10, 20])
    bootstrap: int = 1000  # resamples of the test split for the 95% CI (0 disables)

    def check(self) -> None:
        choice(self.preset, PRESETS, "preset")
        choice(self.solver, SOLVERS, "solver")
        choice(self.decay, DECAYS, "decay")
        each_choice(self.pooling, POOLINGS, "pooling")
        each_choice(self.corruptions, CORRUPTIONS, "corruptions")
        _check_img_size(self.img_size, "img_size")
        if not 0 < self.tol < 1:
            fail(f"{key('tol')} must be in (0, 1) (a relative distance to the optimum), got {self.tol}")
        if not self.seeds:
            fail(f"{key('seeds')} is empty; give at least one seed, e.g. [0]")
        if any(w < 0 for w in self.wds) or any(lr <= 0 for lr in self.lrs) or not self.lrs:
            fail(f"{key('wds')} must be >= 0 and {key('lrs')} > 0 (and not empty), got wds={list(self.wds)}, "
                 f"lrs={list(self.lrs)}")
        if not self.last_k or any(k < 1 for k in self.last_k):
            fail(f"{key('last_k')} must be positive integers, got {list(self.last_k)}")
        if any(not 0 < f <= 1 for f in self.few_shot):
            fail(f"{key('few_shot')} shares must be in (0, 1], got {list(self.few_shot)}")
        if any(v not in SEVERITIES for v in self.severities):
            fail(f"{key('severities')} must be among 1, 2, 3, got {list(self.severities)}")
        if any(lr <= 0 for lr in self.attentive_lrs) or any(w < 0 for w in self.attentive_wds):
            fail(f"{key('attentive_lrs')} must be > 0 and {key('attentive_wds')} >= 0, got "
                 f"{list(self.attentive_lrs)}, {list(self.attentive_wds)}")
        if any(k < 1 for k in self.knn_k):
            fail(f"{key('knn_k')} must be positive integers, got {list(self.knn_k)}")
        for name, lo in (("max_iter", 1), ("epochs", 1), ("batch_size", 0), ("patience", 0), ("attentive_epochs", 1),
                         ("attentive_depth", 0), ("bootstrap", 0)):
            at_least(getattr(self, name), lo, name)


@dataclass
class ProbeRunConfig(Spec):
    encoders: dict[str, ProbeEncoderSpec] = field(default_factory=dict)
    datasets: dict[str, ProbeDatasetSpec] = field(default_factory=dict)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    out_dir: str = "runs/probe"
    cache_dir: str = ""  # feature cache; "" = <out_dir>/feature_cache
    data_root: str = ""  # relative dataset roots are joined to this
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 64  # feature extraction batch
    num_workers: int = 0
    resume: bool = True  # skip (encoder, task, setting) rows already in <out_dir>/rows.jsonl with the same settings
    plot: bool = True
    select_datasets: list[str] = field(default_factory=list)  # run only these datasets (names of `datasets`); [] = all
    strict: bool = False  # a dataset whose folder is missing (or whose splits are degenerate) stops the run
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def check(self) -> None:
        if not self.encoders:
            fail("no encoders to probe: add an `encoders:` mapping, e.g. encoders: {salt: {kind: student, "
                 "path: runs/salt/latest.pt}}")
        if not self.datasets:
            fail("no datasets to probe on: add a `datasets:` mapping (see configs/probe/sim.yaml), or keep at least "
                 "one when dropping some (datasets.NAME=null, ~datasets.NAME, select_datasets=[...])")
        for name, e in self.encoders.items():
            if e.kind == "random" and e.like == name:
                fail(f"encoders.{name}.like names itself")
        if not re.fullmatch(rf"auto|({'|'.join(DEVICE_TYPES)})(:\d+)?", self.device):
            fail(f"{key('device')}='{self.device}' must be auto, cpu, cuda or cuda:N (or another torch device type: "
                 f"{', '.join(DEVICE_TYPES[2:])})")
        positive(self.batch_size, "batch_size")
        at_least(self.num_workers, 0, "num_workers")


def _check_img_size(size: list[int], name: str, allow_empty: bool = False) -> None:
    if allow_empty and not size:
        return
    if len(size) != 2 or min(size) < 1:
        fail(f"{key(name)} must be [H, W] of positive sizes, got {list(size)}")


# The US-JEPA paper's linear-probe recipe (App. D.2): one head, AdamW 1e-3 / 1e-4, cosine, <=150 epochs,
# patience 15 on val loss, batch 32, 5 seeds, mean-pooled final-layer patch tokens.
USJEPA_PRESET = dict(solver="adamw", lrs=[1e-3], wds=[1e-4], decay="decoupled", pooling=["mean"], last_k=[1],
                     epochs=150, batch_size=32, patience=15, standardize=False, seeds=[0, 1, 2, 3, 4])
