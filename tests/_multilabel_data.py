"""A generated multi-label set: 32x32 images with one to three coloured shapes from four classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = {"red_square": (230, 40, 40), "green_disc": (40, 200, 60), "blue_triangle": (50, 80, 240),
          "yellow_bar": (240, 220, 40)}


def _draw(draw: ImageDraw.ImageDraw, name: str, x: int, y: int, size: int) -> None:
    colour = SHAPES[name]
    if name == "red_square":
        draw.rectangle((x, y, x + size, y + size), fill=colour)
    elif name == "green_disc":
        draw.ellipse((x, y, x + size, y + size), fill=colour)
    elif name == "blue_triangle":
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
    else:
        draw.rectangle((x, y + size // 3, x + size, y + 2 * size // 3), fill=colour)


def make_shapes(root: Path, count: int = 300, seed: int = 0, form: str = "csv") -> Path:
    """Write ``count`` images under ``root/images`` and a label file (``labels.csv`` or ``.jsonl``)."""
    rng = np.random.default_rng(seed)
    names = list(SHAPES)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        chosen = sorted(rng.choice(len(names), size=int(rng.integers(1, 4)), replace=False).tolist())
        image = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 60, 3)))
        draw = ImageDraw.Draw(image)
        for k in chosen:
            size = int(rng.integers(8, 14))
            _draw(draw, names[k], int(rng.integers(0, 32 - size)), int(rng.integers(0, 32 - size)), size)
        path = f"images/{i:04d}.png"
        image.save(root / path)
        rows.append((path, [names[k] for k in chosen]))
    if form == "csv":
        label_file = root / "labels.csv"
        label_file.write_text("path,labels\n" + "".join(f"{p},{';'.join(ls)}\n" for p, ls in rows))
    else:
        label_file = root / "labels.jsonl"
        label_file.write_text("".join(json.dumps({"path": p, "labels": ls}) + "\n" for p, ls in rows))
    return label_file
