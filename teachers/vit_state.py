"""Shared by the ViT families (mae, urfm, ijepa, dinov2): read a checkpoint down to a timm-named state dict,
build the matching timm `VisionTransformer` from the weights' shapes, and load it strictly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor, nn

from teachers.backbones import TimmViTBackbone
from teachers.loading import (
    PREFIXES,
    KeyReport,
    load_weights,
    patch_geometry,
    read_checkpoint,
    resample_grid_embed,
    resolve_dims,
    square_grid,
    strip_prefixes,
    unwrap,
)
from teachers.registry import Built
from usjepa.models.checkpoint_io import CheckpointError

Resampler = Callable[[Tensor, tuple[int, int], tuple[int, int]], Tensor]

# MAE / I-JEPA fine-tuning convention: bicubic by output size, no antialiasing.
bicubic_resample: Resampler = partial(resample_grid_embed, mode="bicubic", antialias=False)


def read_state(checkpoint: str, *, unwrap_keys: Sequence[str], which: str = "",
               prefixes: Sequence[str] = PREFIXES) -> tuple[dict[str, Tensor], KeyReport]:
    """Safe-load a file and return its (unwrapped, prefix-stripped) state dict with a report of what was removed."""
    source = f"teacher checkpoint '{checkpoint}'"
    state, trail = unwrap(read_checkpoint(checkpoint), unwrap_keys, source, which)
    state, stripped = strip_prefixes(state, prefixes, source)
    return state, KeyReport(source, prefixes=stripped, wrappers=trail)


def build_timm_vit(state: dict[str, Tensor], report: KeyReport, *, family: str, drop: Sequence[str], strict: bool,
                   resample: Resampler, arch: str = "", embed_dim: int = 0, depth: int = 0, num_heads: int = 0,
                   patch_size: int = 0, no_embed_class: bool = False, swiglu: bool = False,
                   native_grid: Sequence[int] = ()) -> Built:
    """A timm ViT shaped like `state` (width, depth, MLP, LayerScale, CLS/register tokens read from the weights).

    `arch` / `embed_dim` / `depth` / `num_heads` pin the architecture instead; then a file of another shape
    fails the strict check with the offending keys named.
    """
    from timm.models.vision_transformer import VisionTransformer

    source = report.source
    p, in_chans = patch_geometry(state, source, patch_size)
    d, n_blocks, heads = resolve_dims(state, source, arch, embed_dim, depth, num_heads)
    cls = "cls_token" in state
    regs = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    pos = state.get("pos_embed")
    if native_grid:
        grid = (int(native_grid[0]), int(native_grid[1]))
    elif pos is not None:
        slots = 0 if no_embed_class else int(cls) + regs
        grid = square_grid(int(pos.shape[1]) - slots, source)
    else:
        grid = (224 // p, 224 // p)  # the strict check will report pos_embed missing
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    hidden = int(fc1.shape[0]) if fc1 is not None else 4 * d
    kwargs = {}
    if swiglu:
        from timm.layers import SwiGLUPacked

        kwargs = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
    if d % heads:
        raise CheckpointError(f"{source}: width {d} is not divisible by num_heads={heads}; set `num_heads`")
    model = VisionTransformer(
        img_size=(grid[0] * p, grid[1] * p), patch_size=p, in_chans=in_chans, num_classes=0, global_pool="",
        fc_norm=False, embed_dim=d, depth=n_blocks, num_heads=heads, mlp_ratio=(hidden + 0.5) / d,
        qkv_bias="blocks.0.attn.qkv.bias" in state, init_values=1e-5 if "blocks.0.ls1.gamma" in state else None,
        class_token=cls, no_embed_class=no_embed_class, reg_tokens=regs, weight_init="skip", **kwargs)
    report = load_weights(model, state, drop=drop, source=source, family=family, strict=strict, report=report)
    desc = f"vit d{d} x{n_blocks} h{heads} p{p}" + ("" if cls else " no-cls") + (f" reg{regs}" if regs else "")
    return Built(TimmViTBackbone(model, grid, resample), report=report, arch=desc)

