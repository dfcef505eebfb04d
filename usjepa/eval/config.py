"""The probe run schema: which encoders, which labelled datasets, which protocol (`usjepa probe CONFIG`).

Encoders and datasets are mappings keyed by a short name, so a single entry can be changed from the
command line (`encoders.salt.path=runs/salt/latest.pt`, `datasets.lesion.data.num_images=256`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from launch.config import LaunchConfig
from teachers.config import TeacherConfig
from usjepa.data.config import COLOUR_FRAMES, PANES, DataConfig

ENCODER_KINDS = ("student", "mae", "teacher", "timm", "random")
POOLINGS = ("mean", "cls", "cls+mean")
PRESETS = ("grid", "usjepa")
LABEL_KINDS = ("classification", "regression")
SOLVERS = ("lbfgs", "adamw")


@dataclass
class EncoderSpec:
    """One encoder to probe. `kind` picks how it is built; the mapping key is its name in the table."""

    kind: str = "student"  # student | mae | teacher | timm | random
    path: str = ""  # student/mae: latest.pt, best.pt, step_N.pt or encoder.safetensors; timm: optional weights file
    which: str = "model"  # network inside a training checkpoint (model | target_encoder)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # kind=teacher: a teacher-zoo spec
    timm_model: str = ""  # kind=timm: model name, e.g. vit_small_patch16_224
    timm_options: dict = field(default_factory=dict)  # kind=timm: extra create_model kwargs (img_size, in_chans, ...)
    like: str = ""  # kind=random: name of another encoder in this config (or a checkpoint path) to copy the shape of
    seed: int = 0  # kind=random: initialisation seed


@dataclass
class SplitNames:
    """Split names passed to `build_dataset` ("train", "val", "test", "all" = every item, or a union "train+val").

    An empty val (or test) is carved out of train, whole patients at a time (see `val_size` / `test_size`).
    """

    train: str = "train"
    val: str = "val"
    test: str = "test"


@dataclass
class ProbeDatasetSpec:
    """A labelled dataset and the task read from it."""

    data: DataConfig = field(default_factory=lambda: DataConfig(augment=False))
    label_kind: str = "classification"  # classification | regression (reads the item's `target`)
    splits: SplitNames = field(default_factory=SplitNames)
    val_size: float = 0.0  # when splits.val is "": items (>= 1) or share (< 1) of train carved out as val, whole groups
    test_size: float = 0.0  # when splits.test is "": the same for test
    expected_sizes: list[int] = field(default_factory=list)  # [train, val, test] as published; mismatch -> warning
    max_items: int = 0  # cap per split (0 = all); for quick runs
    img_size: list[int] = field(default_factory=list)  # [H, W]; empty = protocol.img_size


@dataclass
class ProtocolConfig:
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
    whiten: bool = True  # lbfgs: also fit heads on Ledoit-Wolf whitened features (each set), chosen on val
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


@dataclass
class ProbeRunConfig:
    encoders: dict[str, EncoderSpec] = field(default_factory=dict)
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


# The US-JEPA paper's linear-probe recipe (App. D.2): one head, AdamW 1e-3 / 1e-4, cosine, <=150 epochs,
# patience 15 on val loss, batch 32, 5 seeds, mean-pooled final-layer patch tokens.
USJEPA_PRESET = dict(solver="adamw", lrs=[1e-3], wds=[1e-4], decay="decoupled", pooling=["mean"], last_k=[1],
                     epochs=150, batch_size=32, patience=15, standardize=False, seeds=[0, 1, 2, 3, 4])


def _close(value: str, choices, key: str) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{key}='{value}' is not one of {', '.join(choices)}{hint}"


def validate_probe_config(cfg: DictConfig) -> None:
    """Checks a schema cannot express; raises ConfigError naming the key."""
    from usjepa.config import ConfigError

    p = cfg.protocol
    if p.solver not in SOLVERS:
        raise ConfigError(_close(p.solver, SOLVERS, "protocol.solver"))
    if not 0 < p.tol < 1:
        raise ConfigError(f"protocol.tol must be in (0, 1) (a relative distance to the optimum), got {p.tol}")
    if p.max_iter < 1:
        raise ConfigError(f"protocol.max_iter must be >= 1, got {p.max_iter}")
    if any(w < 0 for w in p.wds) or any(lr <= 0 for lr in p.lrs) or not p.lrs:
        raise ConfigError(f"protocol.wds must be >= 0 and protocol.lrs > 0 (and not empty), got wds={list(p.wds)}, "
                          f"lrs={list(p.lrs)}")
    if p.decay not in ("l2", "decoupled"):
        raise ConfigError(_close(p.decay, ("l2", "decoupled"), "protocol.decay"))
    if p.preset not in PRESETS:
        raise ConfigError(_close(p.preset, PRESETS, "protocol.preset"))
    for pool in p.pooling:
        if pool not in POOLINGS:
            raise ConfigError(_close(pool, POOLINGS, "protocol.pooling"))
    if not p.seeds:
        raise ConfigError("protocol.seeds is empty; give at least one seed, e.g. [0]")
    if any(k < 1 for k in p.last_k) or not p.last_k:
        raise ConfigError(f"protocol.last_k must be positive integers, got {list(p.last_k)}")
    if any(not 0 < f <= 1 for f in p.few_shot):
        raise ConfigError(f"protocol.few_shot shares must be in (0, 1], got {list(p.few_shot)}")
    from usjepa.eval.corruptions import CORRUPTIONS

    for c in p.corruptions:
        if c not in CORRUPTIONS:
            raise ConfigError(_close(c, tuple(CORRUPTIONS), "protocol.corruptions"))
    if any(s not in (1, 2, 3) for s in p.severities):
        raise ConfigError(f"protocol.severities must be among 1, 2, 3, got {list(p.severities)}")
    if len(p.img_size) != 2:
        raise ConfigError(f"protocol.img_size must be [H, W], got {list(p.img_size)}")
    if not cfg.encoders:
        raise ConfigError("no encoders to probe: add an `encoders:` mapping, e.g. encoders: {salt: {kind: student, "
                          "path: runs/salt/latest.pt}}")
    if not cfg.datasets:
        raise ConfigError("no datasets to probe on: add a `datasets:` mapping (see configs/probe/sim.yaml), or keep "
                          "at least one when dropping some (datasets.NAME=null, ~datasets.NAME, select_datasets=[...])")
    for name, e in cfg.encoders.items():
        if e.kind not in ENCODER_KINDS:
            raise ConfigError(_close(e.kind, ENCODER_KINDS, f"encoders.{name}.kind"))
        if e.kind in ("student", "mae") and not e.path:
            raise ConfigError(f"encoders.{name}.path is empty; kind={e.kind} needs a checkpoint "
                              "(latest.pt, best.pt or encoder.safetensors)")
        if e.kind == "teacher" and not e.teacher.family:
            raise ConfigError(f"encoders.{name}.teacher.family is empty; name a teacher-zoo family (e.g. timm, mae)")
        if e.kind == "timm" and not e.timm_model:
            raise ConfigError(f"encoders.{name}.timm_model is empty; give a timm model name, "
                              "e.g. vit_small_patch16_224")
        if e.kind == "random" and not e.like:
            raise ConfigError(f"encoders.{name}.like is empty; kind=random copies the architecture of another "
                              "encoder: give its name in this config or a checkpoint path")
        if e.kind == "random" and e.like == name:
            raise ConfigError(f"encoders.{name}.like names itself")
    for name, d in cfg.datasets.items():
        if d.label_kind not in LABEL_KINDS:
            raise ConfigError(_close(d.label_kind, LABEL_KINDS, f"datasets.{name}.label_kind"))
        if not d.splits.train:
            raise ConfigError(f"datasets.{name}.splits.train is empty; name the training split")
        for key, choices in (("panes", PANES), ("colour_frames", COLOUR_FRAMES)):
            if d.data[key] not in choices:
                raise ConfigError(_close(d.data[key], choices, f"datasets.{name}.data.{key}"))
        for part, size in (("val", d.val_size), ("test", d.test_size)):
            if not getattr(d.splits, part) and size <= 0:
                raise ConfigError(f"datasets.{name}.splits.{part} is empty and datasets.{name}.{part}_size is 0: "
                                  f"name a {part} split or set {part}_size to carve one out of train")
            if size < 0 or (size >= 1 and size != int(size)):
                raise ConfigError(f"datasets.{name}.{part}_size={size:g} must be a share in (0, 1) or a whole number "
                                  "of items")
        if d.expected_sizes and len(d.expected_sizes) != 3:
            raise ConfigError(f"datasets.{name}.expected_sizes must be [train, val, test], "
                              f"got {list(d.expected_sizes)}")


def _known(cfg: DictConfig, key: str) -> bool:
    """A key the schema has, or a new entry of a name-keyed mapping (encoders.<new>..., datasets.<new>...)."""
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
        return True
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]), default=None)
        if node is not None:  # the nearest existing ancestor decides: only free-form mappings take new keys
            return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict
    return False


_DROPPABLE = ("datasets", "encoders")  # name-keyed mappings whose entries an override may remove


def _drop_entry(cfg: DictConfig, ov: str) -> bool:
    """Handle `~datasets.NAME` / `datasets.NAME=null` (also for encoders): remove the entry; False if not a drop."""
    key, value = (ov[1:], None) if ov.startswith("~") else (ov.split("=", 1) + [""])[:2]
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _DROPPABLE or not (ov.startswith("~") or value.strip() in ("null", "~")):
        return False
    from usjepa.config import ConfigError

    mapping = cfg[parts[0]]
    if parts[1] not in mapping:
        close = difflib.get_close_matches(parts[1], list(mapping), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"cannot drop {key}: there is no {parts[0][:-1]} '{parts[1]}' (have: "
                          f"{', '.join(mapping)}){hint}")
    del mapping[parts[1]]
    return True


def load_probe_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a probe config; overrides may address named entries (`encoders.salt.path=...`), drop them
    (`datasets.aul=null` or `~datasets.aul`), and `select_datasets=[a,b]` keeps only the named datasets."""
    from usjepa.config import ConfigError, _all_dotted_keys, load_config

    cfg = load_config(path, (), schema=ProbeRunConfig)
    for ov in overrides:
        if _drop_entry(cfg, ov):
            continue
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value (e.g. protocol.seeds=[0]) or ~datasets.NAME "
                              "to drop a dataset")
        key = ov.split("=", 1)[0].lstrip("+")
        if not _known(cfg, key):
            close = difflib.get_close_matches(key, _all_dotted_keys(cfg), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}' in command-line overrides{hint}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov]))
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as e:
            raise ConfigError(f"bad override '{ov}': {e.msg}") from None
    if cfg.select_datasets:
        unknown = [n for n in cfg.select_datasets if n not in cfg.datasets]
        if unknown:
            raise ConfigError(f"select_datasets names unknown dataset(s) {unknown}; this config has: "
                              f"{', '.join(cfg.datasets)}")
        for name in [n for n in cfg.datasets if n not in cfg.select_datasets]:
            del cfg.datasets[name]
    if cfg.protocol.preset == "usjepa":
        apply_usjepa_preset(cfg)
    validate_probe_config(cfg)
    return cfg


def apply_usjepa_preset(cfg: DictConfig) -> None:
    """Pin the paper's recipe on every protocol key still at its schema default (values the user set win)."""
    defaults = ProtocolConfig()
    for k, v in USJEPA_PRESET.items():
        current = OmegaConf.to_container(cfg.protocol[k]) if OmegaConf.is_list(cfg.protocol[k]) else cfg.protocol[k]
        if current == getattr(defaults, k):
            cfg.protocol[k] = v
