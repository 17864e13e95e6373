"""`resnets embed` + `resnets search`: an image's near-duplicate (mirrored, JPEG-recompressed) comes first."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from _data_helpers import shared_file
from resnets.factory import create_model
from resnets.preprocessing import Preprocessing
from resnets.weights.format import save_weights

pytest.importorskip("faiss")
pytest.importorskip("pyarrow")

from resnets.embed import embed_dataset, embed_images, load_index, search  # noqa: E402

CLASSES, PER_CLASS = 4, 8


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """32 real photos (4 Imagenette classes x 8) as an image-folder tree."""
    imagenette = shared_file("imagenette-224-train.zip", "real photos for the near-duplicate test")
    root = tmp_path_factory.mktemp("photos")
    with zipfile.ZipFile(imagenette) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".JPEG"))
        classes = sorted({n.split("/")[1] for n in names})[:CLASSES]
        for cls in classes:
            for name in [n for n in names if n.split("/")[1] == cls][:PER_CLASS]:
                (root / cls).mkdir(exist_ok=True)
                (root / cls / Path(name).name).write_bytes(archive.read(name))
    return root


@pytest.fixture(scope="module")
def extractor(photos, tmp_path_factory) -> Path:
    """A tiny ResNet trained for a few seconds to tell the 32 photos apart (one class each,
    random mirroring): a feature extractor whose embeddings separate images, as pretrained ones do.
    """
    from resnets.data import decode_to_memory, open_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=CLASSES * PER_CLASS, layers=(1, 1, 1, 1),
                         widths=(16, 32, 64, 128), stem_width=16)
    model.preprocessing = Preprocessing.for_input_size(64, crop_fraction=0.875)
    images, _ = decode_to_memory(open_dataset(photos), preprocessing=model.preprocessing, progress=False)
    x, labels = model.preprocessing.normalize(images), torch.arange(len(images))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    model.train()
    for step in range(40):
        generator = torch.Generator().manual_seed(step)
        batch = torch.randint(0, len(x), (16,), generator=generator)
        mirror = (torch.rand(16, generator=generator) < 0.5).view(-1, 1, 1, 1)
        loss = torch.nn.functional.cross_entropy(model(torch.where(mirror, x[batch].flip(3), x[batch])),
                                                 labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("extractor") / "tiny.safetensors"
    save_weights(path, model.eval(), class_names=[str(i) for i in range(len(x))])
    return path


def near_duplicates(photos: Path, folder: Path, every: int = 3) -> list[tuple[Path, Path]]:
    """(query, original): every ``every``-th photo mirrored and saved again as JPEG quality 60."""
    folder.mkdir(exist_ok=True)
    pairs = []
    for i, original in enumerate(sorted(photos.rglob("*.JPEG"))[::every]):
        with Image.open(original) as image:
            mirrored = ImageOps.mirror(image.convert("RGB"))
        query = folder / f"query{i}.jpg"
        mirrored.save(query, "JPEG", quality=60)
        pairs.append((query, original))
    return pairs


def test_near_duplicates_come_first(photos, extractor, tmp_path, one_thread):
    index_path = tmp_path / "photos.parquet"
    index = embed_dataset(extractor, photos, index_path, progress=False)
    assert index.vectors.shape == (CLASSES * PER_CLASS, 128)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)
    assert sorted(set(index.labels)) == sorted(p.name for p in photos.iterdir())
    pairs = near_duplicates(photos, tmp_path / "queries")
    results = search(index_path, [q for q, _ in pairs], topk=4)
    assert [r["query"] for r in results] == [str(q) for q, _ in pairs]
    for result, (query, original) in zip(results, pairs):
        hits = result["hits"]
        assert Path(hits[0]["path"]).name == original.name, (query, hits)
        assert hits[0]["label"] == original.parent.name
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[0] <= 1 + 1e-5
        assert [h["rank"] for h in hits] == [1, 2, 3, 4]


def test_vectors_are_the_normalised_pre_logits(photos, extractor, tmp_path):
    from resnets.predict import read_image
    from resnets.factory import load_model

    index = embed_dataset(extractor, photos, tmp_path / "e.npy", batch_size=5, progress=False)
    loaded = load_index(tmp_path / "e.npy")
    assert np.array_equal(loaded.vectors, index.vectors) and loaded.paths == index.paths
    model = load_model(extractor)
    row = 7
    image = read_image(Path(index.paths[row]), model.preprocessing)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(model.preprocessing.normalize(image[None])),
                                      pre_logits=True)
    expected = (features / features.norm(dim=1, keepdim=True)).numpy()[0]
    assert np.allclose(index.vectors[row], expected, atol=1e-5)
    assert np.allclose(embed_images(model, image[None])[0], expected, atol=1e-5)
    assert loaded.meta["model"] == str(Path(extractor).resolve()) and loaded.meta["dim"] == 128


def test_cli_embed_npy_map_and_search_strips(photos, extractor, tmp_path, run_cli, one_thread):
    index_path, map_png = tmp_path / "photos.npy", tmp_path / "map.png"
    status, out, err = run_cli("embed", extractor, photos, "--out", index_path, "--map", map_png, "--json")
    assert status == 0, err
    summary = json.loads(out)
    assert summary["count"] == CLASSES * PER_CLASS and summary["dim"] == 128 and summary["classes"] == CLASSES
    assert (tmp_path / "photos.json").is_file()
    with Image.open(map_png) as image:
        assert image.size[0] > 400 and image.size[1] > 400
    pairs = near_duplicates(photos, tmp_path / "queries", every=8)
    status, out, err = run_cli("search", index_path, *[q for q, _ in pairs], "--topk", "3", "--json",
                               "--out", tmp_path / "strips")
    assert status == 0, err
    results = json.loads(out)
    for result, (_, original) in zip(results, pairs):
        assert Path(result["hits"][0]["path"]).name == original.name
        with Image.open(result["png"]) as strip:
            assert strip.size[0] > 3 * strip.size[1]  # the query and 3 hits side by side
    status, out, _ = run_cli("search", index_path, pairs[0][0], "--topk", "2")
    first = out.splitlines()[1].split()
    assert status == 0 and first[0] == "1." and first[2] == pairs[0][1].parent.name
    assert Path(first[3]).name == pairs[0][1].name


def test_cli_errors_are_one_line(photos, extractor, tmp_path, run_cli):
    index_path = tmp_path / "photos.parquet"
    embed_dataset(extractor, photos, index_path, progress=False)
    query = next(photos.rglob("*.JPEG"))
    not_ours = tmp_path / "other.parquet"
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"x": [1, 2]}), not_ours)
    text = tmp_path / "text.parquet"
    text.write_text("hello")
    stray = tmp_path / "stray.npy"
    np.save(stray, np.zeros((2, 3), np.float32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    cases = {
        "is not an index made by `resnets embed`": ["search", not_ours, query],
        "not an index made by `resnets embed` (": ["search", text, query],
        "has no sidecar stray.json": ["search", stray, query],
        "--topk must be a positive integer": ["search", index_path, query, "--topk", "0"],
        "cannot decode image": ["search", index_path, broken],
        "ends in .parquet or .npy": ["embed", extractor, photos, "--out", tmp_path / "e.csv"],
        "no such index file": ["search", tmp_path / "missing.parquet", query],
    }
    for expected, args in cases.items():
        status, _, err = run_cli(*args)
        assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert err.startswith("resnets: error: ") and expected in err, (expected, err)


def test_search_refuses_an_index_whose_model_changed(photos, extractor, tmp_path, run_cli):
    from resnets.factory import load_model

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(extractor.read_bytes())
    index_path = tmp_path / "photos.parquet"
    embed_dataset(weights, photos, index_path, progress=False)
    model = load_model(weights)
    with torch.no_grad():
        model.fc.bias.add_(1)  # even a change the embeddings do not see is a different model
    save_weights(weights, model)
    status, _, err = run_cli("search", index_path, next(photos.rglob("*.JPEG")))
    assert status == 2 and "has changed since this index was made" in err


def test_missing_faiss_names_the_extra(photos, extractor, tmp_path, run_cli, monkeypatch):
    import sys

    index_path = tmp_path / "photos.npy"
    embed_dataset(extractor, photos, index_path, progress=False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import fails as if not installed
    status, _, err = run_cli("search", index_path, next(photos.rglob("*.JPEG")))
    assert status == 2 and "pip install 'resnets[search]'" in err and err.count("\n") == 1


@pytest.mark.shared_data
def test_a_flat_folder_of_photos_through_predict_embed_and_search(photos, extractor, tmp_path, run_cli, one_thread):
    """The user's path: 12 photos in one folder, no class folders. predict names each, embed indexes
    them without labels (the map in one colour), and a mirrored, recompressed copy finds its original."""
    flat = tmp_path / "holiday"
    flat.mkdir()
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        for original in sorted(folder.glob("*.JPEG"))[:3]:
            (flat / original.name).write_bytes(original.read_bytes())
    shot = sorted(flat.iterdir())
    assert len(shot) == 12
    status, out, err = run_cli("predict", extractor, flat, "--json", "--topk", "2")
    assert status == 0, err
    assert [r["path"] for r in json.loads(out)] == [str(p) for p in shot]
    assert all(len(r["top"]) == 2 for r in json.loads(out))
    index_path, map_png = tmp_path / "holiday.parquet", tmp_path / "map.png"
    status, out, err = run_cli("embed", extractor, flat, "--out", index_path, "--map", map_png, "--json")
    assert status == 0, err
    assert json.loads(out)["count"] == 12 and json.loads(out)["classes"] == 0
    index = load_index(index_path)
    assert index.paths == [str(p) for p in shot] and index.labels == [""] * 12
    assert index.meta["labelled"] is False and index.meta["classes"] == []
    with Image.open(map_png) as image:
        assert image.size[0] > 400
    pairs = near_duplicates(flat, tmp_path / "queries", every=4)
    status, out, err = run_cli("search", index_path, *[q for q, _ in pairs], "--topk", "3", "--json")
    assert status == 0, err
    for result, (query, original) in zip(json.loads(out), pairs):
        assert result["hits"][0]["path"] == str(original), (query, result["hits"])
        assert result["hits"][0]["label"] == ""
    status, out, _ = run_cli("search", index_path, pairs[0][0], "--topk", "1")
    assert status == 0 and out.splitlines()[1].split()[2] == str(pairs[0][1])
