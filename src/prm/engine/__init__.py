"""Training and inference loops, configuration and checkpoints."""

from prm.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from prm.engine.config import PRESETS, TrainConfig, load_config, save_config
from prm.engine.train import train

__all__ = [
    "PRESETS",
    "TrainConfig",
    "load_checkpoint",
    "load_config",
    "load_model",
    "save_checkpoint",
    "save_config",
    "train",
]
