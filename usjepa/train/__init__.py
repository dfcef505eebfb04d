"""Training: the loop, checkpoints, schedules, the resumable sampler and the distributed environment."""

from usjepa.train.loop import TrainingError, TrainResult, run_training

__all__ = ["run_training", "TrainResult", "TrainingError"]
