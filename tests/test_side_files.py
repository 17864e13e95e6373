"""Side files and the paths inside label files are untrusted (issue 24).

An embedding index's ``.json`` sidecar, the index itself and a label file's ``classes.txt`` are
read as regular files of bounded size only (``fileio.open_regular`` under
``textparse.read_limited``/``load_npy``): a link to ``/dev/zero``, a FIFO, a folder or a huge file
in their place is one line, exit 2, never a hang (the FIFO cases run in a child under a timeout)
and never gigabytes. A label row naming an absolute path, or one whose ``..`` climbs out of the
label file's folder, is refused naming the row and the path (``fileio.escapes_folder``, the rule
zip members are held to as well); property tests: a random relative path is accepted iff it stays
inside. The JSON beside a data set (a shard's ``.idx.json`` and ``manifest.json``, ``state.json``
and ``dataset_dict.json``, an LMDB's ``__meta__``), a run's ``config.json``, ``--class-weights`` and
a ``.keras`` archive's ``config.json`` go through ``textparse.load_json``: nested 100000 deep is one
line, not a ``RecursionError``. An atomic write replaces a symbolic link at its target, never
follows it (a link to ``/dev/zero`` was copied forever where hard links fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnets.data.imagetree import unsafe_member
from resnets.data.labelfile import MAX_CLASS_LIST_BYTES, MAX_LABEL_FILE_BYTES
from resnets.embed import MAX_SIDECAR_BYTES
from resnets.errors import ResnetsError
from resnets.fileio import escapes_folder
from resnets.textparse import read_limited

PROPERTY = settings(max_examples=200, deadline=None)
OUTSIDE = "is outside the label file's folder"
CHILD_TIMEOUT_S = 60


def one_line_error(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("resnets: error: "), err
    return lines[0]


def child_cli(*args: object, cwd: Path) -> tuple[int, str]:
    """`resnets ARGS` in a child process that must finish within CHILD_TIMEOUT_S (a FIFO opened
    for reading without O_NONBLOCK would wait for a writer forever)."""
    done = subprocess.run([sys.executable, "-m", "resnets", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S)
    return done.returncode, done.stderr


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 90)).save(path, format="PNG")
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


# -- the embedding index and its sidecar ------------------------------------------------------------
@pytest.fixture
def index(tmp_path) -> tuple[Path, Path]:
    """A stray ``.npy`` (its sidecar is each test's subject) and a query image."""
    np.save(tmp_path / "emb.npy", np.zeros((2, 3), np.float32))
    return tmp_path / "emb.npy", png(tmp_path / "query.png")


@pytest.mark.parametrize("kind", ["dev-zero", "folder", "huge"])
def test_search_refuses_a_sidecar_that_is_no_regular_file_or_too_large(index, kind, run_cli):
    npy, query = index
    side = npy.with_suffix(".json")
    if kind == "dev-zero":
        side.symlink_to("/dev/zero")
        expected = "emb.json is a character device, not a regular file"
    elif kind == "folder":
        side.mkdir()
        expected = "emb.json is a folder, not a regular file"
    else:
        sparse(side, MAX_SIDECAR_BYTES + 1)  # refused from its size: nothing is read
        expected = f"emb.json: larger than {MAX_SIDECAR_BYTES} bytes"
    status, _, err = run_cli("search", npy, query)
    assert expected in one_line_error(status, err)


def test_search_refuses_a_fifo_sidecar_without_waiting(index):
    npy, query = index
    os.mkfifo(npy.with_suffix(".json"))
    status, err = child_cli("search", npy.name, query.name, cwd=npy.parent)
    assert "emb.json is a FIFO, not a regular file" in one_line_error(status, err)


def test_search_refuses_an_index_that_is_no_regular_file(index, run_cli):
    npy, query = index
    npy.with_suffix(".json").write_text(json.dumps({"format": "resnets-embeddings", "version": 1, "rows": []}))
    npy.unlink()
    npy.symlink_to("/dev/zero")  # the sidecar is fine, the vectors are endless
    status, _, err = run_cli("search", npy, query)
    assert "emb.npy is a character device" in one_line_error(status, err)
    parquet = npy.with_suffix(".parquet")
    parquet.mkdir()
    status, _, err = run_cli("search", parquet, query)
    assert "emb.parquet is a folder" in one_line_error(status, err)


# -- classes.txt and the label file -----------------------------------------------------------------
@pytest.fixture
def labelled(tmp_path) -> Path:
    """``lab/labels.csv`` naming one image inside its folder; ``tmp_path/outside.png`` beside it."""
    png(tmp_path / "lab" / "images" / "a.png")
    png(tmp_path / "outside.png")
    label_file = tmp_path / "lab" / "labels.csv"
    label_file.write_text("path,labels\nimages/a.png,cat\n")
    return label_file


@pytest.mark.parametrize("kind", ["dev-zero", "folder", "huge"])
def test_a_class_list_that_is_no_regular_file_or_too_large_is_refused(labelled, kind, run_cli):
    listing = labelled.parent / "classes.txt"
    if kind == "dev-zero":
        listing.symlink_to("/dev/zero")
        expected = "classes.txt is a character device, not a regular file"
    elif kind == "folder":
        listing.mkdir()
        expected = "classes.txt is a folder, not a regular file"
    else:
        sparse(listing, 3 << 30)  # the 3 GB of the issue, a hole: read whole it was a MemoryError
        expected = f"classes.txt: larger than {MAX_CLASS_LIST_BYTES} bytes"
    status, _, err = run_cli("data", "info", labelled)
    assert expected in one_line_error(status, err)


def test_a_fifo_class_list_is_refused_without_waiting(labelled):
    os.mkfifo(labelled.parent / "classes.txt")
    status, err = child_cli("data", "info", "labels.csv", cwd=labelled.parent)
    assert "classes.txt is a FIFO, not a regular file" in one_line_error(status, err)


def test_a_regular_class_list_still_sets_the_classes(labelled, run_cli):
    (labelled.parent / "classes.txt").write_text("dog\ncat\n")
    status, out, err = run_cli("data", "info", labelled, "--json")
    assert status == 0, err
    assert json.loads(out)["classes"] == ["dog", "cat"]


def test_a_huge_label_file_is_refused_before_reading(labelled, run_cli):
    sparse(labelled, MAX_LABEL_FILE_BYTES + 1)
    status, _, err = run_cli("data", "info", labelled)
    assert f"labels.csv: larger than {MAX_LABEL_FILE_BYTES} bytes" in one_line_error(status, err)


# -- paths inside a label file ----------------------------------------------------------------------
@pytest.mark.parametrize("form", ["csv", "jsonl"])
@pytest.mark.parametrize("where", ["../outside.png", "images/../../outside.png", "ABSOLUTE",
                                   "../lab/images/a.png"])
def test_label_rows_that_leave_the_folder_are_refused(labelled, form, where, run_cli):
    """Row 3 names an image outside the label file's folder: refused naming the row and the path,
    even when the file exists (``../outside.png``) or the path comes back in (``../lab/...``)."""
    path = str(labelled.parent.parent / "outside.png") if where == "ABSOLUTE" else where
    if form == "csv":
        label_file = labelled
        label_file.write_text(f"path,labels\nimages/a.png,cat\n{path},dog\n")
    else:
        label_file = labelled.with_suffix(".jsonl")
        label_file.write_text("\n" + "\n".join(json.dumps({"path": p, "labels": [c]})
                                                for p, c in [("images/a.png", "cat"), (path, "dog")]) + "\n")
    status, _, err = run_cli("data", "info", label_file)
    line = one_line_error(status, err)
    assert f"{label_file.name} line 3: image path {path} {OUTSIDE}" in line, line


def test_label_rows_that_stay_inside_are_read(labelled, run_cli):
    """``..`` that does not climb out, ``.`` parts and doubled slashes are fine; the image is found."""
    labelled.write_text("path,labels\n./images/../images/a.png,cat\nimages//./a.png,dog\n")
    status, out, err = run_cli("data", "info", labelled, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["classes"] == ["cat", "dog"] and sum(s["images"] for s in report["splits"].values()) == 2


def test_a_dotdot_is_resolved_as_text_not_through_a_linked_folder(labelled, run_cli):
    """``link/../secret.png`` stays inside as text (it means ``lab/secret.png``, which is missing);
    the operating system would resolve it through the link, to the folder above the link's target."""
    far = labelled.parent.parent / "far"
    png(far / "secret.png")
    (far / "deep").mkdir()
    (labelled.parent / "link").symlink_to(far / "deep")
    assert (labelled.parent / "link/../secret.png").is_file()  # what an unnormalised path would read
    labelled.write_text("path,labels\nimages/a.png,cat\nlink/../secret.png,dog\n")
    status, _, err = run_cli("data", "info", labelled)
    assert "names missing image secret.png" in one_line_error(status, err)


def test_training_never_reads_an_image_outside_the_folder(labelled, tmp_path, run_cli):
    labelled.write_text("path,labels\nimages/a.png,cat\n../outside.png,dog\n")
    status, _, err = run_cli("train", "--model", "resnet20", "--data", labelled, "--epochs", "1",
                             "--out", tmp_path / "run", "--no-progress")
    assert "line 3: image path ../outside.png" in one_line_error(status, err)
    assert not (tmp_path / "run" / "weights.safetensors").exists()


# -- the rule, as properties ----------------------------------------------------------------------
SEGMENTS = st.sampled_from(["..", ".", "", "a", "b", "c.png"])
RELATIVE = st.lists(SEGMENTS, min_size=1, max_size=8).map("/".join)


def stays_inside(name: str, root: str = "/data/label-root") -> bool:
    """The oracle: where the path lands once resolved as text from an absolute root (which no
    segment names, so a path cannot climb out and come back in)."""
    landed = os.path.normpath(os.path.join(root, name))
    return landed == root or landed.startswith(root + "/")


@PROPERTY
@given(RELATIVE)
def test_a_relative_path_escapes_iff_it_lands_outside(name):
    assert escapes_folder(name) == (not stays_inside(name))


@PROPERTY
@given(RELATIVE)
def test_a_path_that_stays_inside_keeps_doing_so_below_any_prefix(name):
    assume(not escapes_folder(name))
    assert not escapes_folder(f"x/{name}") and escapes_folder(f"../{name}")


@PROPERTY
@given(st.text(min_size=0, max_size=30))
def test_absolute_paths_always_escape(name):
    assert escapes_folder("/" + name)


@PROPERTY
@given(st.lists(st.sampled_from(["..", ".", "", "a", "b"]), min_size=1, max_size=6).map("/".join))
def test_zip_members_are_held_to_the_same_rule_and_stricter(name):
    """Every name that leaves the folder is an unsafe zip member too; a zip member is unsafe
    exactly when it has an empty, ``.`` or ``..`` part (or is absolute)."""
    if escapes_folder(name):
        assert unsafe_member(name)
    assert unsafe_member(name) == (name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(RELATIVE.filter(lambda n: n.strip() and not n.startswith("/") and not n.endswith(("/", ".", ".."))))
def test_label_files_accept_a_row_iff_it_stays_inside(run_cli, name):
    """Through the CLI: the row's image exists wherever the path lands (inside or not); the row is
    read iff the path stays inside the label file's folder, else refused naming it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, *"12345678", "lab")  # eight '..' still land inside tmp
        root.mkdir(parents=True)
        target = Path(os.path.normpath(root / name))
        assert Path(tmp) in target.parents
        assume(target != root and not target.exists())
        png(target)
        (root / "labels.jsonl").write_text(json.dumps({"path": name, "labels": ["x"]}) + "\n")
        status, out, err = run_cli("data", "info", root / "labels.jsonl", "--json")
        if stays_inside(name):
            assert status == 0, err
            assert sum(split["images"] for split in json.loads(out)["splits"].values()) == 1
        else:
            assert f"line 1: image path {name} {OUTSIDE}" in one_line_error(status, err)


# -- the readers themselves -------------------------------------------------------------------------
OPEN_FIFO = """
import sys
from resnets.fileio import open_regular
try:
    open_regular(sys.argv[1])
except ValueError as error:
    print(error)
"""


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    """In a child under a timeout: without O_NONBLOCK the open would wait for a writer forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-c", OPEN_FIFO, str(fifo)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0 and "fifo is a FIFO, not a regular file" in done.stdout, done


def test_read_limited_reads_regular_files_only_within_the_limit(tmp_path):
    with pytest.raises(ResnetsError, match="is a folder"):
        read_limited(tmp_path, 10)
    with pytest.raises(FileNotFoundError):
        read_limited(tmp_path / "missing", 10)
    regular = tmp_path / "text"
    regular.write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to(regular)
    assert read_limited(tmp_path / "link", 10) == b"0123456789"
    with pytest.raises(ResnetsError, match="larger than 9 bytes"):
        read_limited(regular, 9)


# -- the files beside a data set, a run and a weights file (the rest of issue 24) -------------------
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads alone: a RecursionError, a traceback
DEEP_LINE = "nested 100000 deep, over the limit of"


@pytest.fixture
def images(tmp_path) -> Path:
    from _train_fixtures import write_folder_dataset

    return write_folder_dataset(tmp_path / "images", {"train": 2, "val": 1}, size=8)


@pytest.fixture
def shards(images, tmp_path) -> Path:
    """``wds/``: a split folder of shards, each with its ``.idx.json``, and ``manifest.json``."""
    from resnets.data.pack import pack_wds

    pack_wds(images, tmp_path / "wds", shard_size=100, progress=False)
    return tmp_path / "wds"


def test_a_fifo_shard_index_is_not_waited_on(shards):
    """The index is a shortcut: a FIFO in its place is not opened for reading (it would wait for a
    writer forever); the shard is scanned instead, its samples all read."""
    indexes = sorted(shards.glob("*.tar.idx.json"))
    assert indexes
    for index in indexes:
        index.unlink()
        os.mkfifo(index)
    status, err = child_cli("data", "info", "wds", "--json", cwd=shards.parent)
    assert status == 0, err


def test_a_deep_shard_index_is_ignored_and_the_shard_scanned(shards, run_cli):
    for index in shards.glob("*.tar.idx.json"):
        index.write_text(DEEP)
    status, out, err = run_cli("data", "info", shards, "--json")
    assert status == 0, err
    assert sum(split["images"] for split in json.loads(out)["splits"].values()) > 0


def test_a_deep_shard_manifest_is_one_line(shards, run_cli):
    (shards / "manifest.json").write_text(DEEP)
    status, _, err = run_cli("data", "info", shards)
    assert "manifest.json is not a manifest written by" in one_line_error(status, err)


@pytest.fixture
def saved(tmp_path) -> Path:
    """A ``DatasetDict.save_to_disk`` folder, as far as its JSON goes (the Arrow files come later)."""
    root = tmp_path / "saved"
    (root / "train").mkdir(parents=True)
    (root / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    return root


@pytest.mark.parametrize("name", ["dataset_dict.json", "train/state.json"])
def test_deep_save_to_disk_json_is_one_line(saved, name, run_cli):
    (saved / name).write_text(DEEP)
    status, _, err = run_cli("data", "info", saved)
    assert f"{Path(name).name}: {DEEP_LINE}" in one_line_error(status, err)


def test_a_fifo_state_json_is_refused_without_waiting(saved):
    state = saved / "train" / "state.json"
    state.unlink()
    os.mkfifo(state)
    status, err = child_cli("data", "info", "saved", cwd=saved.parent)
    assert "state.json is a FIFO, not a regular file" in one_line_error(status, err)


def test_deep_arrow_schema_metadata_declares_no_features():
    import pyarrow as pa

    from resnets.data.hfdata import _features

    schema = pa.schema([("image", pa.binary())], metadata={b"huggingface": DEEP.encode()})
    assert _features(schema) == {}


def test_a_deep_lmdb_meta_record_is_one_line(tmp_path, run_cli):
    import lmdb

    path = tmp_path / "deep.lmdb"
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=2**22)
    with env.begin(write=True) as txn:
        txn.put(b"__meta__", DEEP.encode())
        txn.put(b"__labels__", b"\0\0\0\0")
    env.close()
    status, _, err = run_cli("data", "info", path)
    assert "__meta__ record is not the JSON object" in one_line_error(status, err)


def test_a_deep_keras_config_is_one_line(tmp_path):
    pytest.importorskip("h5py")
    from resnets.weights.keras import read_keras

    archive = tmp_path / "model.keras"
    with __import__("zipfile").ZipFile(archive, "w") as zipped:
        zipped.writestr("config.json", DEEP)
        zipped.writestr("model.weights.h5", b"")
    with pytest.raises(ResnetsError) as refused:
        read_keras(archive)
    message = str(refused.value)
    assert f"config.json: {DEEP_LINE}" in message and "\n" not in message


def test_deep_class_weights_are_one_line(images, tmp_path, run_cli):
    weights = tmp_path / "weights.json"
    weights.write_text(DEEP)
    status, _, err = run_cli("train", "--model", "resnet20", "--data", images, "--epochs", "1",
                             "--class-weights", weights, "--out", tmp_path / "run", "--no-progress")
    assert f"--class-weights {weights}: {DEEP_LINE}" in one_line_error(status, err)


def test_a_deep_run_config_is_one_line_on_resume_and_evaluate(images, tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(DEEP)
    status, _, err = run_cli("train", "--resume", run, "--no-progress")
    assert f"config.json: {DEEP_LINE}" in one_line_error(status, err)
    status, _, err = run_cli("evaluate", run, "--data", images)
    assert f"config.json: {DEEP_LINE}" in one_line_error(status, err)


# -- an atomic write's target -----------------------------------------------------------------------
WRITE_OVER_LINK = """
import os, resource, sys
from resnets.fileio import atomic_write_bytes

def no_hard_links(*args, **kwargs):
    raise PermissionError(1, "Operation not permitted")

os.link = no_hard_links  # a file system without hard links: the backup falls back to a copy
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # a copy of /dev/zero stops at 1 MiB
atomic_write_bytes(sys.argv[1], b"new")
"""


def no_hard_links(*args, **kwargs):
    raise PermissionError(1, "Operation not permitted")


def test_a_link_to_dev_zero_at_a_write_target_is_replaced_not_followed(tmp_path):
    """The backup of what stands at the target is the link itself: following it, the fallback copy
    (where hard links fail) of ``/dev/zero`` never ended (here: stopped by a file-size limit, in a
    child under a timeout)."""
    target = tmp_path / "out.bin"
    target.symlink_to("/dev/zero")
    done = subprocess.run([sys.executable, "-c", WRITE_OVER_LINK, str(target)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, done
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no backup, no temporary file left


@pytest.mark.parametrize("hard_links", [True, False])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_at_a_target_is_restored_as_a_link_when_the_set_fails(tmp_path, monkeypatch, hard_links,
                                                                    dangling):
    """The second rename fails: the first target gets back what stood there, the link itself,
    pointing where it did (a copy of the file it names, or nothing for a dangling link, before)."""
    from resnets.fileio import atomic_paths

    real = tmp_path / "real.bin"
    if not dangling:
        real.write_bytes(b"old")
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.symlink_to(real)
    if not hard_links:
        monkeypatch.setattr(os, "link", no_hard_links)
    replace = os.replace

    def failing(src, dst, **kwargs):
        if Path(dst) == second:
            raise OSError(28, "No space left on device", str(dst))
        return replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        with atomic_paths(first, second) as (a, b):
            a.write_bytes(b"new")
            b.write_bytes(b"new")
    assert first.is_symlink() and os.readlink(first) == str(real)
    assert dangling or real.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.bin"] + ["real.bin"] * (not dangling)


def test_the_backup_link_a_killed_write_left_is_removed_by_the_next(tmp_path):
    """A write killed between its renames leaves the link it kept as a backup (``.NAME.PID-HEX.bak``);
    the next complete write removes it once its writer is gone, as it removes a backup file."""
    from resnets.fileio import ABANDONED_S, atomic_write_bytes

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / "out.bin"
    leftover = tmp_path / f".out.bin.{int(child.stdout)}-0123abcd.bak"
    leftover.symlink_to("/dev/zero")
    old = os.lstat(leftover).st_mtime - 2 * ABANDONED_S
    os.utime(leftover, (old, old), follow_symlinks=False)
    atomic_write_bytes(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
