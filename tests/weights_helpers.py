"""Helpers shared by the weights tests: randomised models and a real photo."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from PIL import Image

from _data_helpers import shared_file



def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine terms, and a small head, so that a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
        head = getattr(model, "fc", None)
        if isinstance(head, torch.nn.Linear):
            head.weight.mul_(0.05)
    return model.eval()


def real_photo() -> Image.Image:
    """One 224x224 Imagenette photo (a tench), or skip when the shared data is absent."""
    with zipfile.ZipFile(shared_file("imagenette-224-train.zip", "a real photo")) as zf:
        name = next(n for n in sorted(zf.namelist()) if n.startswith("train/n01440764/") and n.endswith(".JPEG"))
        return Image.open(io.BytesIO(zf.read(name))).convert("RGB")


def top5(logits: torch.Tensor) -> list[list[int]]:
    return logits.topk(5, dim=1).indices.tolist()
