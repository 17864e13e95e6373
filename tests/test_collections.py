"""Images without classes (a folder, a zip, a list file) through predict, embed, search and explain,
and a hostile folder (a link to a folder, a FIFO, unreadable files): one warning each, no hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import BadImageWarning, is_collection, open_collection
from resnets.factory import create_model
from resnets.preprocessing import Preprocessing
from resnets.weights.format import save_weights

TIMEOUT_S = 300


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, layers=(1, 1, 1), widths=(8, 8, 8), stem_width=8)
    model.preprocessing = Preprocessing.for_input_size(32)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, model.eval(), class_names=["a", "b", "c"])
    return path


def quietly(call, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(*args)
    return result, [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]


# -- what is a collection ----------------------------------------------------------------------------
def test_which_paths_are_collections(tmp_path):
    write_images(tmp_path / "flat", ["b.png", "a.jpg"])
    write_images(tmp_path / "tree", ["cat/1.png", "dog/2.png"])
    write_images(tmp_path / "mixed", ["loose.png", "2023/x.png", "2024/y.png"])
    (tmp_path / "list.txt").write_text("flat/a.jpg\n")
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as archive:
        archive.write(tmp_path / "flat" / "a.jpg", "a.jpg")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as archive:
        archive.write(tmp_path / "tree" / "cat" / "1.png", "tree/cat/1.png")
        archive.write(tmp_path / "tree" / "dog" / "2.png", "tree/dog/2.png")
    with zipfile.ZipFile(tmp_path / "wrapped.zip", "w") as archive:  # `zip -r photos.zip photos/`: one "class"
        archive.write(tmp_path / "flat" / "a.jpg", "photos/a.jpg")
        archive.write(tmp_path / "flat" / "b.png", "photos/b.png")
    (tmp_path / "empty").mkdir()
    expected = {"flat": True, "mixed": True, "list.txt": True, "flat.zip": True, "wrapped.zip": True,
                "tree": False, "tree.zip": False, "empty": False}
    assert {name: is_collection(tmp_path / name) for name in expected} == expected


def test_collection_reads_folders_zips_and_list_files(tmp_path):
    write_images(tmp_path / "photos", ["b.png", "a.jpg", "sub/c.png", ".hidden.png"])
    (tmp_path / "photos" / "notes.md").write_text("not an image")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("z.png", (tmp_path / "photos" / "a.jpg").read_bytes())
        archive.writestr("dir/y.png", (tmp_path / "photos" / "b.png").read_bytes())
        archive.writestr("__MACOSX/dir/._y.png", b"resource fork")
        archive.writestr("../escape.png", b"x")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "some.lst").write_text(f"# chosen\n../photos/b.png\n\n{tmp_path / 'photos' / 'sub' / 'c.png'}  \n")
    collection, warned = quietly(open_collection, [tmp_path / "photos", tmp_path / "more.zip", lists / "some.lst",
                                                   tmp_path / "photos" / "a.jpg", tmp_path / "gone.png"])
    names = [collection.describe(i) for i in range(len(collection))]
    photos = tmp_path / "photos"
    assert names == [str(photos / "a.jpg"), str(photos / "b.png"), str(photos / "sub" / "c.png"),
                     f"{tmp_path / 'more.zip'}:dir/y.png", f"{tmp_path / 'more.zip'}:z.png",
                     str(lists / "../photos/b.png"), str(photos / "sub" / "c.png"), str(photos / "a.jpg")]
    assert all(collection[i][0].size == (48, 40) for i in range(len(collection)))
    assert collection.classes == [""] and set(collection.targets) == {0}
    assert warned == [f"skipped {tmp_path / 'more.zip'}:../escape.png: zip member with an absolute path or a "
                      f"'.', '..' or empty part", f"skipped {tmp_path / 'gone.png'}: no such file"]


# -- the CLI on collections -------------------------------------------------------------------------
def test_zip_and_list_file_through_predict_embed_search(tiny_model, tmp_path, run_cli):
    pytest.importorskip("faiss")
    photos = write_images(tmp_path / "photos", [f"p{i}.png" for i in range(6)])
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in photos:
            handle.write(path, f"photos/{path.name}")
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"photos/{path.name}\n" for path in photos[:4]))
    status, out, err = run_cli("predict", tiny_model, archive, listing, "--json", "--topk", "1")
    assert status == 0, err
    assert [r["path"] for r in json.loads(out)] == [f"{archive}:photos/{p.name}" for p in photos] + \
        [str(p) for p in photos[:4]]
    index = tmp_path / "zip.npy"
    status, out, err = run_cli("embed", tiny_model, archive, "--out", index, "--json")
    assert status == 0, err
    assert json.loads(out)["count"] == 6 and json.loads(out)["classes"] == 0
    rows = json.loads((tmp_path / "zip.json").read_text())["rows"]
    assert [row["label"] for row in rows] == [""] * 6
    status, out, err = run_cli("search", index, listing, "--topk", "1", "--json", "--out", tmp_path / "strips")
    assert status == 0, err
    results = json.loads(out)
    assert [r["hits"][0]["path"] for r in results] == [f"{archive}:photos/{p.name}" for p in photos[:4]]
    assert all(Path(r["png"]).is_file() for r in results)
    status, out, err = run_cli("search", index, photos[0])
    assert status == 0 and f"1. 1.000  {archive}:photos/p0.png" in out, (out, err)


def test_explain_a_folder_of_photos(tiny_model, tmp_path, run_cli):
    pytest.importorskip("pytorch_grad_cam")
    write_images(tmp_path / "photos", ["a.png", "deeper/b.png"])
    status, out, err = run_cli("explain", tiny_model, tmp_path / "photos", "--out", tmp_path / "maps", "--json")
    assert status == 0, err
    assert [Path(r["png"]).name for r in json.loads(out)["images"]] == ["a.gradcam.png", "b.gradcam.png"]


# -- a hostile folder -------------------------------------------------------------------------------
def resnets(*argv: object, cwd: Path) -> tuple[int, str, str]:
    """`resnets ARGV` in a child process, killed (and the test failed) if it outlives TIMEOUT_S."""
    try:
        done = subprocess.run([sys.executable, "-m", "resnets", *map(str, argv)], capture_output=True, text=True,
                              timeout=TIMEOUT_S, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"resnets {' '.join(map(str, argv))} hung")
    return done.returncode, done.stdout, done.stderr


def hostile_folder(root: Path) -> tuple[list[Path], dict[str, str]]:
    """Three photos, a link to a folder of photos, a FIFO, a corrupt image and (not as root) an
    unreadable one; returns (the photos, the warning expected for each hostile entry)."""
    good = write_images(root, ["one.png", "two.jpg", "sub/three.png"])
    write_images(root.parent / "elsewhere", ["x.png", "y.png"])
    (root / "link").symlink_to(root.parent / "elsewhere")
    os.mkfifo(root / "pipe.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    expected = {"link": f"resnets: warning: skipped {root / 'link'}: symbolic links to folders are not followed",
                "pipe": f"resnets: warning: skipped {root / 'pipe.jpg'}: not a regular file",
                "broken": f"resnets: warning: skipped unreadable image {root / 'broken.jpg'}"}
    if os.geteuid() != 0:  # root reads a file whatever its mode
        locked = write_images(root, ["locked.png"])[0]
        locked.chmod(0)
        expected["locked"] = f"resnets: warning: skipped unreadable image {locked}"
    return good, expected


def test_hostile_folder_one_warning_each_no_hang(tiny_model, tmp_path):
    pytest.importorskip("faiss")
    root = tmp_path / "photos"
    good, expected = hostile_folder(root)
    status, out, err = resnets("predict", tiny_model, root, "--json", cwd=tmp_path)
    assert status == 0, err
    assert sorted(r["path"] for r in json.loads(out)) == sorted(map(str, good))
    for line in expected.values():
        assert err.count(line) == 1, (line, err)
    assert "Traceback" not in err
    status, out, err = resnets("embed", tiny_model, root, "--out", tmp_path / "e.npy", "--json", cwd=tmp_path)
    assert status == 0, err
    assert json.loads(out)["count"] == 3
    for line in expected.values():
        assert err.count(line) == 1, (line, err)
    status, _, err = resnets("search", tmp_path / "e.npy", root, cwd=tmp_path)  # a query must be readable
    assert status == 2 and err.strip().splitlines()[-1].startswith("resnets: error: cannot decode image")
    assert "Traceback" not in err
    for path in good:
        path.unlink()
    status, _, err = resnets("predict", tiny_model, root, cwd=tmp_path)  # nothing readable left: one line
    assert status == 2 and err.strip().splitlines()[-1] == "resnets: error: no readable image among the inputs"
