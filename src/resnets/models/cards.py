"""Model cards (name, description, input size, classes, parameters, MACs) of every registered
model, kept in ``cards.json`` beside this module so that ``resnets models`` lists them without
building 34 models. ``tests/test_summary.py`` checks the file against a live computation
(:func:`resnets.summarize.model_card`); after changing a model, run ``python -m resnets.summarize``.
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
