"""Training and fine-tuning: ``train(TrainConfig(...)) -> RunResult`` (``resnets train`` on the CLI).

``setup.py`` builds what a run trains with, ``engine.py`` is the loop (``Trainer``) and its
``Callback`` hooks, ``callbacks.py`` the run's callbacks, ``run.py`` the ``train()`` entry point.
"""

from .config import RunResult, TrainConfig
from .inputs import InMemoryData
from .run import train

__all__ = ["InMemoryData", "RunResult", "TrainConfig", "train"]
