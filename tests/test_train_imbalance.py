"""Imbalanced classes: --class-weights, --sampler balanced, and what `evaluate` reports about them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _train_fixtures import tiny_config, write_folder_dataset
from resnets.data import BatchAugment, TensorLoader, make_dataloader, open_dataset
from resnets.data.sampling import EpochPlan, PlanSampler, occurrence_ids
from resnets.errors import ResnetsError
from resnets.evaluate import classification_report
from resnets.preprocessing import Preprocessing
from resnets.train import InMemoryData, train
from resnets.train.checkpoint import load_state
from resnets.train.class_weights import class_weights
from resnets.factory import load_model

NAMES = ["a", "b", "rare"]


def _patches(counts: list[int], seed: int, size: int = 8, noise: float = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy colour patches; class k has counts[k] images, the three colours overlap under the noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    base = torch.tensor([(150, 90, 90), (90, 150, 90), (90, 90, 150)], dtype=torch.float32)[labels].view(-1, 3, 1, 1)
    images = base + torch.randn(len(labels), 3, size, size, generator=generator) * noise
    return images.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture(scope="module")
def imbalanced() -> InMemoryData:
    (xt, yt), (xv, yv) = _patches([200, 200, 10], seed=0), _patches([50, 50, 50], seed=1)  # "rare": 20x rarer
    return InMemoryData(xt, yt, xv, yv, NAMES)


def _report(weights: Path, data: InMemoryData):
    model = load_model(str(weights)).eval()
    with torch.no_grad():
        logits = model(BatchAugment("none", model.preprocessing, train=False)(data.val_images))
    return classification_report(logits, data.val_labels, NAMES)


def test_auto_class_weights_raise_the_rare_class_recall(tmp_path, imbalanced, one_thread):
    options = dict(epochs=3, batch_size=32, augment="none", img_size=8)
    plain = _report(train(tiny_config(tmp_path / "plain", **options), data=imbalanced).weights, imbalanced)
    weighted = _report(train(tiny_config(tmp_path / "weighted", class_weights="auto", **options),
                             data=imbalanced).weights, imbalanced)
    recall = {name: (plain.per_class[2]["recall"], weighted.per_class[2]["recall"]) for name in ["rare"]}
    assert recall["rare"][1] >= recall["rare"][0] + 0.5, recall
    assert "rare" in plain.low_recall and "rare" not in weighted.low_recall
    assert weighted.balanced_accuracy > plain.balanced_accuracy and weighted.macro_f1 > plain.macro_f1


def test_class_weight_values(tmp_path):
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
    auto = class_weights("auto", labels, NAMES)
    assert torch.allclose(auto, torch.tensor([1 / 30, 1 / 10, 1 / 20]) / (11 / 60 / 3))  # mean 1
    effective = class_weights("effective", labels, NAMES, beta=0.9)
    expected = torch.tensor([(1 - 0.9) / (1 - 0.9 ** n) for n in (30, 10, 20)])
    assert torch.allclose(effective, expected * 3 / expected.sum())
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"rare": 4, "a": 1}))
    assert torch.allclose(class_weights(str(path), labels, NAMES), torch.tensor([0.5, 0.5, 2.0]))
    path.write_text(json.dumps({"zebra": 2}))
    with pytest.raises(ResnetsError, match="zebra"):
        class_weights(str(path), labels, NAMES)
    assert class_weights(None, labels, NAMES) is None


def test_balanced_accuracy_and_macro_f1():
    logits = torch.eye(3)[torch.tensor([0, 0, 0, 0, 1, 0])] * 5  # class 1: recall 1/2, class 2: absent
    report = classification_report(logits, torch.tensor([0, 0, 0, 0, 1, 1]), NAMES)
    assert report.balanced_accuracy == pytest.approx(100 * (1 + 0.5) / 2)
    f1_a = 2 * (4 / 5) * 1 / (4 / 5 + 1)
    f1_b = 2 * 1 * 0.5 / 1.5
    assert report.macro_f1 == pytest.approx((f1_a + f1_b) / 2)
    assert report.low_recall == [] and report.to_dict()["low_recall"] == []
    report.recall_floor = 0.6
    assert report.low_recall == ["b"]


def test_occurrence_ids_number_repeated_draws():
    assert occurrence_ids(torch.tensor([3, 1, 3, 3, 0, 1]), 5).tolist() == [3, 1, 8, 13, 0, 6]


def test_balanced_plan_draws_every_class_equally_and_depends_on_seed_and_epoch():
    labels = [0] * 90 + [1] * 4 + [2] * 26
    plan = EpochPlan.of(labels, seed=3, sampler="balanced")
    order = plan.order(0)
    counts = torch.bincount(torch.tensor(labels)[order % len(labels)])
    assert counts.tolist() == [40, 40, 40] and len(plan) == 120
    assert torch.equal(order, EpochPlan.of(labels, seed=3, sampler="balanced").order(0))
    assert not torch.equal(order, plan.order(1))
    assert len(set((order % len(labels)).tolist()) & set(range(90, 94))) == 4  # every rare image drawn
    assert len(set(order.tolist())) == len(order)  # each draw its own augmentation seed


def test_balanced_tensor_loader_shards_the_plan_over_ranks():
    labels = torch.tensor([0] * 50 + [1] * 6 + [2] * 16)
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    plan = EpochPlan.of(labels, seed=0, sampler="balanced")
    seen = []
    for rank in (0, 1):
        loader = TensorLoader(images, labels, 6, seed=0, rank=rank, world_size=2, plan=plan)
        loader.set_epoch(2)
        seen.append(torch.cat([y for _, y in loader]))
    both = torch.cat(seen)
    assert len(both) == 72 and torch.bincount(both).tolist() == [24, 24, 24]


def test_streaming_loader_draws_the_same_balanced_classes(tmp_path):
    root = write_folder_dataset(tmp_path / "d", {"train": 6}, size=8)
    dataset = open_dataset(str(root / "train"))
    labels = list(dataset.targets)
    labels_kept = [t for t in labels if t != 2] + [2]  # one class left with one image: 6, 6, 1
    subset_items = [i for i, t in enumerate(labels) if t != 2] + [labels.index(2)]
    subset = torch.utils.data.Subset(dataset, subset_items)
    subset.targets, subset.describe = labels_kept, lambda i: str(i)
    plan = EpochPlan.of(labels_kept, seed=1, sampler="balanced")
    loader = make_dataloader(subset, "cifar", Preprocessing(input_size=8, resize_size=8), train=True,
                             batch_size=3, workers=0, seed=1, plan=plan)
    loader.sampler.set_epoch(0)
    drawn = torch.cat([y for _, y in loader])
    assert torch.bincount(drawn).tolist() == [4, 4, 4]
    shards = [PlanSampler(plan, rank, 2) for rank in (0, 1)]
    for sampler in shards:
        sampler.set_epoch(3)
    ranks = [list(sampler) for sampler in shards]
    assert len(ranks[0]) == len(ranks[1]) == len(shards[0]) == 6
    assert sorted(ranks[0] + ranks[1]) == sorted(plan.order(3).tolist())


def test_balanced_sampler_resumes_bitwise(tmp_path, imbalanced, one_thread):
    options = dict(epochs=3, batch_size=16, augment="cifar", img_size=8, sampler="balanced", aug_repeats=2,
                   class_weights="effective")
    full = train(tiny_config(tmp_path / "full", **options), data=imbalanced)
    train(tiny_config(tmp_path / "split", **options), data=imbalanced, stop_after=1)
    resumed = train(tiny_config(tmp_path / "x", resume=str(tmp_path / "split")), data=imbalanced)
    a, b = load_state(tmp_path / "full")["model"], load_state(tmp_path / "split")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 4}, size=8)


@pytest.mark.parametrize("flags, needle", [
    (["--class-weights", "nonsense"], "--class-weights"),
    (["--aug-repeats", "0"], "--aug-repeats"),
    (["--sampler", "uniform"], "--sampler"),
    (["--augment-policy", "best"], "--augment-policy"),
    (["--random-erasing", "1.5"], "--random-erasing"),
])
def test_bad_values_are_one_line(tmp_path, run_cli, folder, flags, needle):
    code, out, err = run_cli("train", "--data", folder, "--model", "resnet20", "--out", tmp_path / "r",
                             "--epochs", "1", "--no-progress", *flags)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_weights_file_naming_an_unknown_class_is_one_line(tmp_path, run_cli, folder):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"class0": 1, "no-such-class": 3}))
    code, out, err = run_cli("train", "--data", folder, "--model", "resnet20", "--out", tmp_path / "r",
                             "--epochs", "1", "--no-progress", "--class-weights", weights, "--img-size", "8")
    assert code == 2 and "no-such-class" in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluate_prints_balanced_accuracy_and_low_recall(tmp_path, run_cli, folder, one_thread):
    run = tmp_path / "run"
    assert run_cli("train", "--data", folder, "--model", "resnet20", "--out", run, "--epochs", "1",
                   "--no-progress", "--img-size", "8", "--batch-size", "4", "--device", "cpu")[0] == 0
    code, out, err = run_cli("evaluate", run, "--data", folder, "--recall-floor", "1.0", "--split", "all")
    assert code == 0 and "balanced accuracy" in out and "macro-F1" in out
    code, out, _ = run_cli("evaluate", run, "--data", folder, "--recall-floor", "1.0", "--split", "all", "--json")
    report = json.loads(out)
    assert report["recall_floor"] == 1.0 and 0 <= report["balanced_accuracy"] <= 100
    assert report["low_recall"] == [row["class"] for row in report["per_class"] if row["recall"] < 1.0]
    assert run_cli("evaluate", run, "--data", folder, "--recall-floor", "2")[0] == 2
