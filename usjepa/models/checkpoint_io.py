"""Reading and exporting encoder weights safely (weights_only / safetensors) and strictly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usjepa.errors import UsjepaError
from usjepa.io.atomic import atomic_write
from usjepa.io.digest import DIGEST_KEY, digest_problem
from usjepa.models.vit import VisionTransformer, build_vit


class CheckpointError(UsjepaError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


def safe_load(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` or safetensors; anything needing arbitrary pickled objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes); it was probably cut off while being written")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load '{path}': it needs arbitrary pickled Python objects, which could run code "
            f"({str(e).splitlines()[0]}). Re-save its tensors with torch.save(state_dict) or safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or truncated: {e}") from None


def strict_load(
    module: nn.Module,
    state: dict,
    source: str,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
) -> None:
    """load_state_dict that names every missing, unexpected or mis-shaped key; nothing is silently re-initialised."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allow_missing or ("\0",))]
    unexpected = [k for k in state if k not in own and not k.startswith(allow_unexpected or ("\0",))]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(
                f"missing keys ({len(missing)}): {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}"
            )
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:12])}"
                f"{' ...' if len(unexpected) > 12 else ''}"
            )
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:8]))
        raise CheckpointError(f"{source} does not match the model: " + " | ".join(parts))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def export_encoder(encoder: VisionTransformer, path: str | Path, model_cfg: dict | None = None,
                   state: dict | None = None) -> Path:
    """Write encoder weights (timm key names) as safetensors with the architecture in the metadata, atomically.

    The metadata names the timm model and arguments the weights load into strictly (`timm_model`,
    `timm_kwargs`): timm's ViT for sin-cos encoders, timm's Eva (AttentionRope) for RoPE encoders.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not model_cfg:
        model_cfg = encoder_model_config(encoder)
    timm_name, timm_kw = encoder.timm_spec()
    meta = {
        "format": "usjepa-encoder",
        "timm_model": timm_name,
        "timm_kwargs": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in timm_kw.items()}),
        "model_config": json.dumps(model_cfg or {}),
    }
    state = encoder.state_dict() if state is None else state  # `state`: a gathered one, for a sharded encoder
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_write(path, mode=None) as tmp:  # the user's umask, not save_file's private 0600
        save_file(tensors, str(tmp), metadata=meta)
    return path


def encoder_model_config(encoder: VisionTransformer) -> dict:
    """The `model:` config fields that rebuild this encoder exactly."""
    return dict(arch="vit_tiny", embed_dim=encoder.embed_dim, depth=encoder.depth, num_heads=encoder.num_heads,
                img_size=list(encoder.img_size), patch_size=encoder.patch_size, in_chans=encoder.in_chans,
                cls_token=bool(encoder.num_prefix_tokens), norm_mean=encoder.input_mean.flatten().tolist(),
                norm_std=encoder.input_std.flatten().tolist(), pos_embed=encoder.pos_embed_type)


def _encoder_from_model_config(mc: dict) -> VisionTransformer:
    return build_vit(
        arch=mc.get("arch", "vit_tiny"),
        embed_dim=mc.get("embed_dim", 0),
        depth=mc.get("depth", 0),
        num_heads=mc.get("num_heads", 0),
        img_size=tuple(mc["img_size"]),
        patch_size=mc["patch_size"],
        in_chans=mc["in_chans"],
        cls_token=mc["cls_token"],
        attn_backend=mc.get("attn_backend", "auto"),
        norm_mean=tuple(mc.get("norm_mean", (0.5,))),
        norm_std=tuple(mc.get("norm_std", (0.25,))),
        pos_embed=mc.get("pos_embed", "sincos"),  # files written before RoPE existed are sin-cos
    )


def load_encoder_checkpoint(
    path: str | Path, which: str = "model", attn_backend: str | None = None
) -> VisionTransformer:
    """A usjepa encoder from a training checkpoint (latest.pt, best.pt, step_N.pt) or an exported file.

    `which` picks the network inside a training checkpoint: "model" (student / MAE encoder) or
    "target_encoder" (the EMA encoder of an ema_jepa run).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "usjepa-encoder":
            raise CheckpointError(
                f"'{path}' is not a usjepa encoder export (no usjepa metadata); load it through "
                "the teacher zoo instead: teachers.load('timm', ...)"
            )
        mc = json.loads(meta["model_config"])
        state = safe_load(path)
    else:
        ckpt = safe_load(path)
        if not isinstance(ckpt, dict) or "config" not in ckpt or which not in ckpt:
            keys = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(
                f"'{path}' is not a usjepa checkpoint with a '{which}' entry and a config "
                f"(top-level keys: {keys}); for other formats use teachers.load(family, path)"
            )
        problem = digest_problem(ckpt) if DIGEST_KEY in ckpt else None
        if problem:
            raise CheckpointError(f"'{path}' is damaged: {problem}")
        mc = ckpt["config"]["model"]
        state = ckpt[which]
    if attn_backend:
        mc = dict(mc, attn_backend=attn_backend)
    enc = _encoder_from_model_config(mc)
    strict_load(enc, state, f"encoder weights in '{path}'")
    return enc.eval()
