"""Training and checkpoints: the run's settings (config), the loop (loop), AdamW and its
schedule (optim), what is measured (monitoring) and drawn (plots), the checkpoint folder
(checkpoint), and training on several processes (distributed, expert_parallel)."""

from .config import TRAIN_PRESETS, TrainConfig
from .loop import TrainResult, evaluate, train

__all__ = ["TRAIN_PRESETS", "TrainConfig", "TrainResult", "evaluate", "train"]
