"""`EncoderSpec`: the one description of a usjepa ViT encoder's architecture.

Every place that needs the architecture goes through it: the `model:` config section (`from_model_config`), a
built encoder (`from_encoder`, or `VisionTransformer.spec`), the `model_config` metadata of an exported
`encoder.safetensors` and the `config.model` of a training checkpoint (`to_dict` / `from_dict`), building
(`build`), and the timm call an export loads into (`timm_kwargs`, `timm_spec`). It is frozen and checks itself,
so a spec that exists can be built. The names it accepts are the registries of `usjepa.models.spec` (where the
`model:` config section lives too). This module imports nothing heavy (no torch until `build`).

Sizes are stored resolved: `embed_dim`, `depth` and `num_heads` are the real ones, `arch` is the preset they
came from (the `model:` section's 0 means "the preset's value"). `from_dict` reads every form usjepa has
written: training exports (the whole `model:` section, sizes 0 for the preset's), `usjepa export` files (arch
`vit_tiny` with explicit sizes), files from before RoPE (no `pos_embed`: sin-cos) and before `init`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from usjepa.models.spec import ATTENTION_BACKENDS, INITS, POS_EMBEDS, VIT_PRESETS
from usjepa.spec import plain

# keys of the `model:` section a saved file must declare (the rest have defaults every written form agrees on)
REQUIRED = ("img_size", "patch_size", "in_chans")


def _int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral) or v < minimum:
        raise ValueError(f"encoder {name}={v!r} is not an integer >= {minimum}")
    return int(v)


def _floats(name: str, v: Any) -> tuple[float, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
        raise ValueError(f"encoder {name}={v!r} is not a non-empty list of numbers")
    if not all(isinstance(x, Real) and not isinstance(x, bool) for x in v):
        raise ValueError(f"encoder {name}={list(v)!r} is not a list of numbers")
    return tuple(float(x) for x in v)


def preset_sizes(arch: str, embed_dim: int = 0, depth: int = 0, num_heads: int = 0) -> dict[str, int]:
    """The preset's width / depth / heads, each replaced by the explicit value where that is > 0."""
    if arch not in VIT_PRESETS:
        raise ValueError(f"unknown architecture '{arch}'; choose one of {', '.join(VIT_PRESETS)}")
    given = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    return {k: (given[k] or v) for k, v in VIT_PRESETS[arch].items()}


@dataclass(frozen=True)
class EncoderSpec:
    """A usjepa ViT encoder's architecture and input handling (everything but the weights)."""

    arch: str = "vit_tiny"  # the preset the sizes came from (a label once they are resolved)
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    img_size: tuple[int, int] = (224, 224)  # [H, W] of the native position grid
    patch_size: int = 16
    in_chans: int = 3
    cls_token: bool = True
    pos_embed: str = "sincos"  # sincos | rope
    mlp_ratio: float = 4.0
    drop_path: float = 0.0  # largest stochastic-depth rate (last block); training only
    attn_backend: str = "auto"  # auto | xformers | sdpa | math
    norm_mean: tuple[float, ...] = (0.5,)  # input normalisation of [0, 1] images (1 or in_chans values)
    norm_std: tuple[float, ...] = (0.25,)
    init: str = "jepa"  # jepa | mae: how fresh weights are drawn

    def __post_init__(self) -> None:
        if self.arch not in VIT_PRESETS:
            raise ValueError(f"unknown architecture '{self.arch}'; choose one of {', '.join(VIT_PRESETS)}")
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "in_chans"):
            object.__setattr__(self, name, _int(name, getattr(self, name)))
        size = self.img_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
            raise ValueError(f"encoder img_size={size!r} is not [H, W]")
        size = (_int("img_size", size[0]), _int("img_size", size[1]))
        object.__setattr__(self, "img_size", size)
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(f"image size {size[0]}x{size[1]} is not a multiple of the patch size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"encoder embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        object.__setattr__(self, "cls_token", bool(self.cls_token))
        for name, choices in (("pos_embed", POS_EMBEDS), ("init", INITS), ("attn_backend", ATTENTION_BACKENDS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got '{getattr(self, name)}'")
        if not self.mlp_ratio > 0 or not 0 <= self.drop_path < 1:
            raise ValueError(f"encoder mlp_ratio={self.mlp_ratio} must be > 0 and drop_path={self.drop_path} in [0, 1)")
        for name in ("norm_mean", "norm_std"):
            values = _floats(name, getattr(self, name))
            if len(values) not in (1, self.in_chans):
                raise ValueError(f"encoder {name} has {len(values)} values; give 1 or in_chans={self.in_chans}")
            object.__setattr__(self, name, values)
        if min(self.norm_std) <= 0:
            raise ValueError(f"encoder norm_std={list(self.norm_std)} must be > 0")

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, mc: Mapping) -> EncoderSpec:
        """The spec a `model:` section (a saved file's `model_config` / `config.model`) declares.

        Sizes of 0 or absent take the preset's; keys the encoder does not use (a newer or older config's) are
        ignored; `img_size`, `patch_size` and `in_chans` must be there. Raises ValueError naming the key.
        """
        if not isinstance(mc, Mapping):
            raise ValueError(f"the model config is a {type(mc).__name__}, not a mapping")
        missing = [k for k in REQUIRED if k not in mc]
        if missing:
            raise ValueError(f"the model config lacks {', '.join(missing)}")
        arch = mc.get("arch", "vit_tiny")
        sizes = {k: mc.get(k) or 0 for k in ("embed_dim", "depth", "num_heads")}
        for k, v in sizes.items():
            _int(k, v, minimum=0)
        fields = {f.name for f in dataclasses.fields(cls)} - {"arch", *sizes}
        kw = {k: mc[k] for k in fields if k in mc and mc[k] is not None}
        return cls(arch=arch, **preset_sizes(arch, **sizes), **kw)

    @classmethod
    def from_model_config(cls, model_cfg: Any) -> EncoderSpec:
        """The spec of the `model:` config section (a dataclass, a DictConfig or a plain mapping)."""
        return cls.from_dict(plain(model_cfg))

    @classmethod
    def from_encoder(cls, encoder: Any) -> EncoderSpec:
        """The spec a usjepa `VisionTransformer` was built from."""
        spec = getattr(encoder, "spec", None)
        if not isinstance(spec, EncoderSpec):
            raise TypeError(f"a {type(encoder).__name__} is not a usjepa VisionTransformer (it carries no spec)")
        return spec

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The `model:` section form (JSON-ready, sizes explicit): what `encoder.safetensors` metadata stores."""
        d = dataclasses.asdict(self)
        d.update(img_size=list(self.img_size), norm_mean=list(self.norm_mean), norm_std=list(self.norm_std))
        return d

    def replace(self, **changes: Any) -> EncoderSpec:
        return dataclasses.replace(self, **changes)

    def build(self):
        """A freshly initialised `VisionTransformer` (draws from torch's global RNG; seed it first)."""
        from usjepa.models.vit import VisionTransformer

        return VisionTransformer(**self.to_dict())

    # ------------------------------------------------------------------ timm
    def timm_kwargs(self) -> dict:
        """Arguments for `timm.create_model('vit_*', **kwargs)` that rebuild this architecture."""
        kw: dict[str, Any] = dict(img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
                                  embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads, num_classes=0)
        if not self.cls_token:
            kw.update(class_token=False, global_pool="avg", fc_norm=False)
        return kw

    def timm_spec(self) -> tuple[str, dict]:
        """(timm model name, keyword arguments) of the timm model this encoder's state dict loads into exactly.

        Sin-cos: timm's `VisionTransformer`. RoPE: timm's `Eva` with `AttentionRope` (fused qkv with bias, as
        here), no absolute positions, axial RoPE with integer positions, 'ij' order and theta 10000. The model
        name only picks the class (timm's create_model drops None arguments, so the name must be one without
        layer scale); every architecture argument is passed explicitly.
        """
        if self.pos_embed == "sincos":
            return "vit_base_patch16_224", self.timm_kwargs()
        kw = dict(self.timm_kwargs(), attn_type="rope", use_abs_pos_emb=False, use_rot_pos_emb=True,
                  rope_type="cat", rope_grid_indexing="ij", rope_temperature=10000.0, rope_grid_offset=0.0,
                  use_fc_norm=False, qkv_bias=True,
                  mlp_ratio=int(self.embed_dim * self.mlp_ratio) / self.embed_dim,  # the hidden width really built
                  class_token=self.cls_token, global_pool="token" if self.cls_token else "avg")
        kw.pop("fc_norm", None)
        return "eva_giant_patch14_224", kw
