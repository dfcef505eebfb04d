"""Loading a state dict strictly (every missing, unexpected or mis-shaped key named) and `CheckpointError`.

`models` holds no file I/O beyond state dicts: reading checkpoint files and exporting / reloading encoders live
in `usjepa.io.checkpoints` (still importable from here by their old names: `safe_load`, `export_encoder`,
`load_encoder_checkpoint`)."""

from __future__ import annotations

from torch import nn

from usjepa.errors import UsjepaError


class CheckpointError(UsjepaError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the file and the keys."""


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


_MOVED = ("safe_load", "export_encoder", "load_encoder_checkpoint")


def __getattr__(name: str):
    """The file functions that used to live here, now in `usjepa.io.checkpoints` (imported on first use: that
    module builds on this one)."""
    if name in _MOVED:
        from usjepa.io import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
