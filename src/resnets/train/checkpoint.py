"""The run directory: config, metrics, curves, best weights and the resumable training state.

``state.pt`` holds only tensors, dicts, lists and primitives, so it loads with
``torch.load(weights_only=True)``; every file is written atomically, so a kill at any instant
leaves the previous good checkpoint in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnetsError
from ..fileio import atomic_path, atomic_write_text, save_figure

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
WEIGHTS = "weights.safetensors"
STATE = "state.pt"


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    with atomic_path(run_dir / STATE) as tmp:
        torch.save(state, tmp)


def load_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE
    if not path.is_file():
        raise ResnetsError(f"{run_dir} holds no training state ({STATE}); is it a run directory?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign or damaged file: the user's to fix, not a crash
        raise ResnetsError(f"cannot read {path}: {str(error).splitlines()[0]}") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl (one JSON line per epoch) whole, so a resumed run never duplicates lines."""
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(row) + "\n" for row in history))


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """curves.png: loss (train, val) and accuracy (train, val top-1) against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, title in ((ax_loss, ("train_loss", "val_loss"), "loss"),
                            (ax_acc, ("train_acc", "val_top1"), "accuracy (%)")):
        for key in keys:
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, run_dir / CURVES)
