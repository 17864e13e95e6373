"""Hostile weights files and environments: malformed metadata, partial state dicts, class names
with escape codes, folders where files are expected, read-only output. One line, exit 2, the
older file unchanged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from resnets import create_model
from resnets.errors import ResnetsError
from resnets.weights import save_weights
from resnets.weights.format import METADATA_KEY


def one_line(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def weights(tmp_path) -> Path:
    model = create_model("resnet20", num_classes=3)
    return save_weights(tmp_path / "w.safetensors", model, class_names=["a", "b", "c"])


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]", '{"model_name": 5}', '{"model_name": "resnet20", '
                                      '"config": {"layers": "x"}}'])
def test_malformed_metadata_is_one_line(weights, tmp_path, run_cli, metadata):
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(weights), bad, metadata={METADATA_KEY: metadata})
    status, _, err = run_cli("predict", bad, weights)  # the second argument: any file, never reached
    one_line(status, err)


def test_fewer_class_names_than_the_head_is_refused_not_dropped(weights, tmp_path, run_cli):
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as file:
        record = json.loads(file.metadata()[METADATA_KEY])
    record["class_names"] = ["a", "b"]  # a head of 3 outputs
    short = tmp_path / "short.safetensors"
    save_file(load_file(weights), short, metadata={METADATA_KEY: json.dumps(record)})
    with pytest.raises(ResnetsError, match="2 class names for a head of 3 outputs"):
        create_model(weights=short)
    status, _, err = run_cli("predict", short, weights)
    assert "2 class names for a head of 3 outputs" in one_line(status, err)


def test_partial_resnet_state_dict_is_one_line(tmp_path, run_cli):
    state = torchvision.models.resnet18().state_dict()
    partial = {k: v for i, (k, v) in enumerate(state.items()) if i % 3}
    torch.save(partial, tmp_path / "partial.pth")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    status, _, err = run_cli("convert", tmp_path / "partial.pth", out)
    one_line(status, err)
    assert out.read_bytes() == b"old"


def test_escape_codes_in_class_and_file_names_are_escaped(tmp_path, run_cli):
    from PIL import Image

    evil = ["\x1b]0;pwned\x07title", "\x1b[2Jclear", "\u202eright-to-left"]
    path = save_weights(tmp_path / "w.safetensors", create_model("resnet20", num_classes=3), class_names=evil)
    image = tmp_path / "img\x1b[31m.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    status, out, _ = run_cli("predict", path, image, "--topk", "3")
    assert status == 0 and "\x1b" not in out and "\u202e" not in out
    assert "\\x1b]0;pwned\\x07title" in out and "img\\x1b[31m.png" in out
    status, out, _ = run_cli("predict", path, image, "--topk", "3", "--json")
    result = json.loads(out)  # JSON stays exact
    assert {t["class"] for t in result[0]["top"]} == set(evil) and result[0]["path"] == str(image)


def test_folder_where_a_file_is_expected_and_the_reverse(weights, tmp_path, run_cli):
    folder = tmp_path / "folder"
    folder.mkdir()
    status, _, err = run_cli("export", weights, "--format", "safetensors", "--out", folder)
    one_line(status, err)
    status, _, err = run_cli("convert", weights.parent / "nothing.pth", weights / "x.safetensors")
    one_line(status, err)
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    status, _, err = run_cli("export", "resnet20", "--format", "safetensors", "--out", weights / "x.safetensors")
    one_line(status, err)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, run_cli):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    status, _, err = run_cli("export", "resnet20", "--format", "safetensors", "--out", folder / "m.safetensors")
    assert "Permission denied" in one_line(status, err)


def test_read_only_file_system(tmp_path, run_cli):
    """As root a chmod does not stop writes: a read-only bind mount does (skipped where refused)."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "m.safetensors").write_bytes(b"old")
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only mount here")
    try:
        status, _, err = run_cli("export", "resnet20", "--format", "safetensors", "--out", folder / "m.safetensors")
        assert "Read-only file system" in one_line(status, err)
        assert (folder / "m.safetensors").read_bytes() == b"old"
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
