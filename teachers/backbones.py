"""Networks a teacher runs block by block: the usjepa ViT, timm's ViT (MAE, URFM, DINOv2, I-JEPA layouts),
timm's BEiT (USFM) and, through `forward_intermediates`, any other timm model.

A backbone takes images already converted to its channels and normalised, and returns the tokens
(prefix tokens first) after the blocks asked for. Position encodings for other grids are computed from
the stored ones, never written back, so the weights stay exactly as loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from teachers.loading import rel_pos_bias


class Backbone(nn.Module):
    """Interface of a teacher network. Subclasses set the attributes and implement `outputs`."""

    embed_dim: int
    patch_size: int
    depth: int
    in_chans: int
    num_prefix_tokens: int
    has_cls: bool
    native_grid: tuple[int, int] | None  # grid its position encoding was stored for (None: any grid is exact)

    def grid(self, image_size: Sequence[int]) -> tuple[int, int]:
        h, w = int(image_size[0]), int(image_size[1])
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the teacher's patch size {self.patch_size}; "
                             f"resize to e.g. {h - h % self.patch_size or self.patch_size}x"
                             f"{w - w % self.patch_size or self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def outputs(self, x: Tensor, indices: Sequence[int], norm: bool) -> list[Tensor]:
        """x [B, C, H, W] (normalised) -> tokens [B, P + N, D] after each block in `indices` (ascending)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"embed_dim": self.embed_dim, "patch_size": self.patch_size, "depth": self.depth,
                "in_chans": self.in_chans, "prefix_tokens": self.num_prefix_tokens,
                "native_grid": list(self.native_grid) if self.native_grid else None,
                "params": sum(p.numel() for p in self.parameters())}


class BlockwiseBackbone(Backbone):
    """A backbone written as embed -> blocks -> final norm; runs only as deep as the deepest block asked for.

    Subclasses hold the wrapped network as `self.net`, with `net.blocks` and `net.norm`.
    """

    net: nn.Module

    def embed(self, x: Tensor) -> tuple[Tensor, dict]:
        """-> (tokens [B, P + N, D] with positions, keyword arguments for every block)."""
        raise NotImplementedError

    def outputs(self, x: Tensor, indices: Sequence[int], norm: bool) -> list[Tensor]:
        tokens, kwargs = self.embed(x)
        wanted = set(indices)
        outs = []
        for i, blk in enumerate(self.net.blocks[: max(indices) + 1]):
            tokens = blk(tokens, **kwargs)
            if i in wanted:
                outs.append(self.net.norm(tokens) if norm else tokens)
        return outs


class _GridCache:
    """Per-(grid, device, dtype) memo of derived position tensors; weights never change, so it never goes stale."""

    def __init__(self) -> None:
        self._store: dict[tuple, Tensor] = {}

    def get(self, key: tuple, like: Tensor, make: Callable[[], Tensor]) -> Tensor:
        full = key + (like.device, like.dtype)
        if full not in self._store:
            with torch.no_grad():
                self._store[full] = make().to(device=like.device, dtype=like.dtype)
        return self._store[full]


def _patchify(patch_embed: nn.Module, x: Tensor) -> Tensor:
    """Patch embedding at any input size: [B, C, H, W] -> [B, N, D] (bypasses timm's fixed-size check)."""
    x = patch_embed.proj(x).flatten(2).transpose(1, 2)
    norm = getattr(patch_embed, "norm", None)
    return norm(x) if norm is not None else x


class UsjepaBackbone(BlockwiseBackbone):
    """`usjepa.models.vit.VisionTransformer` (sin-cos positions, exact at every grid)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.net = vit
        self.embed_dim, self.patch_size, self.depth = vit.embed_dim, vit.patch_size, vit.depth
        self.in_chans, self.num_prefix_tokens = vit.in_chans, vit.num_prefix_tokens
        self.has_cls = vit.cls_token is not None
        self.native_grid = None

    def embed(self, x: Tensor) -> tuple[Tensor, dict]:
        vit = self.net
        grid = self.grid(x.shape[-2:])
        t = vit.patch_embed(x)  # [B, N, D]
        t = t + vit.patch_pos_embed(grid).to(t.dtype)
        if vit.cls_token is not None:
            cls = (vit.cls_token + vit.pos_embed[:, :1]).to(t.dtype).expand(t.shape[0], -1, -1)
            t = torch.cat([cls, t], dim=1)
        return t, {}


class TimmViTBackbone(BlockwiseBackbone):
    """timm `VisionTransformer` with learned or fixed absolute positions, optional CLS and register tokens.

    `resample` maps the stored patch positions [1, h*w, D] from the native grid to another one.
    """

    def __init__(self, model: nn.Module, native_grid: tuple[int, int],
                 resample: Callable[[Tensor, tuple[int, int], tuple[int, int]], Tensor]):
        super().__init__()
        self.net = model
        self.embed_dim = model.embed_dim
        self.patch_size = int(model.patch_embed.proj.kernel_size[0])
        self.depth = len(model.blocks)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.has_cls = model.cls_token is not None
        self.native_grid = tuple(native_grid)
        self._resample = resample
        self._cache = _GridCache()

    def _patch_pos(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        m = self.net
        stored = m.pos_embed if m.no_embed_class else m.pos_embed[:, m.num_prefix_tokens:]
        return self._cache.get(("pos", grid), like, lambda: self._resample(stored, self.native_grid, grid))

    def embed(self, x: Tensor) -> tuple[Tensor, dict]:
        m = self.net
        grid = self.grid(x.shape[-2:])
        t = _patchify(m.patch_embed, x)  # [B, N, D]
        prefix = []
        if m.cls_token is not None:
            prefix.append(m.cls_token.expand(t.shape[0], -1, -1).to(t.dtype))
        if m.reg_token is not None:
            prefix.append(m.reg_token.expand(t.shape[0], -1, -1).to(t.dtype))
        if m.pos_embed is None:
            t = torch.cat(prefix + [t], dim=1)
        elif m.no_embed_class:  # positions for patches only; prefix tokens carry none
            t = torch.cat(prefix + [t + self._patch_pos(grid, t)], dim=1)
        else:  # the stored embedding has slots for the prefix tokens too
            t = torch.cat(prefix + [t], dim=1)
            pre = m.pos_embed[:, : m.num_prefix_tokens].to(t.dtype)
            t = t + torch.cat([pre, self._patch_pos(grid, t)], dim=1)
        return m.norm_pre(t), {}


class BeitBackbone(BlockwiseBackbone):
    """timm `Beit` with a shared relative-position bias (USFM), optional absolute positions and LayerScale."""

    def __init__(self, model: nn.Module, native_grid: tuple[int, int],
                 resample: Callable[[Tensor, tuple[int, int], tuple[int, int]], Tensor]):
        super().__init__()
        if model.rel_pos_bias is None and any(b.attn.relative_position_bias_table is not None for b in model.blocks):
            raise ValueError("BeitBackbone supports the shared relative-position bias only")
        self.net = model
        self.embed_dim = model.embed_dim
        self.patch_size = int(model.patch_embed.proj.kernel_size[0])
        self.depth = len(model.blocks)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.num_prefix_tokens = 1
        self.has_cls = True
        self.native_grid = tuple(native_grid)
        self._resample = resample
        self._cache = _GridCache()

    def embed(self, x: Tensor) -> tuple[Tensor, dict]:
        m = self.net
        grid = self.grid(x.shape[-2:])
        t = _patchify(m.patch_embed, x)  # [B, N, D]
        t = torch.cat([m.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)  # [B, 1 + N, D]
        if m.pos_embed is not None:
            pos = self._cache.get(("pos", grid), t,
                                  lambda: self._resample(m.pos_embed[:, 1:], self.native_grid, grid))
            t = t + torch.cat([m.pos_embed[:, :1].to(t.dtype), pos], dim=1)
        bias = None
        if m.rel_pos_bias is not None:
            table = m.rel_pos_bias.relative_position_bias_table
            bias = self._cache.get(("rel", grid), table, lambda: rel_pos_bias(table, self.native_grid, grid))
        return t, {"shared_rel_pos_bias": bias}


class TimmGenericBackbone(Backbone):
    """Any timm model with `forward_intermediates` (ViT, DeiT, EVA, BEiT, ...), run through timm's own code.

    Other input sizes work when the model was built with `dynamic_img_size=True` (timm resamples then).
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
            raise ValueError(f"timm model '{name}' is not a ViT-style model with `blocks` and forward_intermediates(); "
                             "it cannot give a teacher's patch tokens. Use a ViT, DeiT, EVA or BEiT model")
        self.net = model
        self.name = name
        self.embed_dim = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        pe = model.patch_embed
        ps = pe.patch_size if hasattr(pe, "patch_size") else pe.proj.kernel_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.depth = len(model.blocks)
        self.in_chans = int(pe.proj.in_channels)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.has_cls = getattr(model, "cls_token", None) is not None
        self.native_grid = tuple(pe.grid_size) if hasattr(pe, "grid_size") else None
        self.dynamic = bool(getattr(model, "dynamic_img_size", False))

    def outputs(self, x: Tensor, indices: Sequence[int], norm: bool) -> list[Tensor]:
        grid = self.grid(x.shape[-2:])
        if not self.dynamic and self.native_grid and grid != self.native_grid:
            n = self.native_grid
            size = f"{n[0] * self.patch_size}x{n[1] * self.patch_size}"
            raise ValueError(f"timm model '{self.name}' was built for {size} "
                             f"inputs and cannot resample its positions; feed that size or set the `img_size` option")
        outs = self.net.forward_intermediates(x, indices=list(indices), norm=norm, stop_early=True,
                                                output_fmt="NLC", intermediates_only=True,
                                                return_prefix_tokens=self.num_prefix_tokens > 0)
        if self.num_prefix_tokens:
            return [torch.cat([prefix, patches], dim=1) for patches, prefix in outs]
        return list(outs)
