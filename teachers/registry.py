"""The family registry: `register` a builder, `load(family, checkpoint, **options)` a `FrozenTeacher`.

A family is one function `build(checkpoint, *, strict=True, **family_options) -> Built` decorated with
`@register(name, default_norm=..., drop=..., summary=...)`. Options shared by every teacher (norm,
layer, mean_last_k, final_norm, grid_resample, precision) are handled here; anything else must be a keyword of the
builder, so a misspelt option is an error that names the valid ones.
"""

from __future__ import annotations

import difflib
import importlib
import inspect as pyinspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachers.arch import ArchFacts
from teachers.backbones import Backbone
from teachers.catalog import FAMILY_MODULES
from teachers.frozen import FrozenTeacher
from teachers.loading import KeyReport
from usjepa.errors import ConfigError
from usjepa.models.checkpoint_io import CheckpointError
from usjepa.spec import plain

log = logging.getLogger(__name__)

TEACHER_OPTIONS = ("norm", "layer", "mean_last_k", "final_norm", "grid_resample", "precision")


@dataclass
class Built:
    """What a family builder returns: the network (weights loaded when `report.ok`), the key report, and extras."""

    backbone: Backbone
    report: KeyReport | None = None
    arch: str = ""  # human-readable architecture, e.g. "vit d768 x12 h12 p16"
    norm_stats: tuple | None = None  # (mean, std) for the "model" preset
    norm_source: str = ""  # where `norm_stats` came from, said in the log and by `teacher inspect`
    identity: dict = field(default_factory=dict)  # extra identity fields (seed of a random teacher, ...)
    facts: ArchFacts = field(default_factory=ArchFacts)  # every architecture fact, declared or inferred

    @property
    def warnings(self) -> list[str]:
        return self.facts.warnings


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., Built]
    default_norm: str
    drop: tuple[str, ...]
    summary: str
    needs_checkpoint: bool = True
    revision: int = 1  # raised when the same file and options give other tokens (invalidates target caches)

    def options(self) -> list[str]:
        sig = pyinspect.signature(self.build)
        return [n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and n != "strict"]


FAMILIES: dict[str, Family] = {}


def register(name: str, *, default_norm: str, summary: str, drop: tuple[str, ...] = (), needs_checkpoint: bool = True,
             revision: int = 1) -> Callable[[Callable[..., Built]], Callable[..., Built]]:
    """Decorator adding a family builder to `FAMILIES` (see teachers/README.md for what a builder must do)."""

    if name not in FAMILY_MODULES:
        raise ValueError(f"teacher family '{name}' is not listed in teachers/catalog.py (FAMILY_MODULES)")

    def deco(fn: Callable[..., Built]) -> Callable[..., Built]:
        if name in FAMILIES and FAMILIES[name].build is not fn:
            raise ValueError(f"teacher family '{name}' is already registered")
        FAMILIES[name] = Family(name, fn, default_norm, tuple(drop), summary, needs_checkpoint, revision)
        return fn

    return deco


def load_families() -> dict[str, Family]:
    """Import every family module listed in teachers/catalog.py (each registers its builder); `FAMILIES` then."""
    for name in FAMILY_MODULES:
        if name not in FAMILIES:
            importlib.import_module(FAMILY_MODULES.entry(name).target)
    return FAMILIES


def config_error(message: str) -> ValueError:
    """The project's user-facing config error."""
    return ConfigError(message)


def user_error(e: Exception, family: str, checkpoint: str | None) -> Exception:
    """Any failure while loading a teacher as a `CheckpointError` / `ConfigError`: one line the CLI prints."""
    from safetensors import SafetensorError

    if isinstance(e, (CheckpointError, ConfigError)):
        return e
    where = f"teacher checkpoint '{checkpoint}'" if checkpoint else f"the '{family}' teacher"
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, MemoryError):
        return CheckpointError(f"{where}: not enough memory to build the '{family}' teacher it describes; check its "
                               "architecture with `usjepa teacher inspect FILE`")
    if isinstance(e, (ValueError, TypeError)):
        return config_error(text if checkpoint is None or str(checkpoint) in text else f"{where}: {text}")
    if isinstance(e, (RuntimeError, KeyError, IndexError, OSError, SafetensorError)):
        return CheckpointError(f"{where} could not be loaded as a '{family}' teacher ({type(e).__name__}: {text}); "
                               "`usjepa teacher inspect FILE` shows what it holds")
    return e


def get_family(name: str) -> Family:
    load_families()
    name = FAMILY_MODULES.canonical(name)
    if name not in FAMILIES:
        close = difflib.get_close_matches(str(name), list(FAMILIES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise config_error(f"unknown teacher family '{name}'{hint} Known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def split_options(fam: Family, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """(teacher-wide options, family options); unknown names are an error listing the valid ones."""
    valid = fam.options()
    common, own = {}, {}
    for k, v in options.items():
        if k in TEACHER_OPTIONS:
            common[k] = v
        elif k in valid:
            own[k] = v
        else:
            close = difflib.get_close_matches(k, valid + list(TEACHER_OPTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise config_error(f"teacher family '{fam.name}' has no option '{k}'{hint}; its options are "
                               f"{', '.join(valid + list(TEACHER_OPTIONS))}")
    return common, own


def build(family: str, checkpoint: str | None = None, *, strict: bool = True, **options: Any) -> tuple[Family, Built]:
    """Run a family builder (weights loaded strictly unless `strict=False`, used by inspection).

    Every failure is a `CheckpointError` (the file) or a `ConfigError` (the options), never a raw exception.
    """
    fam = get_family(family)
    _, own = split_options(fam, options)
    if fam.needs_checkpoint and not checkpoint:
        raise config_error(f"teacher family '{family}' needs a checkpoint file (teacher.checkpoint=PATH); "
                           "use family 'random' for a randomly initialised teacher")
    if checkpoint and not Path(checkpoint).is_file():
        raise CheckpointError(f"teacher checkpoint '{checkpoint}' does not exist; set teacher.checkpoint to the "
                              f"downloaded {family} weights")
    try:
        return fam, fam.build(checkpoint, strict=strict, **own)
    except Exception as e:  # noqa: BLE001  (re-raised as the user-facing type; the cause stays chained for -v)
        err = user_error(e, family, checkpoint)
        if err is e:
            raise
        raise err from e


def load(family: str, checkpoint: str | None = None, **options: Any) -> FrozenTeacher:
    """A frozen teacher of `family` from `checkpoint`, strictly loaded.

    Teacher-wide options: norm (preset name, "" = family default), layer, mean_last_k, final_norm,
    grid_resample, precision (auto | bf16 | fp32); every other option goes to the family builder (arch, which,
    drop, num_heads, ...). The architecture facts (declared or inferred) and the input statistics are logged;
    a guessed head count that known models disagree on is a warning saying how to set `num_heads`.
    """
    fam, built = build(family, checkpoint, strict=True, **options)
    common, own = split_options(fam, options)
    norm = common.pop("norm", "") or fam.default_norm
    identity = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None, "arch": built.arch,
                "options": {k: own[k] for k in sorted(own)}, **built.identity}
    try:
        teacher = FrozenTeacher(built.backbone, family=fam.name, norm=norm, norm_stats=built.norm_stats,
                                norm_source=built.norm_source, identity=identity, arch_facts=built.facts, **common)
    except (ValueError, TypeError) as e:
        raise user_error(e, family, None) from e
    log.info("teacher %s (%s) from %s: %s", fam.name, built.arch, checkpoint or "random init", teacher.extra_repr())
    if built.facts.facts:
        log.info("teacher architecture: %s", built.facts.summary())
    log.info("teacher input normalisation: %s", teacher.norm_description)
    for warning in built.warnings:
        log.warning(warning)
    return teacher


def spec_options(cfg: Any) -> tuple[str, str | None, dict]:
    """(family, checkpoint, options) from a `teacher:` config section (TeacherConfig or a DictConfig of it)."""
    get = (lambda k: getattr(cfg, k))
    extra = dict(plain(get("options")) or {})
    opts: dict[str, Any] = {"norm": get("norm"), "layer": int(get("layer")), "mean_last_k": int(get("mean_last_k")),
                            "final_norm": bool(get("final_norm")), "precision": str(get("precision"))}
    if get("arch"):
        opts["arch"] = get("arch")
    if int(get("patch_size")):
        opts["patch_size"] = int(get("patch_size"))
    clash = sorted(set(extra) & set(opts))
    if clash:
        raise config_error(f"teacher.options repeats {clash}; set them as teacher.<name> instead")
    opts.update(extra)
    return FAMILY_MODULES.canonical(str(get("family"))), (str(get("checkpoint")) or None), opts


def load_spec(cfg: Any) -> FrozenTeacher:
    """`load` from the `teacher:` config section (family, checkpoint, arch, patch_size, norm, layer, ...)."""
    family, checkpoint, opts = spec_options(cfg)
    if not family:
        raise config_error("teacher.family is empty; set it to one of " + ", ".join(sorted(FAMILY_MODULES)))
    fam = get_family(family)
    if "patch_size" in opts and "patch_size" not in fam.options():
        raise config_error(f"teacher family '{family}' reads its patch size from the checkpoint; remove "
                           f"teacher.patch_size={opts['patch_size']}")
    return load(family, checkpoint, **opts)
