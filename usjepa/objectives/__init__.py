"""Training objectives: SALT (frozen teacher), MAE (pixel teacher, stage 1) and EMA-JEPA (I-JEPA baseline).

`usjepa.objectives.spec` registers them (the one list of names); the classes below load on first use.
"""

from __future__ import annotations

from usjepa.lazy import lazy_exports

_EXPORTS = {
    "Objective": "usjepa.objectives.base",
    "masked_token_loss": "usjepa.objectives.base",
    "SALT": "usjepa.objectives.salt",
    "MAE": "usjepa.objectives.mae",
    "EMAJEPA": "usjepa.objectives.ema_jepa",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
