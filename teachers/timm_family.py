"""Family `timm`: any timm model name plus a checkpoint in timm's own key format.

The model is built with `pretrained=False, num_classes=0` (and `dynamic_img_size=True` where the model
supports it, so any input size works) and run through timm's `forward_intermediates`. Wrapper prefixes
(`module.`, `_orig_mod.`, `model.`) are removed only from the start of keys. A stored `pos_embed` or
relative-position table made for another input size is resized to the model's with timm's helpers
before the strict key check; classifier `head.*` weights are dropped.

Preset `model` uses the statistics the checkpoint was trained with when it carries them (a
`pretrained_cfg` entry, timm train.py's `args.mean/std`, safetensors metadata, or a `config.json` beside
the file as on the Hugging Face hub), else timm's default `pretrained_cfg` for the model name; the log and
`teacher inspect` say which, and from where.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from teachers.arch import KNOWN_HEADS, ArchFacts
from teachers.backbones import TimmGenericBackbone
from teachers.files import describe, is_safetensors, read_checkpoint, safetensors_header
from teachers.frozen import PRESETS, FrozenTeacher
from teachers.loading import KeyReport, build_and_load, strip_prefixes, unwrap
from teachers.registry import Built, load, register
from usjepa.models.checkpoint_io import CheckpointError

log = logging.getLogger(__name__)

TIMM_DROP = ("head.*", "head_dist.*", "*relative_position_index")
TIMM_UNWRAP = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
TIMM_PREFIXES = ("module.", "_orig_mod.", "model.")


def create(name: str, img_size: Sequence[int] | int = 0, model_kwargs: Mapping | None = None):
    """timm.create_model without downloads; dynamic input size when the model class takes it."""
    import timm

    kw = dict(model_kwargs or {})
    kw.setdefault("num_classes", 0)
    if img_size:
        kw["img_size"] = tuple(img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
    try:
        return timm.create_model(name, pretrained=False, dynamic_img_size=True, **kw)
    except TypeError:  # model class without dynamic_img_size
        return timm.create_model(name, pretrained=False, **kw)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"'{name}' is not a timm model name; list them with timm.list_models('vit_*')") from None
        raise


def fit_to_model(state: dict, model, source: str) -> dict:
    """Resize `pos_embed` and relative-position tables stored for another input size (timm's own helpers)."""
    from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table

    own = model.state_dict()
    out = dict(state)
    pe = out.get("pos_embed")
    if pe is not None and "pos_embed" in own and pe.shape != own["pos_embed"].shape and pe.ndim == 3:
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
        out["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(model.patch_embed.grid_size),
                                                  num_prefix_tokens=prefix)
        log.info("%s: pos_embed resized %s -> %s", source, tuple(pe.shape), tuple(out["pos_embed"].shape))
    for k, v in state.items():
        if k.endswith("relative_position_bias_table") and k in own and v.shape != own[k].shape:
            window = model.get_submodule(k.rsplit(".", 1)[0]).window_size
            out[k] = resize_rel_pos_bias_table(v, new_window_size=tuple(window), new_bias_shape=tuple(own[k].shape))
    return out


# ----------------------------------------------------------------------------- input statistics


def _stats_of(cfg: Any, where: str, source: str) -> tuple[tuple, tuple] | None:
    """(mean, std) from a mapping or namespace holding `mean` and `std`, validated; None when it holds none."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k, None))
    mean, std = get("mean"), get("std")
    if mean is None or std is None:
        return None
    try:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: {where} has mean {mean!r} / std {std!r}, not lists of numbers") from None
    if len(mean) not in (1, 3) or len(std) not in (1, 3) or min(std) <= 0:
        raise CheckpointError(f"{source}: {where} has mean {mean} / std {std}; expected 1 or 3 values, std > 0")
    return mean, std


def checkpoint_stats(raw: Any, path: Path, source: str) -> tuple[tuple, tuple, str] | None:
    """The input statistics a checkpoint was trained with, if it carries them: (mean, std, where from)."""
    found: list[tuple[Any, str]] = []
    if isinstance(raw, Mapping):
        if isinstance(raw.get("pretrained_cfg"), Mapping):
            found.append((raw["pretrained_cfg"], "the checkpoint's 'pretrained_cfg' entry"))
        if raw.get("args") is not None:
            found.append((raw["args"], "the checkpoint's training 'args' (timm train.py)"))
    if is_safetensors(path):
        meta = safetensors_header(path)[0]
        for key in ("pretrained_cfg", "model_config"):
            try:
                cfg = json.loads(meta[key]) if key in meta else None
            except json.JSONDecodeError:
                cfg = None
            if isinstance(cfg, Mapping):
                found.append((cfg.get("pretrained_cfg", cfg), f"the file's safetensors metadata '{key}'"))
        if "mean" in meta and "std" in meta:
            try:
                found.append(({"mean": json.loads(meta["mean"]), "std": json.loads(meta["std"])},
                              "the file's safetensors metadata 'mean' / 'std'"))
            except json.JSONDecodeError:
                raise CheckpointError(f"{source}: safetensors metadata mean/std are not JSON lists") from None
    side = path.with_name("config.json")
    if side.is_file():
        try:
            cfg = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{source}: '{side}' beside it is not JSON ({e}); fix or remove it") from None
        if isinstance(cfg, Mapping):
            found.append((cfg.get("pretrained_cfg", cfg), f"'{side}' (pretrained_cfg beside the checkpoint)"))
    for cfg, where in found:
        stats = _stats_of(cfg, where, source)
        if stats is not None:
            return stats[0], stats[1], where
    return None


# ----------------------------------------------------------------------------- architecture facts


def timm_facts(model, arch: str, model_kwargs: Mapping | None, img_size: Any) -> ArchFacts:
    """Architecture facts of a timm model: declared by the model name (or `model_kwargs` / `img_size`)."""
    facts = ArchFacts()
    kw = dict(model_kwargs or {})

    def by(key: str) -> str:
        return f"model_kwargs {key}={kw[key]}" if key in kw else f"timm model '{arch}'"

    backbone = TimmGenericBackbone(model, arch)
    facts.declare("width", backbone.embed_dim, by("embed_dim"))
    facts.declare("depth", backbone.depth, by("depth"))
    attn = getattr(model.blocks[0], "attn", None) if len(model.blocks) else None
    heads = getattr(attn, "num_heads", None)
    if heads is not None:
        others = [f"{m} has {h}" for h, m, _ in KNOWN_HEADS.get(backbone.embed_dim, []) if h != heads]
        note = f" (at this width {'; '.join(others)}: model_kwargs num_heads=N)" if others else ""
        facts.declare("heads", int(heads), by("num_heads") + note)
    facts.declare("patch", backbone.patch_size, by("patch_size"))
    facts.declare("cls_token", backbone.has_cls, by("class_token"))
    facts.declare("registers", int(getattr(model, "num_reg_tokens", 0)), by("reg_tokens"))
    if backbone.native_grid:
        where = f"img_size option {img_size}" if img_size else f"timm model '{arch}' default input size"
        grid = list(backbone.native_grid)
        facts.declare("pos_grid", grid, f"{where} -> {grid[0] * backbone.patch_size}x{grid[1] * backbone.patch_size} px"
                      + (" (other sizes resampled by timm)" if backbone.dynamic else ""))
    return facts


@register("timm", default_norm="model", drop=TIMM_DROP, revision=2,
          summary="any timm model name (arch) plus a checkpoint in timm's key format")
def build_timm(checkpoint: str, *, strict: bool = True, arch: str = "", img_size: Sequence[int] | int = 0,
               which: str = "", drop: Sequence[str] = (), prefixes: Sequence[str] = (),
               model_kwargs: Mapping | None = None, patch_size: int = 0) -> Built:
    if not arch:
        raise ValueError("the timm family needs the timm model name: teacher.arch=vit_base_patch16_224 (for example)")
    source = describe(checkpoint)
    raw = read_checkpoint(checkpoint)
    stats = checkpoint_stats(raw, Path(checkpoint), source)
    state, trail = unwrap(raw, TIMM_UNWRAP, source, which)
    del raw
    state, stripped = strip_prefixes(state, tuple(prefixes) or TIMM_PREFIXES, source)
    with torch.device("meta"):  # shapes only: the file is checked against them before anything is allocated
        shell = create(arch, img_size, model_kwargs)
    shell_backbone = TimmGenericBackbone(shell, arch)
    if patch_size and patch_size != shell_backbone.patch_size:
        raise CheckpointError(f"timm model '{arch}' has patch size {shell_backbone.patch_size}, not {patch_size}")
    facts = timm_facts(shell, arch, model_kwargs, img_size)
    state = fit_to_model(state, shell, source)
    cfg = getattr(shell, "pretrained_cfg", None) or {}
    del shell, shell_backbone
    model, report = build_and_load(lambda: create(arch, img_size, model_kwargs), state,
                                   drop=TIMM_DROP + tuple(drop), source=source, family="timm", strict=strict,
                                   report=KeyReport(source, prefixes=stripped, wrappers=trail))
    if stats is not None:
        norm_stats, norm_source = (stats[0], stats[1]), stats[2]
    elif "mean" in cfg and "std" in cfg:
        tag = cfg.get("tag") or ""
        norm_stats = (tuple(cfg["mean"]), tuple(cfg["std"]))
        norm_source = (f"timm's default pretrained_cfg of '{arch}'{' (tag ' + tag + ')' if tag else ''}: the "
                       "checkpoint carries no statistics of its own; if it was trained with others, name the timm "
                       "tag it came from (arch=NAME.TAG) or set norm=imagenet / clip / ...")
    else:
        norm_stats, norm_source = None, ""
    return Built(TimmGenericBackbone(model, arch), report=report, arch=arch, norm_stats=norm_stats,
                 norm_source=norm_source, facts=facts)


def frozen_timm(arch: str, checkpoint: str = "", model_kwargs: Mapping | None = None,
                precision: str = "auto") -> FrozenTeacher:
    """A timm model as a frozen encoder (the probe suite's `kind: timm`): with a checkpoint, this family's load
    (safe read, strict keys, the checkpoint's own statistics); without one, timm's random initialisation (drawn
    from the caller's RNG) normalised with the model's pretrained_cfg statistics, else ImageNet's."""
    if checkpoint:
        return load("timm", checkpoint, arch=arch, model_kwargs=dict(model_kwargs or {}), norm="model",
                    precision=precision)
    model = create(arch, 0, model_kwargs)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = "mean" in cfg and "std" in cfg
    stats = (tuple(cfg["mean"]), tuple(cfg["std"])) if own else PRESETS["imagenet"]
    where = f"timm's default pretrained_cfg of '{arch}'" if own else "ImageNet's (the model's pretrained_cfg has none)"
    return FrozenTeacher(TimmGenericBackbone(model, arch), family="timm", norm="model", norm_stats=stats,
                         norm_source=f"{where}; random init, no checkpoint",
                         identity={"checkpoint": None, "arch": arch}, precision=precision)
