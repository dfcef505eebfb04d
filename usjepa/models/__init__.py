"""Models: the ViT encoder, the JEPA predictor, the MAE decoder, and encoder checkpoint I/O."""

from usjepa.models.checkpoint_io import export_encoder, load_encoder_checkpoint
from usjepa.models.checkpointing import apply_activation_checkpointing, checkpointed_blocks
from usjepa.models.predictor import Predictor
from usjepa.models.vit import VIT_PRESETS, VisionTransformer, build_vit


def build_encoder(model_cfg) -> VisionTransformer:
    """A `VisionTransformer` from the `model:` config section."""
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


__all__ = [
    "VIT_PRESETS",
    "VisionTransformer",
    "Predictor",
    "build_vit",
    "apply_activation_checkpointing",
    "checkpointed_blocks",
    "build_encoder",
    "export_encoder",
    "load_encoder_checkpoint",
]
