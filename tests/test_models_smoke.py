"""Every registered model, built and run forward and backward at a small input (as timm's smoke tests do).

A model that fails to build, returns the wrong shape, or leaves a parameter without a finite
gradient fails here in a second or two, long before the slower full-resolution comparisons run.
Inputs are 32x32 (the smallest an ImageNet net accepts: it downsamples by 32), batch 2 (so
training-mode BatchNorm has more than one value per channel), one thread per test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resnets
from resnets.models.cards import cached_cards

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE, BATCH, CLASSES = 32, 2, 7
# Backward of the 9 nets over 60 M parameters (the 152-layer nets, the ResNeXt-101s, the wide
# nets) costs seconds each on a 2-core machine; their blocks and stems are the code that
# resnet101, resnet101c/d, preact_resnet101 and resnext50_32x4d run backward through here.
# They still build and run forward.
FORWARD_ONLY = {name for name, card in cached_cards().items() if card["params"] > 60e6}


@pytest.mark.parametrize("name", resnets.list_models())
def test_builds_and_runs_forward_and_backward_at_a_small_input(name):
    torch.manual_seed(0)
    model = resnets.create_model(name, num_classes=CLASSES)
    assert model.min_input_size <= SIDE, f"{name} needs {model.min_input_size} px; raise SIDE"
    images = torch.randn(BATCH, 3, SIDE, SIDE)

    with torch.no_grad():  # eval: the feature map, pooled features and logits
        features = model.eval().forward_features(images)
        pooled = model.forward_head(features, pre_logits=True)
    assert features.shape[:2] == (BATCH, model.num_features) and pooled.shape == (BATCH, model.num_features)

    model.train()
    with torch.no_grad() if name in FORWARD_ONLY else torch.enable_grad():
        logits = model(images)
    assert logits.shape == (BATCH, CLASSES) and torch.isfinite(logits).all()
    if name in FORWARD_ONLY:
        return
    nn.functional.cross_entropy(logits, torch.arange(BATCH)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    assert model.fc.weight.grad.abs().sum() > 0
