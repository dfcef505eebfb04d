"""`FrozenTeacher`: a loaded backbone wrapped so that it can never train, with its own input handling.

It takes images in [0, 1] with 1 or 3 channels at any size that is a multiple of its patch, converts
channels, normalises with its preset, and returns patch tokens (prefix tokens removed) from the chosen
layer or the mean of the last k layers, optionally through the final norm. It stays in eval mode
whatever `.train()` says, none of its parameters requires grad, and it runs under no_grad, so a student's
backward pass can never reach it. `precision="auto"` runs it under bf16 autocast wherever the device has bf16
units (CUDA GPUs with bf16, CPUs with AVX512-BF16 / AMX): a frozen teacher needs no fp32 master weights, and its
targets come back as float32 either way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from teachers.backbones import Backbone
from teachers.catalog import GRID_RESAMPLE, NORM_PRESETS, PRECISIONS
from usjepa.models.layers import gather_tokens
from usjepa.models.vit import to_channels

PRESETS = NORM_PRESETS  # input normalisation presets (teachers.catalog holds the names)


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16_units() -> bool:
    """AVX512-BF16 / AMX-BF16 (x86) or BF16 (Arm) in the CPU flags. oneDNN also runs bf16 on plain AVX512 by
    emulation, which is no faster than fp32, so its own check is used only where the flags cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(line.split(":", 1)[-1].split()))
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16_units()
    return False


def _stats(values: Sequence[float], channels: int) -> Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.numel() not in (1, channels):
        if channels == 1:  # an RGB preset on a 1-channel teacher: use the mean over channels
            t = t.mean().view(1)
        else:
            raise ValueError(f"normalisation statistics {list(values)} have {t.numel()} values for {channels} channels")
    return t.expand(channels).clone().view(1, channels, 1, 1)


def describe_norm(norm: str, mean: Sequence[float], std: Sequence[float], source: str = "") -> str:
    """Which input statistics a teacher uses and where they came from (for the log and `teacher inspect`)."""
    if norm == "zscore":
        return "zscore: each image's own mean and std over all pixels and channels"
    if norm == "none":
        return "none: images enter in [0, 1]"
    stats = f"mean {tuple(round(float(v), 6) for v in mean)}, std {tuple(round(float(v), 6) for v in std)}"
    where = source or ("the model" if norm == "model" else f"the '{norm}' preset")
    return f"{norm}: {stats} from {where}"


class FrozenTeacher(nn.Module):
    """A teacher encoder: `forward(images) -> [B, N, D]` patch tokens on its own patch grid; never trains."""

    def __init__(self, backbone: Backbone, *, family: str, norm: str, layer: int = -1, mean_last_k: int = 1,
                 final_norm: bool = True, grid_resample: str = "auto", norm_stats: tuple | None = None,
                 identity: dict | None = None, precision: str = "auto", norm_source: str = "",
                 arch_facts: object | None = None):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.embed_dim = int(backbone.embed_dim)
        self.patch_size = int(backbone.patch_size)
        self.in_chans = int(backbone.in_chans)
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        depth = int(backbone.depth)
        if not -depth <= layer < depth:
            raise ValueError(f"teacher layer={layer} is out of range for a {depth}-block {family} teacher "
                             f"(use -1 for the last block, or 0..{depth - 1})")
        self.layer = layer % depth
        if not 1 <= mean_last_k <= self.layer + 1:
            raise ValueError(f"mean_last_k={mean_last_k} needs {mean_last_k} blocks up to block {self.layer}; "
                             f"use 1..{self.layer + 1}")
        self.mean_last_k = int(mean_last_k)
        self.final_norm = bool(final_norm)
        if grid_resample not in GRID_RESAMPLE:
            raise ValueError(f"grid_resample='{grid_resample}' is not one of {', '.join(GRID_RESAMPLE)}")
        self.grid_resample = grid_resample
        if precision not in PRECISIONS:
            raise ValueError(f"teacher precision='{precision}' is not one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self.norm = norm
        if norm == "model":  # the model's own statistics (usjepa encoder config, timm pretrained_cfg)
            if norm_stats is None:
                raise ValueError(f"norm='model' needs the model's own mean/std, which the {family} family does not "
                                 f"provide; use one of {', '.join(PRESETS)}")
            mean, std = norm_stats
        elif norm in PRESETS:
            mean, std = PRESETS[norm] or ((0.0,), (1.0,))
        else:
            raise ValueError(f"unknown normalisation preset '{norm}'; use one of {', '.join(PRESETS)}"
                             f"{' or model' if norm_stats is not None else ''}")
        self.norm_description = describe_norm(norm, mean, std, norm_source)
        self.arch_facts = arch_facts
        self.register_buffer("input_mean", _stats(mean, self.in_chans), persistent=False)
        self.register_buffer("input_std", _stats(std, self.in_chans), persistent=False)
        self.identity = dict(identity or {}, family=family, norm=norm, layer=self.layer, mean_last_k=self.mean_last_k,
                             final_norm=self.final_norm, grid_resample=grid_resample, precision=precision)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------ frozen-ness
    def train(self, mode: bool = True) -> FrozenTeacher:
        """Always eval: `teacher.train()` (or `parent.train()`) leaves dropout, drop-path and norms frozen."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenTeacher:
        if requires_grad:
            raise RuntimeError("a FrozenTeacher never trains; its parameters cannot require grad")
        return self

    # ------------------------------------------------------------------ geometry
    def grid(self, image_size: Sequence[int]) -> tuple[int, int]:
        """Patch grid (h, w) the teacher produces for an image of size (H, W)."""
        return self.backbone.grid(image_size)

    # ------------------------------------------------------------------ input handling
    def prepare(self, images: Tensor) -> Tensor:
        """[B, C, H, W] in [0, 1], C = 1 or 3 -> the backbone's channels, normalised with the preset."""
        if images.ndim != 4:
            raise ValueError(f"teacher input must be [B, C, H, W], got shape {tuple(images.shape)}")
        x = to_channels(images.float(), self.in_chans)
        if self.norm == "zscore":  # per image, over all pixels and channels (USFM's feature extractor)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            return (x - mean) / std
        if self.norm == "none":
            return x
        return (x - self.input_mean) / self.input_std

    def runs_bf16(self, device: torch.device) -> bool:
        """Whether forward passes on `device` use bf16 autocast (precision bf16, or auto on a bf16-capable device)."""
        if self.precision == "fp32":
            return False
        if self.precision == "bf16":
            return True
        return bf16_supported(device)

    def _autocast(self, x: Tensor):
        dev = x.device
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type in ("cuda", "cpu")
                              and self.runs_bf16(dev))

    # ------------------------------------------------------------------ tokens
    @torch.no_grad()
    def forward(self, images: Tensor, keep: Tensor | None = None) -> Tensor:
        """Patch tokens [B, N, D] (float32) on the native grid; `keep` [B, K] gathers K of them after the full pass."""
        x = self.prepare(images)
        first = self.layer - self.mean_last_k + 1
        with self._autocast(x):
            outs = self.backbone.outputs(x, list(range(first, self.layer + 1)), norm=self.final_norm)
        p = self.num_prefix_tokens
        tokens = torch.stack([o[:, p:].float() for o in outs]).mean(0) if len(outs) > 1 else outs[0][:, p:].float()
        return gather_tokens(tokens, keep) if keep is not None else tokens  # [B, N or K, D]

    @torch.no_grad()
    def tokens_on_grid(self, images: Tensor, grid: Sequence[int]) -> Tensor:
        """Patch tokens resampled to another patch grid (h, w): [B, h*w, D] (e.g. patch-14 teacher, patch-16 student).

        `grid_resample`: area averaging when the grid shrinks, bilinear otherwise (`auto`), or one of them always.
        """
        tokens = self.forward(images)  # [B, n, D]
        gh, gw = self.grid(images.shape[-2:])
        h, w = int(grid[0]), int(grid[1])
        if (gh, gw) == (h, w):
            return tokens
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, gh, gw)  # [B, D, gh, gw]
        mode = self.grid_resample
        if mode == "auto":
            mode = "area" if h <= gh and w <= gw else "bilinear"
        if mode == "area":
            x = F.adaptive_avg_pool2d(x, (h, w))
        else:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x.flatten(2).transpose(1, 2).contiguous()  # [B, h*w, D]

    @torch.no_grad()
    def get_intermediate_layers(self, images: Tensor, n: int = 1,
                                norm: bool = True) -> list[tuple[Tensor, Tensor | None]]:
        """(patch tokens [B, N, D], cls [B, D] or None) of the last n blocks, oldest first (for probing)."""
        depth = self.backbone.depth
        if not 1 <= n <= depth:
            raise ValueError(f"n must be in [1, {depth}], got {n}")
        x = self.prepare(images)
        with self._autocast(x):
            outs = self.backbone.outputs(x, list(range(depth - n, depth)), norm=norm)
        p = self.num_prefix_tokens
        return [(o[:, p:].float(), o[:, 0].float() if self.backbone.has_cls else None) for o in outs]

    def describe(self) -> dict:
        """Architecture and settings, for `usjepa teacher inspect` and logs."""
        return dict(self.backbone.describe(), family=self.family, norm=self.norm, layer=self.layer,
                    mean_last_k=self.mean_last_k, final_norm=self.final_norm, normalisation=self.norm_description)

    def extra_repr(self) -> str:
        return (f"family={self.family}, embed_dim={self.embed_dim}, patch_size={self.patch_size}, norm={self.norm}, "
                f"layer={self.layer}, mean_last_k={self.mean_last_k}, final_norm={self.final_norm}")
