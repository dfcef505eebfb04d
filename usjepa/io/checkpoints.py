"""Checkpoint and encoder files: reading safely (weights_only / safetensors), exporting and reloading an encoder.

The file side of `usjepa.models` (which holds no file I/O beyond state dicts): an encoder's architecture is its
`EncoderSpec`, written as the `model_config` metadata of `encoder.safetensors` (`EncoderSpec.to_dict`) and read
back from it, or from a training checkpoint's `config.model`, with `EncoderSpec.from_dict`, which reads every form
usjepa has written. `usjepa.models.export_encoder` / `load_encoder_checkpoint` and
`usjepa.models.checkpoint_io.safe_load` / `export_encoder` stay importable under those names.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from usjepa.io.atomic import atomic_write
from usjepa.io.digest import DIGEST_KEY, digest_problem
from usjepa.models.checkpoint_io import CheckpointError, strict_load
from usjepa.models.encoder_spec import EncoderSpec
from usjepa.models.vit import VisionTransformer

ENCODER_FORMAT = "usjepa-encoder"  # the `format` metadata of an exported encoder


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


def encoder_metadata(spec: EncoderSpec, timm_spec: tuple[str, dict]) -> dict[str, str]:
    """The safetensors metadata of an exported encoder: its spec, and the timm call its weights load into."""
    timm_name, timm_kw = timm_spec
    return {
        "format": ENCODER_FORMAT,
        "timm_model": timm_name,
        "timm_kwargs": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in timm_kw.items()}),
        "model_config": json.dumps(spec.to_dict()),
    }


def export_encoder(encoder: VisionTransformer, path: str | Path, model_cfg: Any = None,
                   state: dict | None = None) -> Path:
    """Write encoder weights (timm key names) as safetensors with the architecture in the metadata, atomically.

    The metadata names the timm model and arguments the weights load into strictly (`timm_model`,
    `timm_kwargs`): timm's ViT for sin-cos encoders, timm's Eva (AttentionRope) for RoPE encoders, and the
    encoder's spec (`model_config`): the one `model_cfg` (the run's `model:` section) declares when given, else
    the encoder's own. `state`: a gathered state dict, for a sharded encoder.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = EncoderSpec.from_encoder(encoder)
    spec = EncoderSpec.from_model_config(model_cfg) if model_cfg else own
    state = encoder.state_dict() if state is None else state
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_write(path, mode=None) as tmp:  # the user's umask, not save_file's private 0600
        save_file(tensors, str(tmp), metadata=encoder_metadata(spec, own.timm_spec()))
    return path


def declared_spec(model_config: Any, source: str) -> EncoderSpec:
    """The spec a file's `model_config` / `config.model` declares; a CheckpointError naming the file if unusable."""
    try:
        return EncoderSpec.from_dict(model_config)
    except ValueError as e:
        raise CheckpointError(f"{source}: its model config cannot be rebuilt ({e}); export or save it again") from None


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
        if meta.get("format") != ENCODER_FORMAT:
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
    spec = declared_spec(mc, f"'{path}'")
    # the weights come from the file: build as the loader always has (jepa init, so the caller's RNG stream moves
    # as before; no stochastic depth), with the attention kernel asked for
    spec = spec.replace(init="jepa", drop_path=0.0, attn_backend=attn_backend or spec.attn_backend)
    enc = spec.build()
    strict_load(enc, state, f"encoder weights in '{path}'")
    return enc.eval()
