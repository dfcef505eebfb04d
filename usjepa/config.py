"""Typed run configuration: schema -> YAML (with `base:` inheritance) -> dotted CLI overrides -> validate -> save.

Every section is a dataclass; an unknown key anywhere is an error that names the closest valid key.
Area-specific sections live next to the code that reads them (data, teachers, launch, eval) and are
composed here.
"""

from __future__ import annotations

import dataclasses
import difflib
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from launch.config import LaunchConfig
from teachers.config import TeacherConfig
from usjepa.data.config import COLOUR_FRAMES, PANES, SOURCES, DataConfig
from usjepa.errors import UsjepaError


class ConfigError(UsjepaError, ValueError):
    """A configuration problem, phrased for the user: what, where, and what to do."""


# ----------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """The student encoder (for `mae`, the encoder that becomes the teacher)."""

    arch: str = "vit_tiny"  # vit_tiny | vit_small | vit_base | vit_large | vit_huge
    patch_size: int = 16
    img_size: list[int] = field(default_factory=lambda: [64, 64])  # [H, W]
    in_chans: int = 1  # channels the patch embedding takes; inputs are converted to this
    cls_token: bool = True
    drop_path: float = 0.0
    attn_backend: str = "auto"  # auto | xformers | sdpa | math (env USJEPA_ATTN overrides auto)
    norm_mean: list[float] = field(default_factory=lambda: [0.5])
    norm_std: list[float] = field(default_factory=lambda: [0.25])
    pos_embed: str = "sincos"  # sincos (I-JEPA, MAE) / rope (2-D RoPE, V-JEPA 2 / SALT); predictor and decoder follow
    init: str = "jepa"  # jepa (trunc-normal 0.02, per-depth rescale) / mae (xavier-uniform, CLS std 0.02; MAE)
    # explicit sizes override the preset when > 0
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0


@dataclass
class PredictorConfig:
    depth: int = 12
    embed_dim: int = 384
    num_heads: int = 16
    per_block: bool = True  # predict each target block in its own sequence (I-JEPA); False: the union at once
    zero_init_mask_tokens: bool = False  # V-JEPA / V-JEPA 2 start mask tokens at 0; I-JEPA trunc-normal(0.02)


@dataclass
class RegionMaskConfig:
    """USrc-JEPA: restrict context and targets to patches inside the ultrasound region (fan)."""

    enabled: bool = False
    min_fraction: float = 0.0  # a patch is valid when more than this share of its pixels is in the region
    tau: int = 4  # a block needs at least tau valid patches, else it is resampled
    max_tries: int = 20


@dataclass
class MaskConfig:
    preset: str = "usjepa"  # usjepa | ijepa | salt | random | custom
    # reference: the published collators (one block shape per batch, truncation to the batch minimum);
    # per_sample: shapes per block and image, lists padded (milder masking; see the README)
    sampler: str = "reference"
    # custom multi-block settings (used when preset == custom; presets fill these in)
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    context_aspect: list[float] = field(default_factory=lambda: [1.0, 1.0])
    target_scale: list[float] = field(default_factory=lambda: [0.075, 0.125])
    target_aspect: list[float] = field(default_factory=lambda: [0.75, 1.5])
    num_targets: int = 4
    min_keep: int = 10
    allow_overlap: bool = False
    random_ratio: float = 0.75  # preset `random`: share of patches masked
    region: RegionMaskConfig = field(default_factory=RegionMaskConfig)


@dataclass
class EMAConfig:
    momentum_start: float = 0.996
    momentum_end: float = 1.0


@dataclass
class MAEConfig:
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True


@dataclass
class ObjectiveConfig:
    name: str = "salt"  # salt | mae | ema_jepa
    loss: str = "l1"  # l1 | smooth_l1 | l2
    smooth_l1_beta: float = 1.0
    target_norm: str = "layernorm"  # layernorm (non-affine, per token) | none
    ema: EMAConfig = field(default_factory=EMAConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)


@dataclass
class OptimConfig:
    lr: float = 6.25e-4  # peak
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup: float = 0.1  # < 1: share of total steps; >= 1: steps
    warmup_epochs: float = 0.0  # > 0: warmup length in epochs (overrides warmup)
    blr: float = 0.0  # > 0: peak lr = blr * data.batch_size / 256 (MAE's scaling rule), overriding lr
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: float = 1.0  # 0 disables
    accum_steps: int = 1


@dataclass
class TrainConfig:
    steps: int = 200  # optimizer steps; if epochs > 0, steps = epochs * steps per epoch
    epochs: int = 0
    out_dir: str = "runs/default"
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    log_every: int = 10
    ckpt_every: int = 100  # step_N.pt every K steps (latest.pt is rewritten then too)
    keep_last: int = 2  # step_N.pt files to keep
    val_every: int = 0  # held-out validation loss every K steps; 0 disables; keeps best.pt
    val_fraction: float = 0.05
    val_batches: int = 4
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch default
    compile: bool = False  # torch.compile student, predictor and teacher forward (inductor)
    activation_checkpointing: bool = False  # recompute every block of the trained models in backward: less memory
    sharding: str = "none"  # none (DDP when distributed) | fsdp: FSDP2 per block of student + predictor (salt)
    shard_teacher: bool = False  # with sharding=fsdp: shard the frozen teacher per block too (else a copy per rank)
    resume: str = "auto"  # auto: resume out_dir's run | never: refuse a used folder | force: accept changed settings
    progress: bool = True
    probe_every: int = 0  # periodic linear probe on the labelled val split; 0 disables


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


# ----------------------------------------------------------------------------- loading


def _all_dotted_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.append(path)
            out.extend(_all_dotted_keys(node._get_node(k), path))
    return out


def _unknown_key_message(schema: DictConfig, bad_key: str, where: str) -> str:
    valid = _all_dotted_keys(schema)
    close = difflib.get_close_matches(bad_key, valid, n=1, cutoff=0.5)
    if not close:  # try the leaf name alone
        leaf = bad_key.split(".")[-1]
        close = [
            k
            for k in valid
            if k.split(".")[-1] in difflib.get_close_matches(leaf, [v.split(".")[-1] for v in valid], n=1)
        ]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{bad_key}' in {where}{hint}"


def _check_keys(schema: DictConfig, data: Any, where: str, prefix: str = "") -> None:
    """Walk a plain dict against the schema so the first unknown key gets a helpful message."""
    if not isinstance(data, dict):
        return
    for k, v in data.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        node = schema._get_node(k) if k in schema else None
        if node is None:
            raise ConfigError(_unknown_key_message(schema if not prefix else _root(schema), path, where))
        if isinstance(node, DictConfig) and isinstance(v, dict) and OmegaConf.get_type(node) is not dict:
            _check_keys(node, v, where, path)  # free-form dict fields (e.g. teacher.options) take any key


def _root(node: DictConfig) -> DictConfig:
    while node._get_parent() is not None:
        node = node._get_parent()
    return node


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config; a top-level `base: other.yaml` (relative to this file) is merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file '{path}' not found; pass a YAML file such as configs/pretrain/salt_vit_tiny_sim.yaml"
        )
    if path.resolve() in seen:
        raise ConfigError(f"config '{path}' includes itself through `base:`")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # yaml syntax errors carry line numbers
        raise ConfigError(f"cannot parse config '{path}': {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config '{path}' must be a mapping at the top level")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = _read_yaml((path.parent / base), seen + (path.resolve(),))
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(parent), OmegaConf.create(raw)))


def _structured(schema: type) -> DictConfig:
    """The schema as a struct-mode config whose free-form dict fields still accept new keys."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)

    def open_dicts(node: DictConfig) -> None:
        for k in node.keys():
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                if OmegaConf.get_type(child) is dict:
                    OmegaConf.set_struct(child, False)
                else:
                    open_dicts(child)

    open_dicts(base)
    return base


def _under_free_dict(base: DictConfig, key: str) -> bool:
    parts = key.split(".")
    for i in range(1, len(parts)):
        node = OmegaConf.select(base, ".".join(parts[:i]), default=None)
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:
            return True
    return False


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema: type = PretrainConfig
) -> DictConfig:
    """Schema defaults <- YAML file <- `key=value` overrides; unknown keys and bad types are ConfigErrors."""
    base = _structured(schema)
    cfg = base
    if path is not None:
        data = _read_yaml(Path(path))
        _check_keys(base, data, f"'{path}'")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(data))
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as e:
            raise ConfigError(f"bad value in '{path}' at '{e.full_key}': {str(e.msg).splitlines()[0]}") from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value, e.g. optim.lr=1e-3")
        key = ov.split("=", 1)[0].lstrip("+")
        known = OmegaConf.select(base, key, default="__missing__") != "__missing__" or _is_container_key(base, key)
        if not known and not _under_free_dict(base, key):
            raise ConfigError(_unknown_key_message(base, key, "command-line overrides"))
        if ov.split("=", 1)[1].strip() in ("{}", "[]"):  # an empty container replaces, it does not merge
            OmegaConf.update(cfg, key, {} if ov.split("=", 1)[1].strip() == "{}" else [], merge=False)
            continue
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov]))
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as e:
            raise ConfigError(f"bad override '{ov}': {str(e.msg).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def _is_container_key(base: DictConfig, key: str) -> bool:
    try:
        node = OmegaConf.select(base, key, default=None)
    except Exception:
        return False
    return isinstance(node, (DictConfig, ListConfig))


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}='{value}' is not one of {', '.join(choices)}{hint}")


def validate(cfg: DictConfig) -> None:
    """Range and consistency checks that the type system cannot express."""
    if "objective" not in cfg:
        return
    from teachers.frozen import PRECISIONS
    from usjepa.masks import MASK_PRESETS, SAMPLERS
    from usjepa.models.vit import VIT_PRESETS

    _choice(cfg.objective.name, ("salt", "mae", "ema_jepa"), "objective.name")
    _choice(cfg.objective.loss, ("l1", "smooth_l1", "l2"), "objective.loss")
    _choice(cfg.objective.target_norm, ("layernorm", "none"), "objective.target_norm")
    _choice(cfg.model.arch, tuple(VIT_PRESETS), "model.arch")
    _choice(cfg.model.attn_backend, ("auto", "xformers", "sdpa", "math"), "model.attn_backend")
    _choice(cfg.model.pos_embed, ("sincos", "rope"), "model.pos_embed")
    _choice(cfg.model.init, ("jepa", "mae"), "model.init")
    if cfg.model.pos_embed == "rope":
        _check_rope_heads(cfg, VIT_PRESETS)
    _choice(cfg.mask.preset, tuple(MASK_PRESETS) + ("custom",), "mask.preset")
    _choice(cfg.mask.sampler, SAMPLERS, "mask.sampler")
    _choice(cfg.train.precision, ("auto", "bf16", "fp32"), "train.precision")
    _choice(cfg.train.sharding, ("none", "fsdp"), "train.sharding")
    if cfg.train.sharding == "fsdp" and cfg.objective.name != "salt":
        raise ConfigError(f"train.sharding=fsdp supports objective.name=salt only, not '{cfg.objective.name}': "
                          "set train.sharding=none")
    if cfg.train.shard_teacher and (cfg.train.sharding != "fsdp" or cfg.teacher.cache):
        raise ConfigError("train.shard_teacher=true needs train.sharding=fsdp and a live teacher (teacher.cache "
                          "unset): set train.shard_teacher=false")
    if cfg.train.sharding == "fsdp" and cfg.train.probe_every > 0:
        raise ConfigError("train.sharding=fsdp does not run the periodic probe (it uses rank 0's student alone): "
                          "set train.probe_every=0 and probe the saved encoder")
    from usjepa.io.runfolder import resume_mode

    cfg.train.resume = resume_mode(cfg.train.resume)  # true / false of older configs mean auto / never
    _choice(cfg.teacher.precision, PRECISIONS, "teacher.precision")
    _choice(cfg.data.panes, PANES, "data.panes")
    _choice(cfg.data.colour_frames, COLOUR_FRAMES, "data.colour_frames")
    _check_data_source(cfg)
    if len(cfg.data.sim_lesion_size):
        from usjepa.data.sim.phantom import check_lesion_size

        try:
            check_lesion_size(list(cfg.data.sim_lesion_size))
        except ValueError as e:
            raise ConfigError(f"data.sim_lesion_size: {e}") from None
    _check_data_recipe(cfg)
    if len(cfg.model.img_size) != 2:
        raise ConfigError(f"model.img_size must be [H, W], got {list(cfg.model.img_size)}")
    for i, s in enumerate(cfg.model.img_size):
        if s % cfg.model.patch_size:
            raise ConfigError(
                f"model.img_size[{i}]={s} is not a multiple of model.patch_size={cfg.model.patch_size}; "
                f"use e.g. {s - s % cfg.model.patch_size or cfg.model.patch_size}"
            )
    if cfg.model.in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans must be 1 or 3, got {cfg.model.in_chans}")
    if len(cfg.model.norm_mean) not in (1, cfg.model.in_chans) or len(cfg.model.norm_std) != len(cfg.model.norm_mean):
        raise ConfigError("model.norm_mean / model.norm_std need 1 or in_chans values each, of equal length")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(cfg.optim.betas)}")
    if cfg.optim.accum_steps < 1:
        raise ConfigError("optim.accum_steps must be >= 1")
    if cfg.train.steps < 1 and cfg.train.epochs < 1:
        raise ConfigError("set train.steps or train.epochs to a positive number")
    if not 0 <= cfg.train.val_fraction < 0.5:
        raise ConfigError(f"train.val_fraction must be in [0, 0.5), got {cfg.train.val_fraction}")
    if cfg.objective.name in ("salt",) and not cfg.teacher.family:
        raise ConfigError(
            "objective.name=salt needs a frozen teacher: set teacher.family (e.g. usjepa, mae, timm, dinov2) "
            "and teacher.checkpoint, or teacher.family=random for a smoke test"
        )


def _check_data_recipe(cfg: DictConfig) -> None:
    """Preprocessing, augmentation and crop choices, and the region they must leave to USrc masks."""
    d = cfg.data
    _choice(d.preprocess, ("none", "fan", "usjepa", "usrc"), "data.preprocess")
    _choice(d.augment_policy, ("default", "usjepa", "trivial", "none"), "data.augment_policy")
    for key in ("crop_scale", "crop_ratio"):
        v = list(d[key])
        if len(v) != 2 or not 0 < v[0] <= v[1] or (key == "crop_scale" and v[1] > 1):
            raise ConfigError(f"data.{key} must be [lo, hi] with 0 < lo <= hi{' <= 1' if key == 'crop_scale' else ''}"
                              f", got {v}")
    if cfg.mask.region.enabled and d.preprocess == "usjepa":
        raise ConfigError("mask.region.enabled=true needs the fan, which data.preprocess=usjepa drops (plain US-JEPA "
                          "keeps the whole frame): use data.preprocess=usrc (USrc-JEPA: fan crop) or none")
    if cfg.mask.region.enabled and d.region == "none":
        raise ConfigError("mask.region.enabled=true needs fan masks: set data.region to auto, given or estimate")


def _check_data_source(cfg: DictConfig) -> None:
    """data.source is known; data.source=prepared points at finished shards of this config's stored-data settings."""
    _choice(cfg.data.source, SOURCES, "data.source")
    if cfg.data.max_side < 0:
        raise ConfigError(f"data.max_side must be >= 0 (0: twice the larger model.img_size side), got "
                          f"{cfg.data.max_side}")
    if cfg.data.source == "prepared":
        from usjepa.data.errors import DataError
        from usjepa.data.shards import check_prepared

        try:
            check_prepared(cfg.data, cfg.model.img_size)
        except DataError as e:
            raise ConfigError(str(e)) from None


def _check_rope_heads(cfg: DictConfig, presets: dict) -> None:
    """2-D RoPE splits every head in two axes of rotated pairs: head dims must be multiples of 4."""
    arch = presets.get(cfg.model.arch, {})
    dim, heads = cfg.model.embed_dim or arch.get("embed_dim", 0), cfg.model.num_heads or arch.get("num_heads", 1)
    m = cfg.objective.mae
    parts = [("model", dim, heads, "model.embed_dim / model.num_heads")]
    parts.append(("predictor", cfg.predictor.embed_dim, cfg.predictor.num_heads, "predictor.embed_dim / num_heads"))
    if cfg.objective.name == "mae":
        parts.append(("MAE decoder", m.decoder_dim, m.decoder_heads, "objective.mae.decoder_dim / decoder_heads"))
    for name, d, h, keys in parts:
        if h and d % h == 0 and (d // h) % 4:
            raise ConfigError(f"model.pos_embed=rope needs head dims divisible by 4: the {name} has {d} / {h} = "
                              f"{d // h}; change {keys} or use model.pos_embed=sincos")


# ----------------------------------------------------------------------------- provenance


def git_info(repo_dir: str | Path | None = None) -> dict:
    """Commit and dirty diff of the source tree that runs (empty when not a git checkout)."""
    repo_dir = Path(repo_dir or Path(__file__).resolve().parent.parent)

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD").strip()
    return {"commit": commit, "dirty_diff": run("diff", "HEAD") if commit else ""}


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("usjepa", "torch", "torchvision", "timm", "xformers", "submitit", "omegaconf", "numpy", "pandas"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def save_run_config(cfg: DictConfig, run_dir: str | Path) -> None:
    """Write the resolved config, git commit + diff and package versions beside the run (atomically).

    A training config is refused when the folder holds a run with other settings (see usjepa.io.runfolder).
    """
    from usjepa.io.runfolder import RunFolder

    RunFolder(run_dir).write_config(cfg)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def from_dict(d: dict, schema: type = PretrainConfig) -> DictConfig:
    """Rebuild a typed config from a checkpoint's plain dict (keys unknown to this version are an error)."""
    base = _structured(schema)
    _check_keys(base, d, "the checkpoint's config")
    return OmegaConf.merge(base, OmegaConf.create(d))


def reference_markdown(schema: type = PretrainConfig) -> str:
    """The configuration reference table (README), generated from the schemas so it cannot drift."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    comments = _field_comments(schema)
    for key, typ, default in schema_fields(schema):
        rows.append(f"| `{key}` | {typ} | `{default!r}` | {comments.get(key, '')} |")
    return "\n".join(rows) + "\n"


def _field_comments(root: type) -> dict[str, str]:
    """Trailing `# comments` of dataclass fields, keyed by dotted config key."""
    import inspect
    import re

    out: dict[str, str] = {}

    def walk(schema: type, prefix: str) -> None:
        try:
            src = inspect.getsource(schema)
        except (OSError, TypeError):
            src = ""
        notes = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", src, flags=re.M))
        for f in dataclasses.fields(schema):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
            elif f.name in notes:
                out[f"{prefix}{f.name}"] = notes[f.name].replace("|", "/")

    walk(root, "")
    return out


def schema_fields(schema: type = PretrainConfig, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, type, default) rows for the configuration reference in the README."""
    rows = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if dataclasses.is_dataclass(default):
            rows.extend(schema_fields(type(default), key + "."))
        else:
            rows.append((key, getattr(f.type, "__name__", str(f.type)), default))
    return rows
