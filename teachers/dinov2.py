"""Family `dinov2`: the original DINOv2 release files (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`).

Flat state dicts (training checkpoints: under `teacher` / `model` with `backbone.`) with `pos_embed` for
518 px (a 37x37 grid plus a CLS slot), `mask_token`, LayerScale `ls1.gamma` / `ls2.gamma`, optional
`register_tokens` and, for ViT-g, a fused SwiGLU MLP (`mlp.w12`, `mlp.w3`). They are mapped onto timm's
ViT: registers become `reg_token`, the CLS position is folded into `cls_token` (registers carry no
position in DINOv2), `w12`/`w3` become `fc1`/`fc2`. Other grids use DINOv2's own interpolation: bicubic
by scale factor (n + 0.1) / 37, no antialiasing, so tokens match the original code at any input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor

from teachers.loading import drop_keys, resample_grid_embed
from teachers.registry import Built, register
from teachers.vit_state import build_timm_vit, read_state
from usjepa.models.checkpoint_io import CheckpointError

DINOV2_DROP = ("mask_token",)
DINOV2_UNWRAP = ("teacher", "model", "state_dict")
DINOV2_PREFIXES = ("module.", "backbone.")


def to_timm_layout(state: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], bool]:
    """DINOv2 release keys -> timm ViT keys (no_embed_class layout). Returns (state, uses SwiGLU)."""
    out = dict(state)
    if "pos_embed" not in out or "cls_token" not in out:
        missing = [k for k in ("pos_embed", "cls_token") if k not in out]
        raise CheckpointError(f"{source} lacks {missing}; a DINOv2 release file has both. Is this the right family?")
    pos = out.pop("pos_embed")  # [1, 1 + N, D]
    out["cls_token"] = out["cls_token"] + pos[:, :1]  # the CLS position, folded in once
    out["pos_embed"] = pos[:, 1:].contiguous()  # [1, N, D], patches only
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
    swiglu = any(k.endswith(".mlp.w12.weight") for k in out)
    if swiglu:
        renamed = {}
        for k, v in out.items():
            head, sep, tail = k.rpartition(".mlp.")
            if sep and tail.split(".")[0] in ("w12", "w3"):
                k = f"{head}.mlp.{'fc1' if tail.startswith('w12') else 'fc2'}{tail[tail.index('.'):]}"
            renamed[k] = v
        out = renamed
    return out, swiglu


@register("dinov2", default_norm="imagenet", drop=DINOV2_DROP,
          summary="DINOv2 release file (patch 14, 518 px pos_embed, optional 4 registers, LayerScale)")
def build_dinov2(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
                 num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
                 prefixes: Sequence[str] = (), interpolate_offset: float = 0.1) -> Built:
    state, report = read_state(checkpoint, unwrap_keys=DINOV2_UNWRAP, which=which,
                               prefixes=tuple(prefixes) or DINOV2_PREFIXES)
    # dropped before conversion so that the report names them in the file's own terms
    all_drop = DINOV2_DROP + tuple(drop)
    state, dropped = drop_keys(state, all_drop)
    state, swiglu = to_timm_layout(state, report.source)
    resample = partial(resample_grid_embed, mode="bicubic", antialias=False, offset=float(interpolate_offset))
    built = build_timm_vit(state, report, family="dinov2", drop=all_drop, strict=strict, resample=resample, arch=arch,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                           no_embed_class=True, swiglu=swiglu)
    built.report.dropped = dropped
    return built
