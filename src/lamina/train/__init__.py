"""Pretraining: one typed config and its recipes, the training loop, optimizers and schedules,
data parallelism under torchrun, checkpoints that resume exactly, and the accounting of compute,
energy and the data each checkpoint actually consumed."""

from .config import TrainConfig, train_recipe
from .loop import RunResult, train

__all__ = ["TrainConfig", "train_recipe", "RunResult", "train"]
