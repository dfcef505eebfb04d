"""Family `usjepa`: our own encoders as teachers: the stage-1 MAE teacher, a SALT student, an EMA target.

Reads a usjepa training checkpoint (`latest.pt`, `best.pt`, `step_N.pt`; `which` picks `model` or
`target_encoder`) or an exported `encoder.safetensors`, strictly, through
`usjepa.models.load_encoder_checkpoint`. The default preset `model` uses the encoder's own
`norm_mean` / `norm_std` and channel count, exactly as it saw images in training.
"""

from __future__ import annotations

from teachers.backbones import UsjepaBackbone
from teachers.loading import KeyReport
from teachers.registry import Built, register
from usjepa.models import load_encoder_checkpoint


class UsjepaEncoderBackbone(UsjepaBackbone):
    """The encoder embeds its own tokens (sin-cos added, or RoPE handed to every block)."""

    def embed(self, x):
        return self.net.block_inputs(x)


def encoder_stats(vit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(vit.input_mean.flatten().tolist()), tuple(vit.input_std.flatten().tolist())


@register("usjepa", default_norm="model", summary="usjepa encoder checkpoint (stage-1 MAE teacher, student, export)")
def build_usjepa(checkpoint: str, *, strict: bool = True, which: str = "model", patch_size: int = 0) -> Built:
    vit = load_encoder_checkpoint(checkpoint, which=which)
    if patch_size and patch_size != vit.patch_size:
        raise ValueError(f"'{checkpoint}' holds a patch-{vit.patch_size} encoder, not patch {patch_size}")
    desc = f"usjepa vit d{vit.embed_dim} x{vit.depth} h{vit.num_heads} p{vit.patch_size} c{vit.in_chans}"
    return Built(UsjepaEncoderBackbone(vit), report=KeyReport(f"teacher checkpoint '{checkpoint}'"), arch=desc,
                 norm_stats=encoder_stats(vit))
