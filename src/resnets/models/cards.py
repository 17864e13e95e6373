"""Model cards (name, description, input size, classes, parameters, MACs) of every registered
model, kept in ``cards.json`` beside this module so that ``resnets models`` lists them without
building 34 models. ``tests/test_summary.py`` checks the file against a live computation;
after changing a model, regenerate it with ``python -m resnets.models.cards``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARDS_PATH = Path(__file__).with_name("cards.json")


def cached_cards() -> dict[str, dict[str, Any]]:
    """The stored cards by model name (empty when the file is missing)."""
    if not CARDS_PATH.is_file():
        return {}
    return {card["name"]: card for card in json.loads(CARDS_PATH.read_text())}


def model_cards(names: list[str]) -> list[dict[str, Any]]:
    """Cards of ``names``: stored ones where the file has them, computed for the rest (models
    registered at run time)."""
    from ..summarize import model_card

    stored = cached_cards()
    return [stored[name] if name in stored else model_card(name) for name in names]


def write_cards(path: Path = CARDS_PATH) -> Path:
    """Compute every registered model's card and store them."""
    from ..fileio import atomic_write_text
    from ..summarize import model_card
    from .registry import list_models

    cards = [model_card(name) for name in list_models()]
    atomic_write_text(path, json.dumps(cards, indent=1) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_cards()}")
