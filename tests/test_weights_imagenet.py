"""The shipped ImageNet class table and decode_predictions."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import ResNet50_Weights

import resnets
from resnets import ResnetsError
from resnets.weights.imagenet import imagenet_classes

# The ten Imagenette classes, as ../shared/data/README.md lists them.
IMAGENETTE = {0: "n01440764", 217: "n02102040", 482: "n02979186", 491: "n03000684", 497: "n03028079",
              566: "n03394916", 569: "n03417042", 571: "n03425413", 574: "n03445777", 701: "n03888257"}


def test_table_has_the_standard_order():
    classes = imagenet_classes()
    assert [c.index for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert {i: classes[i].wnid for i in IMAGENETTE} == IMAGENETTE
    assert [c.name for c in classes] == ResNet50_Weights.IMAGENET1K_V1.meta["categories"]


def test_decode_predictions_like_keras():
    logits = torch.full((2, 1000), -5.0)
    logits[0, 217], logits[0, 0] = 4.0, 3.0
    logits[1, 701] = 9.0
    decoded = resnets.decode_predictions(logits, top=2)
    assert [row[0][:2] for row in decoded] == [("n02102040", "English springer"), ("n03888257", "parachute")]
    assert decoded[0][1][0] == "n01440764"
    assert decoded[0][0][2] == pytest.approx(logits[0].softmax(0)[217].item())
    probs = logits.softmax(1)
    assert resnets.decode_predictions(probs, top=1)[1][0][2] == pytest.approx(probs[1, 701].item())
    with pytest.raises(ResnetsError, match="1000"):
        resnets.decode_predictions(torch.zeros(1, 10))
