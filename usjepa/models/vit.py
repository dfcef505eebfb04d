"""The ViT encoder: fixed 2-D sin-cos positions or 2-D RoPE, optional CLS token, any patch size and image size.

Parameter names follow timm: a sin-cos encoder's state dict loads into `timm.create_model('vit_tiny_patch16_224',
img_size=..., in_chans=..., num_classes=0)` with strict=True, a RoPE encoder's into timm's `Eva` with
attn_type='rope' (`timm_spec()` gives the call). Its architecture is an `EncoderSpec` (`.spec`), checked before
anything is built. The encoder owns its input handling: images in [0, 1] with 1 or
3 channels are converted to `in_chans` and normalised with `norm_mean` / `norm_std`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from usjepa.models.encoder_spec import EncoderSpec, preset_sizes
from usjepa.models.layers import (
    Block,
    gather_tokens,
    init_weights,
    rescale_residual_branches,
    sincos_2d,
    xavier_init,
)
from usjepa.models.layout import Segment, TokenLayout
from usjepa.models.rope import RopeTables
from usjepa.models.spec import VIT_PRESETS

__all__ = ["VIT_PRESETS", "EncoderSpec", "VisionTransformer", "build_vit", "to_channels"]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, N, D]


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Grayscale <-> RGB conversion of [B, C, H, W] images (replicate, or average)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise ValueError(f"images have {c} channels; expected 1 or 3")


class VisionTransformer(nn.Module):
    """ViT encoder. `forward(images, keep)` returns final-norm patch tokens [B, N or K, D]."""

    def __init__(
        self,
        img_size: Sequence[int] = (224, 224),
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        cls_token: bool = True,
        drop_path: float = 0.0,
        attn_backend: str = "auto",
        norm_mean: Sequence[float] = (0.5,),
        norm_std: Sequence[float] = (0.25,),
        pos_embed: str = "sincos",
        init: str = "jepa",
        arch: str = "vit_tiny",  # the preset name the spec records; the sizes above are the ones built
    ):
        super().__init__()
        spec = EncoderSpec(arch=arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads, img_size=img_size,
                           patch_size=patch_size, in_chans=in_chans, cls_token=cls_token, pos_embed=pos_embed,
                           mlp_ratio=mlp_ratio, drop_path=drop_path, attn_backend=attn_backend, norm_mean=norm_mean,
                           norm_std=norm_std, init=init)
        self.spec = spec
        self.pos_embed_type = spec.pos_embed
        self.img_size = spec.img_size
        self.patch_size = spec.patch_size
        self.in_chans = spec.in_chans
        self.embed_dim = embed_dim = spec.embed_dim
        self.depth = spec.depth
        self.num_heads = spec.num_heads
        self.num_prefix_tokens = 1 if spec.cls_token else 0
        self.patch_embed = PatchEmbed(spec.patch_size, spec.in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if spec.cls_token else None
        grid = self.grid(self.img_size)
        if spec.pos_embed == "sincos":
            pos = sincos_2d(embed_dim, grid)
            if spec.cls_token:
                pos = torch.cat([torch.zeros(1, embed_dim), pos], dim=0)  # MAE-style zero slot for the CLS token
            self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=True)  # fixed; kept in the state dict
            self.rope = None
        else:  # RoPE: no additive table (none in the state dict either, as in timm's Eva)
            self.register_buffer("pos_embed", None)
            self.rope = RopeTables(embed_dim // spec.num_heads)
        rates = torch.linspace(0, spec.drop_path, spec.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, spec.num_heads, spec.mlp_ratio, drop_path=r, backend=spec.attn_backend) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        mean = torch.tensor(list(spec.norm_mean), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(list(spec.norm_std), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        # jepa: trunc-normal(0.02) linears rescaled per depth (I-JEPA / V-JEPA); mae: xavier-uniform (MAE)
        self.apply(xavier_init if spec.init == "mae" else init_weights)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02 if spec.init == "mae" else 1e-6)
        if spec.init == "jepa":
            rescale_residual_branches(self.blocks)

    # ------------------------------------------------------------------ geometry
    def grid(self, image_size: Sequence[int]) -> tuple[int, int]:
        h, w = int(image_size[0]), int(image_size[1])
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def patch_pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """[1, N, D] patch position embeddings for any grid (sin-cos is exact at every size)."""
        if self.rope is not None:
            raise ValueError("a RoPE encoder has no additive position embedding; use block_inputs()")
        if grid == self.grid(self.img_size):
            return self.pos_embed[:, self.num_prefix_tokens :]
        if grid not in self._pos_cache:
            self._pos_cache[grid] = sincos_2d(self.embed_dim, grid).unsqueeze(0)
        return self._pos_cache[grid].to(self.pos_embed)

    # ------------------------------------------------------------------ forward
    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] images with 1 or 3 channels -> normalised model input with `in_chans` channels."""
        x = to_channels(images, self.in_chans)
        return (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    def block_inputs(self, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, dict]:
        """Normalised images [B, C, H, W] -> (tokens [B, P + N or P + K, D], keyword arguments for every block).

        `keep` [B, K] selects patches (the student's context); RoPE rotates each kept token by its own position.
        """
        grid = self.grid(x.shape[-2:])
        x = self.patch_embed(x)  # [B, N, D]
        if self.rope is None:
            x = x + self.patch_pos_embed(grid).to(x.dtype)
        if keep is not None:
            x = gather_tokens(x, keep)  # [B, K, D]
        if self.cls_token is not None:
            cls = self.cls_token if self.rope is not None else self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if self.rope is None:
            return x, {}
        return x, {"rope": self.rope.at(grid, keep, x.device, prefix=self.num_prefix_tokens)}

    def _embed(self, images: Tensor, keep: Tensor | None) -> tuple[Tensor, dict]:
        return self.block_inputs(self.prepare(images), keep)

    def token_layout(self, keep: Tensor | None, keep_valid: Tensor | None,
                     keep_lengths=None) -> TokenLayout | None:
        """The layout of the block inputs (prefix + kept tokens), from the collator's host lengths; None when every
        token is real (the dense kernels run). keep_valid [B, K] bool and keep_lengths [B] host ints come together."""
        if keep_valid is None and keep_lengths is None:
            return None
        if keep is None:
            raise ValueError("keep_valid / keep_lengths describe a kept subset: pass keep too")
        parts = [Segment(self.num_prefix_tokens)] if self.num_prefix_tokens else []
        parts.append(Segment(keep.shape[1], keep_valid, keep_lengths))
        layout = TokenLayout.from_segments(parts, keep.shape[0], keep.device)
        return None if layout.dense else layout

    def forward_features(
        self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None, keep_lengths=None
    ) -> tuple[Tensor | None, Tensor]:
        """(cls [B, D] or None, patch tokens [B, N or K, D]) after the final norm.

        `keep` [B, K] selects patches; a padded selection marks its real slots with `keep_valid` [B, K] (device)
        and counts them per row in `keep_lengths` [B] (host integers, as the mask collator gives them).
        """
        x, kw = self._embed(images, keep)
        layout = self.token_layout(keep, keep_valid, keep_lengths)  # built once, shared by every block
        for blk in self.blocks:
            x = blk(x, layout, **kw)
        x = self.norm(x)
        cls = x[:, 0] if self.num_prefix_tokens else None
        return cls, x[:, self.num_prefix_tokens :]

    def forward(self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None,
                keep_lengths=None) -> Tensor:
        return self.forward_features(images, keep, keep_valid, keep_lengths)[1]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of keeping its activations (timm's method name)."""
        for blk in self.blocks:
            blk.grad_checkpointing = enable

    def get_intermediate_layers(
        self, images: Tensor, n: int = 1, norm: bool = True
    ) -> list[tuple[Tensor, Tensor | None]]:
        """(patch tokens [B, N, D], cls [B, D] or None) for each of the last n blocks, oldest first."""
        if not 1 <= n <= self.depth:
            raise ValueError(f"n must be in [1, {self.depth}], got {n}")
        x, kw = self._embed(images, None)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, **kw)
            if i >= self.depth - n:
                y = self.norm(x) if norm else x
                outs.append((y[:, self.num_prefix_tokens :], y[:, 0] if self.num_prefix_tokens else None))
        return outs

    # ------------------------------------------------------------------ export
    def timm_spec(self) -> tuple[str, dict]:
        """(timm model name, keyword arguments) this state dict loads into exactly: `EncoderSpec.timm_spec`."""
        return self.spec.timm_spec()

    def timm_kwargs(self) -> dict:
        """Arguments for `timm.create_model('vit_*', **kwargs)` that rebuild this architecture."""
        return self.spec.timm_kwargs()


def build_vit(
    arch: str = "vit_tiny", embed_dim: int = 0, depth: int = 0, num_heads: int = 0, **kwargs
) -> VisionTransformer:
    """A `VisionTransformer` of preset `arch`, with width / depth / heads replaced where given (> 0)."""
    return VisionTransformer(arch=arch, **preset_sizes(arch, embed_dim, depth, num_heads), **kwargs)
