"""Evaluation metrics against scikit-learn on a small hand-checkable case."""

from __future__ import annotations

import pytest
import torch

from resnets.evaluate import classification_report
from resnets.metrics import topk_accuracy

metrics = pytest.importorskip("sklearn.metrics")


def test_hand_computed_case():
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = torch.eye(3)[torch.tensor([0, 1, 1, 1, 0])]  # predictions 0,1,1,1,0
    report = classification_report(logits, labels, ["a", "b", "c"])
    assert report.top1 == pytest.approx(60.0)
    assert report.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report.per_class[0]["precision"] == pytest.approx(0.5)
    assert report.per_class[1]["precision"] == pytest.approx(2 / 3)
    assert report.per_class[1]["f1"] == pytest.approx(0.8)
    assert report.per_class[2]["f1"] == 0.0


def test_matches_sklearn():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=generator)
    labels = torch.randint(0, 7, (200,), generator=generator)
    logits[torch.arange(100), labels[:100]] += 2  # better than chance
    report = classification_report(logits, labels, [str(i) for i in range(7)])
    pred = logits.argmax(1).numpy()
    p, r, f, s = metrics.precision_recall_fscore_support(labels.numpy(), pred, labels=range(7), zero_division=0)
    assert [c["precision"] for c in report.per_class] == pytest.approx(p.tolist())
    assert [c["recall"] for c in report.per_class] == pytest.approx(r.tolist())
    assert [c["f1"] for c in report.per_class] == pytest.approx(f.tolist())
    assert report.confusion.tolist() == metrics.confusion_matrix(labels.numpy(), pred).tolist()
    top5 = metrics.top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=range(7))
    assert topk_accuracy(logits, labels, (5,))[0] == pytest.approx(100 * top5)
