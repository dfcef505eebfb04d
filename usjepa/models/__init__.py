"""Models: the ViT encoder and its `EncoderSpec`, the JEPA predictor, the MAE decoder.

Importing the package (or `usjepa.models.spec`) loads no torch: the spec and the presets are plain Python, so the
config layer can use them; the networks load on first use. Files are not read or written here beyond state dicts:
`export_encoder` and `load_encoder_checkpoint` live in `usjepa.io.checkpoints` and stay importable from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from usjepa.models.spec import VIT_PRESETS, EncoderSpec

if TYPE_CHECKING:
    from usjepa.models.vit import VisionTransformer

_LAZY = {  # name -> module it lives in, imported on first use
    "VisionTransformer": "usjepa.models.vit",
    "build_vit": "usjepa.models.vit",
    "Predictor": "usjepa.models.predictor",
    "apply_activation_checkpointing": "usjepa.models.checkpointing",
    "checkpointed_blocks": "usjepa.models.checkpointing",
    "export_encoder": "usjepa.io.checkpoints",
    "load_encoder_checkpoint": "usjepa.io.checkpoints",
}


def build_encoder(model_cfg: Any) -> VisionTransformer:
    """A `VisionTransformer` from the `model:` config section."""
    return EncoderSpec.from_model_config(model_cfg).build()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VIT_PRESETS", "EncoderSpec", "build_encoder", *_LAZY]
