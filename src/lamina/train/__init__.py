"""Pretraining: one typed config and its recipes, the training loop, optimizers and schedules,
data parallelism under torchrun, checkpoints that resume exactly, and the accounting of compute,
energy and the data each checkpoint actually consumed."""

from .config import TrainConfig, load_recipe, recipe_path
from .loop import RunResult, train

__all__ = ["TrainConfig", "load_recipe", "recipe_path", "RunResult", "train"]
