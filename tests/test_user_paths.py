"""The source documents' scenarios end to end, as a user runs them: CLI in, answer out, compared
with the framework the weights came from (Keras' own predict, the Caffe net, torchvision's own
transforms). Each of these gave a wrong answer while every unit test passed, because the commands
fed every model as RGB ``(x/255 - mean)/std`` with a full-square crop."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.weights import pretrained

from weights_helpers import randomise, real_photo  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A real photo as a square PNG and as a non-square crop of it (landscape)."""
    photo = real_photo()
    root = tmp_path_factory.mktemp("photos")
    paths = {"square": root / "square.png", "wide": root / "wide.png"}
    photo.save(paths["square"])
    photo.crop((0, 40, 224, 190)).save(paths["wide"])  # 224 x 150
    return paths


def predicted(out: str) -> dict[str, list[tuple[str, float]]]:
    """``resnets predict --json`` output -> {file name: [(class, probability), ...]}."""
    return {Path(r["path"]).name: [(t["class"], t["probability"]) for t in r["top"]] for r in json.loads(out)}


def assert_same_top5(ours: list[tuple[str, float]], theirs: list[tuple[str, float]]) -> None:
    assert [c for c, _ in ours] == [c for c, _ in theirs]
    assert max(abs(p - q) for (_, p), (_, q) in zip(ours, theirs)) < 1e-4


# -- Keras ResNet50 / ResNet50V2 ------------------------------------------------------------------
keras_version = pytest.mark.parametrize("version", ["v1", "v2"])


def keras_model(version: str):
    """A Keras ResNet with random BN statistics and a head sharp enough that wrong inputs show."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    constructor = {"v1": keras.applications.ResNet50, "v2": keras.applications.ResNet50V2}[version]
    model = constructor(weights=None, input_shape=(224, 224, 3))
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.2, 0.2, n), rng.uniform(-0.5, 0.5, n),
                               rng.uniform(0.5, 1.5, n)])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 4.0, bias])
    return keras, model


def keras_top5(keras, model, version: str, path: Path) -> list[tuple[str, float]]:
    """What the source document does: load_img(target_size), preprocess_input, predict, top 5.

    (Keras' ``decode_predictions`` downloads its class index, so the names come from ours.)"""
    from resnets.weights.imagenet import imagenet_class_names

    module = keras.applications.resnet if version == "v1" else keras.applications.resnet_v2
    image = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224)))
    probabilities = np.asarray(model.predict(module.preprocess_input(image[None]), verbose=0))[0]
    names = imagenet_class_names()
    return [(names[i], float(probabilities[i])) for i in np.argsort(-probabilities)[:5]]


@keras_version
def test_keras_weights_predict_and_evaluate_as_keras_does(tmp_path, capsys, photos, version):
    keras, model = keras_model(version)
    model.save_weights(tmp_path / "keras.weights.h5")
    status, _, err = run_cli(capsys, "convert", tmp_path / "keras.weights.h5", tmp_path / "k.safetensors")
    assert status == 0, err
    status, out, err = run_cli(capsys, "predict", tmp_path / "k.safetensors", photos["square"], photos["wide"],
                               "--json")
    assert status == 0, err
    ours = predicted(out)
    for kind, path in photos.items():
        theirs = keras_top5(keras, model, version, path)
        assert theirs[0][1] > 0.05, "the head must be sharp enough for a wrong input to show"
        assert_same_top5(ours[path.name], theirs)

    # evaluate: the photo filed under Keras' top-1 class; its loss is -log(Keras' probability)
    top1, probability = keras_top5(keras, model, version, photos["wide"])[0]
    (tmp_path / "data" / top1).mkdir(parents=True)
    Image.open(photos["wide"]).save(tmp_path / "data" / top1 / "wide.png")
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "k.safetensors", "--data", tmp_path / "data",
                               "--json", "--confusion", tmp_path / "c.png")
    assert status == 0, err
    report = json.loads(out)
    assert report["count"] == 1 and report["top1"] == 100.0
    assert abs(report["loss"] - -np.log(probability)) < 1e-4


# -- Caffe: MSRA's ResNet-50 layout ------------------------------------------------------------------
def caffe_reference_input(path: Path) -> torch.Tensor:
    """Caffe's ImageNet convention, written out by hand: shorter side 256, centre 224, BGR 0-255 - mean."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((int(round(width * scale)) if width > height else 256,
                          int(round(height * scale)) if height > width else 256), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)[..., ::-1]
    pixels = pixels - np.array([104.0, 117.0, 123.0], dtype=np.float32)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def test_caffe_weights_predict_as_the_caffe_net_does(tmp_path, capsys, photos):
    pytest.importorskip("cv2")
    from test_caffe_opencv import MsraWriter

    from resnets.weights.caffe import from_prototxt, write_caffemodel
    from resnets.weights.imagenet import imagenet_class_names

    writer = MsraWriter(seed=0)
    deploy, caffemodel = tmp_path / "ResNet-50-deploy.prototxt", tmp_path / "ResNet-50-model.caffemodel"
    deploy.write_text(writer.resnet50(softmax=False))
    write_caffemodel(caffemodel, "ResNet-50", writer.blobs)
    status, _, err = run_cli(capsys, "convert", caffemodel, tmp_path / "c.safetensors", "--prototxt", deploy)
    assert status == 0, err
    status, out, err = run_cli(capsys, "predict", tmp_path / "c.safetensors", photos["square"], photos["wide"],
                               "--json")
    assert status == 0, err
    ours = predicted(out)
    net = from_prototxt(deploy, caffemodel).eval()
    names = imagenet_class_names()
    for path in photos.values():
        with torch.no_grad():
            probabilities = net(caffe_reference_input(path)).reshape(1, -1).softmax(1)[0]
        values, indices = probabilities.topk(5)
        theirs = [(names[i], float(p)) for p, i in zip(values, indices)]
        assert_same_top5(ours[path.name], theirs)


# -- torchvision's pretrained weights, by name, from the cache -------------------------------------------
@pytest.fixture
def cached_weights(tmp_path, monkeypatch):
    """Put torchvision-format files in the cache under the registry's names (as a user would after
    an offline download elsewhere) and record their real hash prefix in the registry."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    models = {}

    def put(model_name: str, tag: str) -> torch.nn.Module:
        import torchvision

        entry = pretrained.get_pretrained(model_name, tag)
        model = randomise(getattr(torchvision.models, model_name)(), seed=len(models))
        with torch.no_grad():
            model.fc.weight.mul_(40)  # a sharp head: a wrong input shows in the top-5
        path = tmp_path / "cache" / entry.filename
        torch.save(model.state_dict(), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        for key in [(model_name, tag)] + [(model_name, "imagenet")] * (entry.filename ==
                                                                        pretrained.get_pretrained(model_name).filename):
            monkeypatch.setitem(pretrained._registry(), key,
                                dataclasses.replace(pretrained._registry()[key], hash_prefix=digest[:8]))
        models[model_name] = model.eval()
        return model.eval()

    return put


def test_predict_by_model_name_feeds_torchvision_weights_as_their_record_says(tmp_path, capsys, photos,
                                                                              cached_weights):
    import torchvision

    model = cached_weights("resnet50", "IMAGENET1K_V2")
    status, out, err = run_cli(capsys, "predict", "resnet50", photos["square"], photos["wide"], "--json")
    assert status == 0, err
    ours = predicted(out)
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert weights.transforms().resize_size == [232]
    for path in photos.values():
        with torch.no_grad():
            probabilities = model(weights.transforms()(Image.open(path).convert("RGB"))[None]).softmax(1)[0]
        values, indices = probabilities.topk(5)
        theirs = [(weights.meta["categories"][i], float(p)) for p, i in zip(values, indices)]
        assert_same_top5(ours[path.name], theirs)


def test_transfer_learning_from_imagenet_by_name(tmp_path, capsys, cached_weights):
    """The source documents' scenario: ImageNet ResNet-18, frozen, a new head for the data's classes."""
    from _data_helpers import make_tree

    cached_weights("resnet18", "IMAGENET1K_V1")
    make_tree(tmp_path / "data", splits=(None,), per_class=6, size=(40, 40))
    status, _, err = run_cli(capsys, "train", "--model", "resnet18", "--weights", "imagenet", "--freeze",
                             "backbone", "--data", tmp_path / "data", "--img-size", "32", "--epochs", "1",
                             "--batch-size", "8", "--out", tmp_path / "run", "--no-progress", "--device", "cpu")
    assert status == 0, err
    from resnets import load_model

    tuned = load_model(tmp_path / "run")
    assert tuned.class_names == sorted(p.name for p in (tmp_path / "data").iterdir())
    assert tuned.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_pretrained_by_name_offline_is_one_line(tmp_path, capsys, monkeypatch, photos):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "empty-cache"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")  # what a machine without internet says

    monkeypatch.setattr("socket.create_connection", offline)
    for argv in (["predict", "resnet50", photos["square"]],
                 ["train", "--model", "resnet18", "--weights", "imagenet", "--data", tmp_path, "--out",
                  tmp_path / "run"]):
        status, _, err = run_cli(capsys, *argv)
        assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert str(tmp_path / "empty-cache") in err  # says where to put the file


# -- evaluate scores what it should ----------------------------------------------------------------
def test_evaluate_scores_exactly_the_runs_held_out_images(tmp_path, capsys):
    from _data_helpers import make_tree

    from resnets.data import open_dataset, stratified_split

    make_tree(tmp_path / "data", splits=(None,), per_class=10, size=(12, 12))
    status, _, err = run_cli(capsys, "train", "--model", "resnet20", "--data", tmp_path / "data", "--val-split",
                             "0.2", "--seed", "7", "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "run",
                             "--no-progress", "--device", "cpu")
    assert status == 0, err
    from resnets.evaluate import evaluate

    report = evaluate(tmp_path / "run", tmp_path / "data")
    dataset = open_dataset(tmp_path / "data")
    _, held_out = stratified_split(dataset.targets, 0.2, 7)
    assert report.items == [dataset.describe(i) for i in held_out]
    assert report.split == "val" and "held-out 0.2 (seed 7)" in report.split_how
    everything = evaluate(tmp_path / "run", tmp_path / "data", split="all")
    assert everything.count == len(dataset) and sorted(everything.items) == sorted(map(dataset.describe,
                                                                                      range(len(dataset))))
    status, out, _ = run_cli(capsys, "evaluate", tmp_path / "run", "--data", tmp_path / "data")
    assert status == 0 and out.startswith(f"{len(held_out)} images, the run's held-out 0.2 (seed 7)")


def test_evaluate_a_validation_archive_matches_classes_by_name(tmp_path, capsys):
    """A model whose classes are in another order than the folders, and a class it does not know."""
    from resnets import create_model, save_weights

    model = create_model("resnet20", num_classes=3)
    model.class_names = ["zebra", "apple", "mango"]  # not the sorted order of the folders
    save_weights(tmp_path / "w.safetensors", model)
    rng = np.random.default_rng(0)
    archive = tmp_path / "val.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, count in (("apple", 2), ("kiwi", 3), ("mango", 4), ("zebra", 5)):
            for i in range(count):
                image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
                image.save(tmp_path / "tmp.png")
                zf.write(tmp_path / "tmp.png", f"val/{name}/{i}.png")
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "w.safetensors", "--data", archive, "--json",
                               "--confusion", tmp_path / "c.png")
    assert status == 0, err
    report = json.loads(out)
    assert report["count"] == 11 and report["skipped_classes"] == {"kiwi": 3}
    support = {row["class"]: row["support"] for row in report["per_class"]}
    assert support == {"zebra": 5, "apple": 2, "mango": 4}
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "w.safetensors", "--data", archive,
                               "--confusion", tmp_path / "c.png")
    assert "left out 3 image(s) of class 'kiwi'" in err and out.startswith("11 images, all of its val split")
