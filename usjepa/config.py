"""Typed run configuration: schema -> YAML (with `base:` inheritance) -> dotted CLI overrides -> validate -> save.

Every section is a read-only `Spec` dataclass (usjepa.spec) owned by the code that reads it
(usjepa.models.spec, usjepa.masks.spec, usjepa.objectives.spec, usjepa.data.spec, teachers.spec,
launch.spec; optim and train here) that checks its own choices and ranges in `check`, reading the component
registries for the names. The YAML / CLI layer merges with OmegaConf, then `to_spec` builds those objects, so
every bad value is refused at load time with its dotted key. An unknown key anywhere is an error that names
the closest valid key.

This module is light: it imports omegaconf and the spec modules, never torch, a teacher family, data or models.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from launch.spec import LaunchConfig
from teachers.spec import TeacherConfig
from usjepa.data.spec import DataConfig
from usjepa.errors import ConfigError
from usjepa.io.provenance import git_info, package_versions
from usjepa.masks.spec import MaskConfig, RegionMaskConfig
from usjepa.models.spec import ModelConfig, PredictorConfig
from usjepa.objectives.spec import OBJECTIVES, EMAConfig, MAEConfig, ObjectiveConfig
from usjepa.spec import Spec, at_least, choice, fail, plain, positive, to_spec, within
from usjepa.spec import key as spec_key

PRECISIONS = ("auto", "bf16", "fp32")  # train.precision
RESUME_MODES = ("auto", "never", "force")  # train.resume (usjepa.io.runfolder reads older true / false)
SHARDINGS = ("none", "fsdp")  # train.sharding

__all__ = ["ConfigError", "DataConfig", "EMAConfig", "LaunchConfig", "MAEConfig", "MaskConfig", "ModelConfig",
           "ObjectiveConfig", "OptimConfig", "PredictorConfig", "PretrainConfig", "RegionMaskConfig", "TeacherConfig",
           "TrainConfig", "current_names", "from_dict", "git_info", "load_config", "load_spec", "package_versions",
           "pretrain_spec", "save_run_config", "spec_of", "to_dict", "to_spec", "validate"]


# ----------------------------------------------------------------------------- sections owned by training


@dataclass
class OptimConfig(Spec):
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

    def check(self) -> None:
        at_least(self.blr, 0, "blr")
        if not self.blr > 0:
            positive(self.lr, "lr", " (or set optim.blr > 0)")
        for name in ("start_lr", "final_lr", "warmup", "warmup_epochs", "weight_decay", "final_weight_decay",
                     "clip_grad"):
            at_least(getattr(self, name), 0, name)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail(f"{spec_key('betas')} must be two numbers in [0, 1), got {list(self.betas)}")
        positive(self.eps, "eps")
        at_least(self.accum_steps, 1, "accum_steps")


@dataclass
class TrainConfig(Spec):
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

    def check(self) -> None:
        if self.steps < 1 and self.epochs < 1:
            fail(f"set {spec_key('steps')} or {spec_key('epochs')} to a positive number")
        choice(self.precision, PRECISIONS, "precision")
        choice(self.resume, RESUME_MODES, "resume")
        choice(self.sharding, SHARDINGS, "sharding")
        for name in ("steps", "epochs", "log_every", "ckpt_every", "keep_last", "val_every", "threads",
                     "probe_every"):
            at_least(getattr(self, name), 0, name, " (0 disables)" if name.endswith("_every") else "")
        within(self.val_fraction, 0.0, 0.5, "val_fraction", "[)")
        at_least(self.val_batches, 1, "val_batches")
        if not self.out_dir:
            fail(f"{spec_key('out_dir')} is empty; name the run folder, e.g. runs/my_run")


@dataclass
class PretrainConfig(Spec):
    """A training run: every section, and the checks that span sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def check(self) -> None:
        if self.model.pos_embed == "rope":
            self._check_rope_heads()
        if self.mask.region.enabled and self.data.preprocess == "usjepa":
            fail("mask.region.enabled=true needs the fan, which data.preprocess=usjepa drops (plain US-JEPA "
                 "keeps the whole frame): use data.preprocess=usrc (USrc-JEPA: fan crop) or none")
        if self.mask.region.enabled and self.data.region == "none":
            fail("mask.region.enabled=true needs fan masks: set data.region to auto, given or estimate")
        t = self.train
        if t.sharding == "fsdp" and self.objective.name != "salt":
            fail(f"train.sharding=fsdp supports objective.name=salt only, not '{self.objective.name}': "
                 "set train.sharding=none")
        if t.shard_teacher and (t.sharding != "fsdp" or self.teacher.cache):
            fail("train.shard_teacher=true needs train.sharding=fsdp and a live teacher (teacher.cache unset): set "
                 "train.shard_teacher=false")
        if t.sharding == "fsdp" and t.probe_every > 0:
            fail("train.sharding=fsdp does not run the periodic probe (it uses rank 0's student alone): set "
                 "train.probe_every=0 and probe the saved encoder")
        if OBJECTIVES.fact(self.objective.name, "needs_teacher") and not self.teacher.family:
            fail(f"objective.name={self.objective.name} needs a frozen teacher: set teacher.family (e.g. usjepa, mae, "
                 "timm, dinov2) and teacher.checkpoint, or teacher.family=random for a smoke test")

    def _check_rope_heads(self) -> None:
        """2-D RoPE splits every head in two axes of rotated pairs: head dims must be multiples of 4."""
        m = self.objective.mae
        parts = [("model", self.model.size("embed_dim"), self.model.size("num_heads"),
                  "model.embed_dim / model.num_heads"),
                 ("predictor", self.predictor.embed_dim, self.predictor.num_heads, "predictor.embed_dim / num_heads")]
        if self.objective.name == "mae":
            parts.append(("MAE decoder", m.decoder_dim, m.decoder_heads, "objective.mae.decoder_dim / decoder_heads"))
        for name, d, h, keys in parts:
            if h and d % h == 0 and (d // h) % 4:
                fail(f"model.pos_embed=rope needs head dims divisible by 4: the {name} has {d} / {h} = {d // h}; "
                     f"change {keys} or use model.pos_embed=sincos")


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


def _known_key(cfg: DictConfig, key: str) -> bool:
    """A key the config has, or a new key under a free-form mapping (teacher.options.<new>, datasets.<new>...)."""
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
        return True
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]), default=None)
        if node is not None:  # the nearest existing ancestor decides: only free-form mappings take new keys
            return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict
    return False


def apply_override(cfg: DictConfig, override: str, example: str = "e.g. optim.lr=1e-3") -> DictConfig:
    """One dotted `key=value` (YAML value) on a loaded config; the one override parser of every config kind.

    An unknown key names the closest valid one; an empty container (`{}` / `[]`) replaces instead of merging.
    """
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key=value, {example}")
    key, value = override.split("=", 1)
    key = key.lstrip("+")
    if not _known_key(cfg, key):
        raise ConfigError(_unknown_key_message(cfg, key, "command-line overrides"))
    if value.strip() in ("{}", "[]"):
        OmegaConf.update(cfg, key, {} if value.strip() == "{}" else [], merge=False)
        return cfg
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
    except (ValidationError, ConfigKeyError, ConfigAttributeError) as e:
        raise ConfigError(f"bad override '{override}': {str(e.msg).splitlines()[0]}") from None


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), schema: type = PretrainConfig
) -> DictConfig:
    """Schema defaults <- YAML file <- `key=value` overrides; unknown keys and bad types are ConfigErrors."""
    return _load(path, overrides, schema)[0]


def _load(path: str | Path | None, overrides: list[str] | tuple[str, ...], schema: type) -> tuple[DictConfig, Any]:
    """(the merged config, its checked spec for a training config, else None)."""
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
        cfg = apply_override(cfg, ov)
    return cfg, (validate(cfg) if schema is PretrainConfig else None)


def validate(cfg: DictConfig) -> PretrainConfig:
    """Every choice, range and cross-section rule (the specs' `check`), then the data source's own on-disk check
    (prepared shards); returns the typed spec. `train.resume` true / false of older configs become auto / never,
    and a former teacher family name its current one."""
    from usjepa.io.runfolder import resume_mode

    cfg.train.resume = resume_mode(cfg.train.resume)
    spec = to_spec(cfg)
    cfg.teacher.family = spec.teacher.family  # a former family name, as the spec has it: its current one
    from usjepa.data.spec import DATA_SOURCES

    if DATA_SOURCES.fact(spec.data.source, "check"):  # a source's own on-disk check (prepared shards: settings)
        from usjepa.data.errors import DataError

        try:
            DATA_SOURCES.get(spec.data.source, "check")(spec.data, spec.model.img_size)
        except DataError as e:
            raise ConfigError(str(e)) from None
    return spec


# ----------------------------------------------------------------------------- saving and the reference


def save_run_config(cfg: DictConfig, run_dir: str | Path) -> None:
    """Write the resolved config, git commit + diff and package versions beside the run (atomically).

    A training config is refused when the folder holds a run with other settings (see usjepa.io.runfolder).
    """
    from usjepa.io.runfolder import RunFolder

    RunFolder(run_dir).write_config(cfg)


def to_dict(cfg: Any) -> dict:
    """A config (spec or DictConfig) as plain dicts and lists."""
    return plain(cfg)


def spec_of(cfg: Any, schema: type = PretrainConfig) -> Any:
    """The typed, checked spec of a config: what every code path below the entry points reads.

    Takes a built spec (returned as is), a merged DictConfig (checked as its loader does) or a plain dict (a
    checkpoint's or a submitted job's config: unknown keys are an error, then checked)."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, dict):
        cfg = from_dict(cfg, schema)
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"expected a {schema.__name__}, a DictConfig or a dict, got {type(cfg).__name__}")
    return validate(cfg.copy()) if schema is PretrainConfig else to_spec(cfg)


def pretrain_spec(cfg: Any) -> PretrainConfig:
    """`spec_of` a training config."""
    return spec_of(cfg, PretrainConfig)


def current_names(doc: dict) -> dict:
    """A saved config (a plain dict: config.yaml, a checkpoint's config) with renamed option values under their
    current names, so an older run folder compares equal to the same settings written today."""
    from teachers.catalog import FAMILY_MODULES

    teacher = doc.get("teacher")
    if not (isinstance(teacher, dict) and teacher.get("family") in FAMILY_MODULES):
        return doc
    return {**doc, "teacher": {**teacher, "family": FAMILY_MODULES.canonical(teacher["family"])}}


def load_spec(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """`load_config` ending in the typed spec (the entry points' call)."""
    return _load(path, overrides, PretrainConfig)[1]


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
