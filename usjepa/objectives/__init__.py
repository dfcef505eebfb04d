"""Training objectives: SALT (frozen teacher), MAE (pixel teacher, stage 1) and EMA-JEPA (I-JEPA baseline)."""

from usjepa.objectives.base import Objective, masked_token_loss
from usjepa.objectives.ema_jepa import EMAJEPA
from usjepa.objectives.mae import MAE
from usjepa.objectives.salt import SALT

__all__ = ["Objective", "SALT", "MAE", "EMAJEPA", "masked_token_loss"]
