"""Family `urfm`: URFM, the frozen teacher of US-JEPA (MAE-style ViT-B/16 or ViT-L/16, 768-wide decoder).

The released files (`mae_vit_{base,large}_patch16_dec768d8b_all_biomedclip_1199.pth`) keep the weights
under `ema_state_dict` while `model` holds a string; the EMA encoder is the teacher. Decoder keys and
`mask_token` are dropped; what remains loads as a timm ViT. URFM's input normalisation is not published:
ImageNet statistics are the default (the MAE code base it builds on), `norm=clip` is the alternative.
"""

from __future__ import annotations

from collections.abc import Sequence

from teachers.loading import WRAPPER_KEYS
from teachers.mae import MAE_DROP, build_mae_style
from teachers.registry import Built, register

URFM_UNWRAP = ("ema_state_dict",) + WRAPPER_KEYS


@register("urfm", default_norm="imagenet", drop=MAE_DROP,
          summary="URFM (US-JEPA's teacher): MAE-style ViT under 'ema_state_dict'; decoder and mask_token dropped")
def build_urfm(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
               num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
               prefixes: Sequence[str] = (), native_grid: Sequence[int] = ()) -> Built:
    return build_mae_style(checkpoint, family="urfm", drop=MAE_DROP + tuple(drop), unwrap_keys=URFM_UNWRAP,
                           strict=strict, which=which, prefixes=prefixes, arch=arch, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, patch_size=patch_size, native_grid=native_grid)
