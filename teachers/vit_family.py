"""Family `vit`: a ViT saved with timm's key names, of any size, e.g. TinyUSFM, DeiT, a fine-tuned classifier.

The architecture is read from the weights (width, depth, patch, MLP, CLS / register tokens, position grid)
except the number of attention heads, which weights cannot show: it is declared (`num_heads`, or a preset
in `configs/teacher/`) or looked up by width, with a warning where known models disagree. Wrapper prefixes
(`module.`, `model.`, ...) are stripped from the start of keys and classifier heads are dropped. A model
fine-tuned with global pooling keeps `fc_norm` instead of the token `norm`; its tokens are then the last
block's output without a final norm, as in that model. Other input sizes resample the positions as timm does.
"""

from __future__ import annotations

from collections.abc import Sequence

from teachers.loading import PREFIXES, WRAPPER_KEYS
from teachers.registry import Built, register
from teachers.vit_state import TIMM_RULE, build_timm_vit, read_state, timm_resample

VIT_DROP = ("head.*", "head_dist.*")


@register("vit", default_norm="imagenet", drop=VIT_DROP,
          summary="timm-named ViT of any size (TinyUSFM, DeiT, fine-tuned ViTs); classifier head dropped")
def build_vit_family(checkpoint: str, *, strict: bool = True, arch: str = "", embed_dim: int = 0, depth: int = 0,
                     num_heads: int = 0, patch_size: int = 0, which: str = "", drop: Sequence[str] = (),
                     prefixes: Sequence[str] = (), native_grid: Sequence[int] = ()) -> Built:
    state, report = read_state(checkpoint, unwrap_keys=WRAPPER_KEYS, which=which, prefixes=tuple(prefixes) or PREFIXES)
    return build_timm_vit(state, report, family="vit", drop=VIT_DROP + tuple(drop), strict=strict,
                          resample=timm_resample, resample_rule=TIMM_RULE, arch=arch, embed_dim=embed_dim,
                          depth=depth, num_heads=num_heads, patch_size=patch_size, native_grid=native_grid)
