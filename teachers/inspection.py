"""Look inside a teacher checkpoint before training on it: detect its family from the keys, report the
architecture and any key problems (`inspect`), and run a forward pass with token statistics (`verify`)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from teachers.files import is_safetensors, read_checkpoint, safetensors_header
from teachers.frozen import PRESETS, describe_norm
from teachers.loading import PREFIXES, WRAPPER_KEYS, is_state_dict, strip_prefixes, unwrap
from teachers.registry import build, get_family, load
from usjepa.models.checkpoint_io import CheckpointError


def _is_usjepa_export(path: Path) -> bool:
    return is_safetensors(path) and safetensors_header(path)[0].get("format") == "usjepa-encoder"


def detect_family(obj: Any, path: str | Path = "") -> tuple[str, str]:
    """(family, the evidence) for a raw checkpoint object, from its wrappers and key names."""
    if path and _is_usjepa_export(Path(path)):
        return "native", "safetensors with usjepa-encoder metadata"
    if isinstance(obj, dict):
        if isinstance(obj.get("ema_state_dict"), dict):
            return "urfm", "weights under 'ema_state_dict' (URFM release layout)"
        if isinstance(obj.get("target_encoder"), dict):
            return "ijepa", "'target_encoder' entry (I-JEPA training checkpoint)"
        if isinstance(obj.get("config"), dict) and "model" in obj["config"] and is_state_dict(obj.get("model")):
            return "native", "usjepa training checkpoint ('config' + 'model')"
    try:
        state, _ = unwrap(obj, WRAPPER_KEYS, "checkpoint")
    except CheckpointError:
        return "timm", "no state dict found under the usual wrapper keys"
    if any(k.startswith(("teacher.backbone.", "student.backbone.")) for k in state) or (
            any(k.startswith("backbone.") for k in state) and any(k.startswith("dino_head.") for k in state)):
        return "dinov2", "DINOv2 training checkpoint (backbone.* beside dino_head.*)"
    state, _ = strip_prefixes(state, PREFIXES, "checkpoint")
    keys = set(state)
    beit = any(k.endswith((".attn.q_bias", ".gamma_1")) for k in keys)
    if beit or "rel_pos_bias.relative_position_bias_table" in keys:
        return "usfm", "BEiT keys (relative-position bias, q_bias/v_bias or gamma_1)"
    mask = state.get("mask_token")
    if "register_tokens" in keys or (mask is not None and mask.ndim == 2 and any(".ls1.gamma" in k for k in keys)):
        return "dinov2", "DINOv2 release keys (register_tokens, or [1, D] mask_token with LayerScale)"
    if any(k.startswith("decoder_") for k in keys) or "mask_token" in keys:
        return "mae", "MAE pretraining keys (decoder_* / mask_token)"
    if "pos_embed" in keys and "cls_token" not in keys and "blocks.0.attn.qkv.weight" in keys:
        return "ijepa", "ViT keys without a CLS token (I-JEPA encoder)"
    plain_vit = {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= keys and "pos_embed" in keys
    if plain_vit and ("head.weight" in keys or "fc_norm.weight" in keys):
        return "vit", "timm-named ViT keys with a classifier head / fc_norm (TinyUSFM, DeiT, a fine-tuned ViT)"
    if "head.weight" in keys or "fc_norm.weight" in keys:
        return "timm", "classifier head / fc_norm (a timm or fine-tuned model); pass --arch with the timm model name"
    if {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight"} <= keys:
        return "mae", "plain timm ViT keys (an MAE-style encoder); use --family timm --arch NAME for other timm models"
    return "timm", "no family-specific keys; pass --family and --arch"


def detect_file_family(path: str | Path) -> tuple[str, str]:
    """(family, the evidence) for a checkpoint file, reading only what detection needs."""
    return detect_family(read_checkpoint(path, mmap=True), path)


def normalisation(built, family: str, preset: str) -> str:
    """What `preset` does for a built teacher: its statistics and where they come from."""
    if preset == "model":
        if built.norm_stats is None:
            return f"model: the '{family}' family provides no statistics of its own; choose a preset"
        return describe_norm("model", *built.norm_stats, built.norm_source)
    if preset not in PRESETS:
        return f"{preset}: unknown preset; use one of {', '.join(PRESETS)}"
    mean, std = PRESETS[preset] or ((0.0,), (1.0,))
    return describe_norm(preset, mean, std)


def inspect_checkpoint(path: str, family: str = "", **options: Any) -> dict:
    """Everything a user needs to decide how to load `path`; key problems are reported, not raised.

    The architecture facts say which were declared and which inferred (and from what); a guessed head
    count that known models disagree on comes with a warning saying how to set `num_heads`.
    """
    p = Path(path)
    raw = read_checkpoint(p, mmap=True)
    reason = "given"
    if not family:
        family, reason = detect_family(raw, p)
    fam = get_family(family)
    preset = options.get("norm") or fam.default_norm
    info: dict[str, Any] = {"checkpoint": str(p), "size_mb": round(p.stat().st_size / 2**20, 2), "family": family,
                            "detected_by": reason, "preset": preset,
                            "top_level": sorted(map(str, raw))[:20] if isinstance(raw, dict) else type(raw).__name__}
    del raw
    try:
        _, built = build(family, str(p), strict=False, **options)
    except (CheckpointError, ValueError) as e:  # `build` raises only these for a bad file or option
        info.update(loads=False, error=str(e))
        return info
    desc = built.backbone.describe()
    info.update(arch=built.arch, params=desc["params"], embed_dim=desc["embed_dim"], patch_size=desc["patch_size"],
                depth=desc["depth"], in_chans=desc["in_chans"], native_grid=desc["native_grid"],
                prefix_tokens=desc["prefix_tokens"], architecture=built.facts.as_dict(),
                normalisation=normalisation(built, family, preset), warnings=list(built.warnings))
    if built.report is not None:
        info.update(built.report.as_dict())
        info["loads"] = built.report.ok
        if not built.report.ok:
            info["error"] = str(built.report.error(family, fam.drop))
    else:
        info["loads"] = True
    return info


def verify_teacher(family: str, checkpoint: str | None = None, img_size: Sequence[int] = (), batch: int = 4,
                   seed: int = 0, **options: Any) -> dict:
    """Load strictly, run one forward pass on smooth random images, and summarise the tokens."""
    t = load(family, checkpoint, **options)
    if not img_size:
        grid = t.backbone.native_grid or (224 // t.patch_size, 224 // t.patch_size)
        img_size = (grid[0] * t.patch_size, grid[1] * t.patch_size)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 8, 8, generator=g)  # smooth structure plus speckle-like noise
    images = (torch.nn.functional.interpolate(coarse, size=tuple(img_size), mode="bilinear", align_corners=False)
              * 0.7 + 0.3 * torch.rand(batch, 1, *img_size, generator=g)).clamp(0, 1)
    start = time.perf_counter()
    tokens = t(images)  # [B, N, D]
    seconds = time.perf_counter() - start
    flat = tokens.reshape(-1, tokens.shape[-1]).double()
    finite = torch.isfinite(flat)
    sv = torch.linalg.svdvals(flat - flat.mean(0))
    p = sv / sv.sum().clamp_min(1e-12)
    eff_rank = float(torch.exp(-(p * (p + 1e-12).log()).sum()))
    facts = t.arch_facts
    return {"family": family, "arch": t.identity.get("arch"), "img_size": list(img_size),
            "architecture": facts.as_dict() if facts is not None else {},
            "normalisation": t.norm_description, "warnings": list(facts.warnings) if facts is not None else [],
            "tokens_shape": list(tokens.shape), "grid": list(t.grid(img_size)), "finite": bool(finite.all()),
            "mean": float(flat.mean()), "std": float(flat.std()), "min": float(flat.min()), "max": float(flat.max()),
            "token_norm": float(flat.norm(dim=1).mean()), "feature_std": float(flat.std(0).mean()),
            "effective_rank": round(eff_rank, 2), "ms_per_image": round(1000 * seconds / batch, 2),
            "settings": t.extra_repr()}


def format_report(info: dict) -> str:
    """Aligned `key: value` lines; architecture facts one per line with their origin; long key lists shortened."""
    lines = []
    for k, v in info.items():
        if k == "architecture" and isinstance(v, dict):
            lines.append(f"{'architecture':>18}: (declared = set by an option, preset or the file's config; "
                         "inferred = read from tensor shapes or looked up)")
            for name, fact in v.items():
                value = fact["value"]
                value = "x".join(map(str, value)) if isinstance(value, list) else value
                lines.append(f"{name:>18}: {value}  [{fact['origin']}: {fact['evidence']}]")
            continue
        if k == "warnings":
            lines += [f"{'WARNING':>18}: {w}" for w in v]
            continue
        if isinstance(v, list) and len(v) > 12:
            v = v[:12] + [f"... (+{len(v) - 12})"]
        if isinstance(v, float) and math.isfinite(v):
            v = f"{v:.6g}"
        lines.append(f"{k:>18}: {v}")
    return "\n".join(lines)
