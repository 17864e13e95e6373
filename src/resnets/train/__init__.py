"""Training and fine-tuning: ``train(TrainConfig(...)) -> RunResult`` (``resnets train`` on the CLI)."""

from .config import RunResult, TrainConfig
from .inputs import InMemoryData
from .loop import train

__all__ = ["InMemoryData", "RunResult", "TrainConfig", "train"]
