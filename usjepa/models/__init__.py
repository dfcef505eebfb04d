"""Models: the ViT encoder and its `EncoderSpec`, the JEPA predictor, the MAE decoder.

Files are not read or written here (beyond state dicts): `export_encoder` and `load_encoder_checkpoint` live in
`usjepa.io.checkpoints` and stay importable from this package, loaded on first use.
"""

from usjepa.models.checkpointing import apply_activation_checkpointing, checkpointed_blocks
from usjepa.models.predictor import Predictor
from usjepa.models.spec import EncoderSpec
from usjepa.models.vit import VIT_PRESETS, VisionTransformer, build_vit


def build_encoder(model_cfg) -> VisionTransformer:
    """A `VisionTransformer` from the `model:` config section."""
    return EncoderSpec.from_model_config(model_cfg).build()


def __getattr__(name: str):
    if name in ("export_encoder", "load_encoder_checkpoint"):  # usjepa.io.checkpoints builds on this package
        from usjepa.io import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VIT_PRESETS",
    "EncoderSpec",
    "VisionTransformer",
    "Predictor",
    "build_vit",
    "apply_activation_checkpointing",
    "checkpointed_blocks",
    "build_encoder",
    "export_encoder",
    "load_encoder_checkpoint",
]
