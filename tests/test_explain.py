"""`resnets explain`: maps of a model whose answer depends on one image quadrant peak in that quadrant."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytorch_grad_cam")

from resnets.explain import class_activation_maps, explain_image  # noqa: E402
from resnets.factory import create_model  # noqa: E402
from resnets.predict import load_for_inference  # noqa: E402
from resnets.preprocessing import Preprocessing  # noqa: E402
from resnets.weights.format import save_weights  # noqa: E402

CLASSES = ("red", "green", "blue")
COLOURS = torch.tensor([[250, 30, 30], [30, 250, 30], [30, 30, 250]], dtype=torch.uint8)
SIZE = 32


def patch_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dim noise with one bright 8x8 square, well inside a random quadrant; its colour is the class.

    The answer depends on that one quadrant only. Returns (uint8 images, labels, quadrants
    numbered 0 top left, 1 top right, 2 bottom left, 3 bottom right).
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 90, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    quadrants = torch.randint(0, 4, (count,), generator=generator)
    for i, (label, quadrant) in enumerate(zip(labels.tolist(), quadrants.tolist())):
        paint(images[i], label, quadrant, generator)
    return images, labels, quadrants


def paint(image: torch.Tensor, label: int, quadrant: int, generator: torch.Generator) -> None:
    half = SIZE // 2
    y0, x0 = (quadrant // 2) * half + 2, (quadrant % 2) * half + 2
    dy, dx = torch.randint(0, half - 8 - 4 + 1, (2,), generator=generator).tolist()
    image[:, y0 + dy:y0 + dy + 8, x0 + dx:x0 + dx + 8] = COLOURS[label].view(3, 1, 1)


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory) -> Path:
    """A tiny CIFAR-style ResNet trained (a few seconds) to name the colour of the square."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, layers=(1, 1, 1), widths=(8, 16, 16), stem_width=8)
    model.preprocessing = Preprocessing.for_input_size(SIZE)
    images, labels, _ = patch_images(512, seed=1)
    x = model.preprocessing.normalize(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(50):
        batch = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_images, test_labels, _ = patch_images(64, seed=2)
    with torch.no_grad():
        accuracy = (model(model.preprocessing.normalize(test_images)).argmax(1) == test_labels).float().mean()
    torch.set_num_threads(threads)
    assert accuracy >= 0.95, f"the model did not learn its task ({accuracy:.2f})"
    path = tmp_path_factory.mktemp("explain") / "patches.safetensors"
    save_weights(path, model, class_names=list(CLASSES))
    return path


def quadrant_of(x: float, y: float, width: int, height: int) -> int:
    return int(y >= height / 2) * 2 + int(x >= width / 2)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_maps_peak_in_the_deciding_quadrant(patch_model, method, one_thread):
    predictor = load_for_inference(patch_model)
    images, labels, quadrants = patch_images(24, seed=3)
    maps = class_activation_maps(predictor.plain, predictor.normalise(images), labels.tolist(), method)
    assert maps.shape == (24, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    peaks = [np.unravel_index(cam.argmax(), cam.shape) for cam in maps]
    found = [quadrant_of(x, y, SIZE, SIZE) for y, x in peaks]
    assert found == quadrants.tolist(), method


def test_the_target_class_moves_the_map(patch_model, one_thread):
    """Two squares, red top left and blue bottom right: each class's map peaks on its own square."""
    predictor = load_for_inference(patch_model)
    generator = torch.Generator().manual_seed(4)
    image = torch.randint(0, 90, (3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    paint(image, CLASSES.index("red"), 0, generator)
    paint(image, CLASSES.index("blue"), 3, generator)
    photo = Image.fromarray(image.permute(1, 2, 0).numpy())
    for target, quadrant in (("red", 0), ("blue", 3), (2, 3)):
        result = explain_image(predictor, photo, target=target, topk=2)
        assert result.target == (CLASSES.index(target) if isinstance(target, str) else target)
        assert result.target_class == CLASSES[result.target] and len(result.top) == 2
        assert quadrant_of(result.peak["x"], result.peak["y"], SIZE, SIZE) == quadrant, target


def test_explain_image_keeps_the_photo_aspect(patch_model, one_thread):
    predictor = load_for_inference(patch_model)
    images, labels, quadrants = patch_images(1, seed=5)
    square = Image.fromarray(images[0].permute(1, 2, 0).numpy()).resize((64, 64), Image.NEAREST)
    wide = Image.new("RGB", (96, 64))
    wide.paste(square, (16, 0))  # the crop (shorter side 32, centre 32x32) is the pasted square
    result = explain_image(predictor, wide)
    assert result.top[0]["class"] == CLASSES[labels[0]] and result.layer == "layer3.0"
    assert result.target == int(labels[0]) and result.method == "gradcam" and result.cam.shape == (SIZE, SIZE)
    assert quadrant_of(result.peak["image_x"] - 16, result.peak["image_y"], 64, 64) == int(quadrants[0])
    with Image.open(io.BytesIO(result.overlay_png)) as png:
        assert png.size[0] / png.size[1] == pytest.approx(96 / 64, rel=0.01)


def test_crop_box_matches_resize_crop():
    """The box drawn on the photo is where resize_crop's pixels come from."""
    pre = Preprocessing(input_size=20, resize_size=24)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((90, 60), Image.BICUBIC)
    left, top, right, bottom = pre.crop_box(90, 60)
    assert (right - left, bottom - top) == pytest.approx((50, 50))
    expected = photo.crop((round(left), round(top), round(right), round(bottom))).resize((20, 20), Image.BILINEAR)
    diff = np.abs(np.asarray(pre.resize_crop(photo), dtype=int) - np.asarray(expected, dtype=int))
    shifted = photo.crop((0, 0, 50, 50)).resize((20, 20), Image.BILINEAR)
    off = np.abs(np.asarray(pre.resize_crop(photo), dtype=int) - np.asarray(shifted, dtype=int))
    assert diff.mean() < off.mean() / 3


def test_cli_writes_pngs_with_the_image_aspect_and_json(patch_model, tmp_path, run_cli, one_thread):
    images, labels, quadrants = patch_images(3, seed=6)
    paths = []
    for i in range(3):
        photo = Image.new("RGB", (32, 48))  # tall: the crop is the middle square
        photo.paste(Image.fromarray(images[i].permute(1, 2, 0).numpy()), (0, 8))
        paths.append(tmp_path / f"{i}-{CLASSES[labels[i]]}.png")
        photo.save(paths[-1])
    out = tmp_path / "maps"
    status, stdout, stderr = run_cli("explain", patch_model, *paths, "--out", out, "--json", "--topk", "2",
                                     "--method", "gradcam++")
    assert status == 0, stderr
    report = json.loads(stdout)
    assert report["layer"] == "layer3.0" and len(report["images"]) == 3
    assert json.loads((out / "explanations.json").read_text()) == report["images"]
    for record, label, quadrant in zip(report["images"], labels.tolist(), quadrants.tolist()):
        assert record["target_class"] == CLASSES[label] and len(record["top"]) == 2
        assert quadrant_of(record["peak"]["image_x"], record["peak"]["image_y"] - 8, 32, 32) == quadrant
        with Image.open(record["png"]) as png:
            assert png.size[1] / png.size[0] == pytest.approx(48 / 32, rel=0.01)


def test_cli_errors_are_one_line(patch_model, tmp_path, run_cli):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    cases = {
        "cannot decode image": ["explain", patch_model, bad, "--out", out],
        "unknown CAM method 'gradcam+'": ["explain", patch_model, good, "--out", out, "--method", "gradcam+"],
        "--topk must be a positive integer": ["explain", patch_model, good, "--out", out, "--topk", "0"],
        "close names: layer3.0": ["explain", patch_model, good, "--out", out, "--layer", "layer3.00"],
        "unknown target class 'gren'; did you mean green": ["explain", patch_model, good, "--out", out,
                                                                   "--target", "gren"],
        "target class index 9 is out of range": ["explain", patch_model, good, "--out", out, "--target", "9"],
    }
    for expected, args in cases.items():
        status, stdout, stderr = run_cli(*args)
        assert status == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, (args, stderr)
        assert stderr.startswith("resnets: error: ") and expected in stderr, (expected, stderr)
    # An unreadable file among good ones: the good one is explained, then one error line.
    status, _, stderr = run_cli("explain", patch_model, good, bad, "--out", out)
    assert status == 2 and "1 other image(s) were explained" in stderr and (out / "good.gradcam.png").is_file()


def test_missing_grad_cam_names_the_extra(patch_model, tmp_path, run_cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if not installed
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32)).save(good)
    status, _, stderr = run_cli("explain", patch_model, good, "--out", tmp_path / "out")
    assert status == 2 and "pip install 'resnets[explain]'" in stderr and stderr.count("\n") == 1


# -- multi-label models: the map of one class's sigmoid --------------------------------------------
def multi_label_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim noise with 1-3 squares of different colours in different quadrants; multi-hot targets."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 90, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    targets = torch.zeros(count, len(CLASSES))
    for i in range(count):
        present = torch.randperm(len(CLASSES), generator=generator)[:int(torch.randint(1, 4, (1,),
                                                                                     generator=generator))]
        quadrants = torch.randperm(4, generator=generator)
        for label, quadrant in zip(present.tolist(), quadrants.tolist()):
            paint(images[i], label, quadrant, generator)
            targets[i, label] = 1
    return images, targets


@pytest.fixture(scope="module")
def multi_label_model(tmp_path_factory) -> Path:
    """A tiny ResNet trained with one sigmoid per colour (BCE) to say which squares an image holds."""
    from resnets.multilabel import mark_multi_label

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, layers=(1, 1, 1), widths=(8, 16, 16), stem_width=8)
    model.preprocessing = Preprocessing.for_input_size(SIZE)
    images, targets = multi_label_images(768, seed=1)
    x = model.preprocessing.normalize(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(100):
        batch = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_images, test_targets = multi_label_images(64, seed=2)
    with torch.no_grad():
        correct = (model(model.preprocessing.normalize(test_images)) > 0).float() == test_targets
    torch.set_num_threads(threads)
    assert correct.float().mean() >= 0.95, f"the model did not learn its task ({correct.float().mean():.2f})"
    path = tmp_path_factory.mktemp("explain") / "multi.safetensors"
    save_weights(path, mark_multi_label(model), class_names=list(CLASSES))
    return path


def test_multi_label_explain_maps_the_named_class(multi_label_model, tmp_path, run_cli, one_thread):
    """Red top left, blue bottom right: both present (sigmoids, not a softmax over the two), and
    `--class` moves the map onto its own square; an unknown class is one line."""
    generator = torch.Generator().manual_seed(4)
    image = torch.randint(0, 90, (3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    paint(image, CLASSES.index("red"), 0, generator)
    paint(image, CLASSES.index("blue"), 3, generator)
    photo = tmp_path / "two.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(photo)
    records = {}
    for name in ("red", "blue"):
        status, stdout, stderr = run_cli("explain", multi_label_model, photo, "--class", name, "--json",
                                         "--out", tmp_path / name, "--topk", "3")
        assert status == 0, stderr
        records[name] = json.loads(stdout)["images"][0]
        assert records[name]["target_class"] == name
    red, blue = records["red"], records["blue"]
    probability = {row["class"]: row["probability"] for row in red["top"]}
    assert probability["red"] > 0.5 and probability["blue"] > 0.5 and probability["green"] < 0.5
    assert sum(probability.values()) > 1  # independent sigmoids
    assert quadrant_of(red["peak"]["x"], red["peak"]["y"], SIZE, SIZE) == 0
    assert quadrant_of(blue["peak"]["x"], blue["peak"]["y"], SIZE, SIZE) == 3
    status, _, stderr = run_cli("explain", multi_label_model, photo, "--class", "purple", "--out", tmp_path / "x")
    assert status == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("resnets: error: unknown target class 'purple'")
    predictor = load_for_inference(multi_label_model)
    maps = {name: explain_image(predictor, Image.open(photo), target=name).cam for name in ("red", "blue")}
    assert np.abs(maps["red"] - maps["blue"]).mean() > 0.1
    for method in ("scorecam", "gradcam++"):  # every method maps the named class's sigmoid
        cam = explain_image(predictor, Image.open(photo), method=method, target="blue").cam
        assert quadrant_of(*np.unravel_index(cam.argmax(), cam.shape)[::-1], SIZE, SIZE) == 3, method


def test_sigmoid_target_keeps_a_confident_class_map():
    """A class present with near certainty still has a gradient (sigmoid(z)(1 - sigmoid(z)) is 0 in float32)."""
    from resnets.explain import SigmoidTarget

    logits = torch.tensor([[30.0, -2.0]], requires_grad=True)
    SigmoidTarget(0)(logits).sum().backward()
    assert logits.grad[0, 0] > 0
    plain = torch.tensor(30.0, requires_grad=True)
    torch.sigmoid(plain).backward()
    assert plain.grad == 0  # what a bare sigmoid target would give: no map at all
