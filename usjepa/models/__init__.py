"""Models: the ViT encoder, the JEPA predictor, the MAE decoder, and encoder checkpoint I/O.

The names below load on first use (usjepa.lazy), so the light `usjepa.models.spec` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usjepa.lazy import lazy_exports
from usjepa.models.spec import VIT_PRESETS

if TYPE_CHECKING:
    from usjepa.models.vit import VisionTransformer

_EXPORTS = {
    "VisionTransformer": "usjepa.models.vit",
    "build_vit": "usjepa.models.vit",
    "Predictor": "usjepa.models.predictor",
    "apply_activation_checkpointing": "usjepa.models.checkpointing",
    "checkpointed_blocks": "usjepa.models.checkpointing",
    "export_encoder": "usjepa.models.checkpoint_io",
    "load_encoder_checkpoint": "usjepa.models.checkpoint_io",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def build_encoder(model_cfg) -> VisionTransformer:
    """A `VisionTransformer` from the `model:` config section."""
    from usjepa.models.vit import build_vit

    return build_vit(
        arch=model_cfg.arch,
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        num_heads=model_cfg.num_heads,
        img_size=tuple(model_cfg.img_size),
        patch_size=model_cfg.patch_size,
        in_chans=model_cfg.in_chans,
        cls_token=model_cfg.cls_token,
        drop_path=model_cfg.drop_path,
        attn_backend=model_cfg.attn_backend,
        norm_mean=tuple(model_cfg.norm_mean),
        norm_std=tuple(model_cfg.norm_std),
        pos_embed=getattr(model_cfg, "pos_embed", "sincos"),
        init=getattr(model_cfg, "init", "jepa"),
    )


__all__ = ["VIT_PRESETS", "build_encoder", *_EXPORTS]
