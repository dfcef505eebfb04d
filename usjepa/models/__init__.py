"""Models: the ViT encoder and its `EncoderSpec`, the JEPA predictor, the MAE decoder.

The names below load on first use (usjepa.lazy), so the light `usjepa.models.spec` and
`usjepa.models.encoder_spec` import no torch. Files are not read or written here beyond state dicts:
`export_encoder` and `load_encoder_checkpoint` live in `usjepa.io.checkpoints` and stay importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usjepa.lazy import lazy_exports
from usjepa.models.spec import VIT_PRESETS

if TYPE_CHECKING:
    from usjepa.models.vit import VisionTransformer

_EXPORTS = {
    "EncoderSpec": "usjepa.models.encoder_spec",
    "VisionTransformer": "usjepa.models.vit",
    "build_vit": "usjepa.models.vit",
    "Predictor": "usjepa.models.predictor",
    "apply_activation_checkpointing": "usjepa.models.checkpointing",
    "checkpointed_blocks": "usjepa.models.checkpointing",
    "export_encoder": "usjepa.io.checkpoints",
    "load_encoder_checkpoint": "usjepa.io.checkpoints",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def build_encoder(model_cfg: Any) -> VisionTransformer:
    """A `VisionTransformer` from the `model:` config section (its `EncoderSpec`, built)."""
    from usjepa.models.encoder_spec import EncoderSpec

    return EncoderSpec.from_model_config(model_cfg).build()


__all__ = ["VIT_PRESETS", "build_encoder", *_EXPORTS]
