"""Writes never go through a symbolic link, an output is never its own input, and a full disk
while state.pt is saved is one line (issue 24). Each refusal: exit 2, one stderr line, no
traceback, and the file the link points to (or the input) byte for byte as it was."""

from __future__ import annotations

import hashlib
import os
import resource
import signal

import pytest
import torch
import torchvision

from _train_fixtures import write_folder_dataset
from resnets import ResnetsError, create_model
from resnets.fileio import atomic_path, atomic_write_bytes
from resnets.weights import save_weights
from weights_helpers import randomise

LINK_REFUSED = "is a symbolic link; refusing to write through it"
TINY = {"layers": (1, 1, 1, 1), "widths": (4, 8, 8, 8), "stem_width": 4}


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("resnets: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4})


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_text("a file the user cares about\n")
    return path


def train_args(data, out, *extra):
    return ["train", "--model", "resnet20", "--data", data, "--epochs", "1", "--batch-size", "8",
            "--img-size", "16", "--out", out, "--no-progress", "--device", "cpu", *extra]


# -- 1. links are never followed when a file is written ----------------------------------

@pytest.mark.parametrize("resume", [False, True])
def test_a_linked_lock_file_is_refused_and_its_target_untouched(data, tmp_path, victim, run_cli, resume):
    run = tmp_path / "run"
    if resume:  # a finished run whose lock is a link, as in a folder copied from someone else
        assert run_cli(*train_args(data, run))[0] == 0
        (run / ".lock").unlink()
    else:  # a new run into a folder that holds only the link
        run.mkdir()
    (run / ".lock").symlink_to(victim)
    before = sha(victim)
    args = train_args(data, run, "--resume", run) if resume else train_args(data, run)
    line = one_line_error(*run_cli(*args)[::2])
    assert LINK_REFUSED in line and ".lock" in line
    assert sha(victim) == before and (run / ".lock").is_symlink()


@pytest.mark.parametrize("kind", ["dangling", "folder"])
def test_a_lock_linked_nowhere_or_to_a_folder_is_refused(data, tmp_path, run_cli, kind):
    run, target = tmp_path / "run", tmp_path / "target"
    run.mkdir()
    if kind == "folder":
        target.mkdir()
    (run / ".lock").symlink_to(target)
    assert LINK_REFUSED in one_line_error(*run_cli(*train_args(data, run))[::2])
    assert not target.exists() if kind == "dangling" else list(target.iterdir()) == []


def test_a_temporary_name_pre_created_as_a_link_is_refused(tmp_path, victim, monkeypatch):
    import resnets.fileio as fileio

    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: "deadbeef")
    target = tmp_path / "out.json"
    (tmp_path / f".out.json.{os.getpid()}-deadbeef.tmp").symlink_to(victim)
    before = sha(victim)
    with pytest.raises(ResnetsError, match=LINK_REFUSED):
        atomic_write_bytes(target, b"new")
    assert sha(victim) == before and not target.exists()


def test_a_temporary_file_swapped_for_a_link_is_not_finished_through_it(tmp_path, victim):
    victim.chmod(0o600)
    before = sha(victim)
    target = tmp_path / "out.bin"
    with pytest.raises(ResnetsError, match=LINK_REFUSED):
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.symlink_to(victim)
    assert sha(victim) == before and victim.stat().st_mode & 0o777 == 0o600
    assert not target.exists() and not target.is_symlink()


def test_replacing_a_final_name_that_is_a_link_replaces_the_link_only(tmp_path, victim):
    before = sha(victim)
    target = tmp_path / "out.json"
    target.symlink_to(victim)
    atomic_write_bytes(target, b"new")
    assert sha(victim) == before and not target.is_symlink() and target.read_bytes() == b"new"


# -- 2. an output is never its own input -------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": randomise(torchvision.models.resnet18()).state_dict(), "epoch": 7,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
    return path


@pytest.mark.parametrize("how", ["same name", "symbolic link", "hard link", "other spelling"])
def test_convert_onto_its_own_input_is_refused(checkpoint, run_cli, how):
    out = checkpoint.parent / "out.pth"
    if how == "same name":
        out = checkpoint
    elif how == "symbolic link":
        out.symlink_to(checkpoint)
    elif how == "hard link":
        os.link(checkpoint, out)
    else:
        out = checkpoint.parent / "." / ".." / checkpoint.parent.name / checkpoint.name
    before = sha(checkpoint)
    line = one_line_error(*run_cli("convert", checkpoint, out)[::2])
    assert "is the input" in line
    assert sha(checkpoint) == before


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
@pytest.mark.parametrize("link", [False, True])
def test_export_out_naming_its_input_is_refused(tmp_path, run_cli, fmt, link):
    weights = save_weights(tmp_path / "w.safetensors", create_model("resnet18", num_classes=3, **TINY))
    out = tmp_path / "link" if link else weights
    if link:
        out.symlink_to(weights)
    before = sha(weights)
    assert "is the input" in one_line_error(*run_cli("export", weights, "--format", fmt, "--out", out)[::2])
    assert sha(weights) == before


# -- 3. a full disk while state.pt is saved ----------------------------------------------

@pytest.fixture
def file_size_limit():
    """Writes past 1.6 MB fail with an OSError (EFBIG), as on a full disk: weights.safetensors of
    resnet20 (1.1 MB) fits, state.pt (weights + momentum) does not."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_600_000, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failing_write_of_state_pt_is_one_line(data, tmp_path, run_cli, file_size_limit):
    run = tmp_path / "run"
    status, _, err = run_cli(*train_args(data, run))
    line = one_line_error(status, err)
    assert "state.pt" in line and "File too large" in line
    assert not (run / "state.pt").exists() and not list(run.glob(".state.pt.*"))
