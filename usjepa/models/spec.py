"""The `model:` and `predictor:` config sections and the names they accept (light: no torch).

`VIT_PRESETS` is the one list of encoder sizes; `ATTENTION_BACKENDS` the one list of attention kernels
(usjepa.models.attention picks among them); `POS_EMBEDS` and `INITS` the position-embedding and
initialisation schemes the ViT, predictor and MAE decoder branch on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from usjepa.registry import Registry
from usjepa.spec import Spec, at_least, choice, fail, key, within

VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
}

# a backend's target is its kernel `(q, k, v, layout) -> out` (usjepa.models.attention); facts: `rule` (the target
# picks a kernel's name instead: auto), `require` (a `module:attribute` that raises when the kernel cannot run here)
ATTENTION_BACKENDS = Registry("attention backend")
ATTENTION_BACKENDS.register("auto", "usjepa.models.attention:auto_backend", rule=True,
                            summary="xformers on CUDA when it imports, else sdpa (env USJEPA_ATTN overrides)")
ATTENTION_BACKENDS.register("xformers", "usjepa.models.attention:xformers_attention",
                            summary="xformers memory-efficient attention (CUDA)",
                            require="usjepa.models.attention:require_xformers")
ATTENTION_BACKENDS.register("sdpa", "usjepa.models.attention:sdpa_attention",
                            summary="torch scaled_dot_product_attention")
ATTENTION_BACKENDS.register("math", "usjepa.models.attention:math_attention",
                            summary="explicit softmax(QK^T)V reference")

POS_EMBEDS = Registry("position embedding")
POS_EMBEDS.register("sincos", summary="fixed 2-D sine-cosine (I-JEPA, MAE)")
POS_EMBEDS.register("rope", summary="2-D rotary embedding in every block (V-JEPA 2, SALT)")

INITS = Registry("initialisation")
INITS.register("jepa", summary="trunc-normal 0.02, per-depth rescale")
INITS.register("mae", summary="xavier-uniform, CLS std 0.02")


def check_heads(dim: int, heads: int, dim_key: str, heads_key: str) -> None:
    if heads and dim and dim % heads:
        fail(f"{key(dim_key)}={dim} is not divisible by {key(heads_key)}={heads}")


@dataclass
class ModelConfig(Spec):
    """The student encoder (for `mae`, the encoder that becomes the teacher)."""

    arch: str = "vit_tiny"  # vit_tiny | vit_small | vit_base | vit_large | vit_huge
    patch_size: int = 16
    img_size: list[int] = field(default_factory=lambda: [64, 64])  # [H, W]
    in_chans: int = 1  # channels the patch embedding takes; inputs are converted to this
    cls_token: bool = True
    drop_path: float = 0.0
    attn_backend: str = "auto"  # auto | xformers | sdpa | math (env USJEPA_ATTN overrides auto)
    norm_mean: list[float] = field(default_factory=lambda: [0.5])
    norm_std: list[float] = field(default_factory=lambda: [0.25])
    pos_embed: str = "sincos"  # sincos (I-JEPA, MAE) / rope (2-D RoPE, V-JEPA 2 / SALT); predictor and decoder follow
    init: str = "jepa"  # jepa (trunc-normal 0.02, per-depth rescale) / mae (xavier-uniform, CLS std 0.02; MAE)
    # explicit sizes override the preset when > 0
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0

    def check(self) -> None:
        choice(self.arch, VIT_PRESETS, "arch")
        ATTENTION_BACKENDS.check(self.attn_backend, "attn_backend")
        POS_EMBEDS.check(self.pos_embed, "pos_embed")
        INITS.check(self.init, "init")
        at_least(self.patch_size, 1, "patch_size")
        if len(self.img_size) != 2 or min(self.img_size) < 1:
            fail(f"{key('img_size')} must be [H, W] of positive sizes, got {list(self.img_size)}")
        for i, s in enumerate(self.img_size):
            if s % self.patch_size:
                fail(f"{key('img_size')}[{i}]={s} is not a multiple of {key('patch_size')}={self.patch_size}; "
                     f"use e.g. {s - s % self.patch_size or self.patch_size}")
        if self.in_chans not in (1, 3):
            fail(f"{key('in_chans')} must be 1 or 3, got {self.in_chans}")
        within(self.drop_path, 0.0, 1.0, "drop_path", "[)")
        if len(self.norm_mean) not in (1, self.in_chans) or len(self.norm_std) != len(self.norm_mean):
            fail(f"{key('norm_mean')} / {key('norm_std')} need 1 or in_chans values each, of equal length")
        if any(s <= 0 for s in self.norm_std):
            fail(f"{key('norm_std')} must be > 0, got {list(self.norm_std)}")
        for name in ("embed_dim", "depth", "num_heads"):
            at_least(getattr(self, name), 0, name, " (0: the arch preset's size)")
        dim, heads = self.size("embed_dim"), self.size("num_heads")
        check_heads(dim, heads, "embed_dim", "num_heads")

    def size(self, name: str) -> int:
        """embed_dim / depth / num_heads: the explicit value, else the arch preset's."""
        return getattr(self, name) or VIT_PRESETS[self.arch][name]


@dataclass
class PredictorConfig(Spec):
    depth: int = 12
    embed_dim: int = 384
    num_heads: int = 16
    per_block: bool = True  # predict each target block in its own sequence (I-JEPA); False: the union at once
    zero_init_mask_tokens: bool = False  # V-JEPA / V-JEPA 2 start mask tokens at 0; I-JEPA trunc-normal(0.02)

    def check(self) -> None:
        for name in ("depth", "embed_dim", "num_heads"):
            at_least(getattr(self, name), 1, name)
        check_heads(self.embed_dim, self.num_heads, "embed_dim", "num_heads")
