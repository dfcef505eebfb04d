"""The `objective:` config section and the registries of objectives, losses and target norms (light: no torch).

An objective is one module under usjepa/objectives with a `from_config(cfg, student, make_predictor,
total_steps)` builder, registered below with the facts the config checks read: `needs_teacher` (a frozen
teacher must be configured) and `predictor` (it trains a predictor, whose heads RoPE must split).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usjepa.registry import Registry
from usjepa.spec import Spec, at_least, positive, within

OBJECTIVES = Registry("objective")
OBJECTIVES.register("salt", "usjepa.objectives.salt:from_config", "latent regression onto a frozen teacher (SALT)",
                    needs_teacher=True, predictor=True)
OBJECTIVES.register("mae", "usjepa.objectives.mae:from_config", "pixel reconstruction of masked patches (MAE)",
                    needs_teacher=False, predictor=False)
OBJECTIVES.register("ema_jepa", "usjepa.objectives.ema_jepa:from_config", "latent regression onto an EMA encoder "
                    "(I-JEPA)", needs_teacher=False, predictor=True)

LOSSES = Registry("loss")
LOSSES.register("l1", "usjepa.objectives.base:l1_elements", "|pred - target|")
LOSSES.register("smooth_l1", "usjepa.objectives.base:smooth_l1_elements", "Huber with objective.smooth_l1_beta")
LOSSES.register("l2", "usjepa.objectives.base:l2_elements", "(pred - target)^2")

TARGET_NORMS = Registry("target norm")
TARGET_NORMS.register("layernorm", summary="non-affine LayerNorm per token")
TARGET_NORMS.register("none", summary="raw teacher tokens")


@dataclass
class EMAConfig(Spec):
    momentum_start: float = 0.996
    momentum_end: float = 1.0

    def check(self) -> None:
        within(self.momentum_start, 0.0, 1.0, "momentum_start")
        within(self.momentum_end, self.momentum_start, 1.0, "momentum_end")


@dataclass
class MAEConfig(Spec):
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True

    def check(self) -> None:
        for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
            at_least(getattr(self, name), 1, name)


@dataclass
class ObjectiveConfig(Spec):
    name: str = "salt"  # salt | mae | ema_jepa
    loss: str = "l1"  # l1 | smooth_l1 | l2
    smooth_l1_beta: float = 1.0
    target_norm: str = "layernorm"  # layernorm (non-affine, per token) | none
    ema: EMAConfig = field(default_factory=EMAConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)

    def check(self) -> None:
        OBJECTIVES.check(self.name, "name")
        LOSSES.check(self.loss, "loss")
        TARGET_NORMS.check(self.target_norm, "target_norm")
        positive(self.smooth_l1_beta, "smooth_l1_beta")
