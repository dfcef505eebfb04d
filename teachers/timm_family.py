"""Family `timm`: any timm model name plus a checkpoint in timm's own key format.

The model is built with `pretrained=False, num_classes=0` (and `dynamic_img_size=True` where the model
supports it, so any input size works) and run through timm's `forward_intermediates`. A stored
`pos_embed` or relative-position table made for another input size is resized to the model's with
timm's helpers before the strict key check; classifier `head.*` weights are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from teachers.backbones import TimmGenericBackbone
from teachers.loading import KeyReport, load_weights, read_checkpoint, strip_prefixes, unwrap
from teachers.registry import Built, register
from usjepa.models.checkpoint_io import CheckpointError

log = logging.getLogger(__name__)

TIMM_DROP = ("head.*", "head_dist.*", "*relative_position_index")
TIMM_UNWRAP = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
TIMM_PREFIXES = ("module.", "_orig_mod.")


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


@register("timm", default_norm="model", drop=TIMM_DROP,
          summary="any timm model name (arch) plus a checkpoint in timm's key format")
def build_timm(checkpoint: str, *, strict: bool = True, arch: str = "", img_size: Sequence[int] | int = 0,
               which: str = "", drop: Sequence[str] = (), prefixes: Sequence[str] = (),
               model_kwargs: Mapping | None = None, patch_size: int = 0) -> Built:
    if not arch:
        raise ValueError("the timm family needs the timm model name: teacher.arch=vit_base_patch16_224 (for example)")
    source = f"teacher checkpoint '{checkpoint}'"
    state, trail = unwrap(read_checkpoint(checkpoint), TIMM_UNWRAP, source, which)
    state, stripped = strip_prefixes(state, tuple(prefixes) or TIMM_PREFIXES, source)
    model = create(arch, img_size, model_kwargs)
    backbone = TimmGenericBackbone(model, arch)
    if patch_size and patch_size != backbone.patch_size:
        raise CheckpointError(f"timm model '{arch}' has patch size {backbone.patch_size}, not {patch_size}")
    state = fit_to_model(state, model, source)
    report = load_weights(model, state, drop=TIMM_DROP + tuple(drop), source=source, family="timm", strict=strict,
                          report=KeyReport(source, prefixes=stripped, wrappers=trail))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    stats = (tuple(cfg["mean"]), tuple(cfg["std"])) if "mean" in cfg and "std" in cfg else None
    return Built(backbone, report=report, arch=arch, norm_stats=stats)
