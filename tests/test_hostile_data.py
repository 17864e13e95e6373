"""Hostile data on disk: every case ends in one line (status 2) or a warning (status 0), never a
signal, a traceback, a hang, unbounded memory or a wrong label.

Cases that could crash, block or eat memory run ``resnets`` in a forked child (it starts in
milliseconds, having the parent's imports) under a timeout of a few seconds; its peak memory
comes from ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import sys
import tarfile
import time
import traceback
import zipfile
import zlib
from pathlib import Path

import lmdb
import pytest

from _data_helpers import make_tree, write_cifar10
from resnets.cli import main
from resnets.data import BadImageError, BadImageWarning, open_dataset, pack_lmdb
from resnets.data.images import MAX_IMAGE_BYTES

TIMEOUT_S = 10.0  # a forked `data info` of a dozen tiny files takes 0.2 s
GIB = 2**30


def resident_bytes() -> int:
    """This process's resident memory now: a forked child starts with it (its peak counts it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_forked(argv: list[str], tmp_path: Path, timeout: float = TIMEOUT_S) -> tuple[int, str, str, int]:
    """``resnets ARGV`` in a forked child: (exit status or -signal, stdout, stderr, peak RSS bytes
    the child added to what it inherited: the pytest worker's own memory depends on the tests it ran).

    The child is killed (and the test failed) when it outlives ``timeout``.
    """
    out_path, err_path = tmp_path / "child.out", tmp_path / "child.err"
    inherited = resident_bytes()
    pid = os.fork()
    if pid == 0:  # the child: run the CLI, never return into pytest
        code = 1
        try:
            sys.stdout = open(out_path, "w", encoding="utf-8")
            sys.stderr = open(err_path, "w", encoding="utf-8", errors="backslashreplace")
            main(argv)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported in stderr for the test to see
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            pytest.fail(f"`resnets {' '.join(argv)}` still ran after {timeout} s (hang)")
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) - inherited
    return code, out_path.read_text(), err_path.read_text(), peak


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("resnets: error: ")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def photos(root: Path) -> Path:
    """root/cat/000..005.png and root/dog/000..005.png: 12 images, 6 per class."""
    make_tree(root, splits=(None,), classes=("cat", "dog"), per_class=6, size=(8, 8))
    return root


# --- LMDB -------------------------------------------------------------------------------------

def test_truncated_lmdb_is_one_line_not_sigbus(tmp_path):
    pack_lmdb(photos(tmp_path / "photos"), tmp_path / "good.lmdb", progress=False)
    data = (tmp_path / "good.lmdb").read_bytes()
    (tmp_path / "cut.lmdb").write_bytes(data[: 3 * 4096])  # both meta pages, not the tree
    code, out, err, _ = run_forked(["data", "info", str(tmp_path / "cut.lmdb")], tmp_path)
    assert code == 2, (code, err)  # -7 (SIGBUS) before the size check
    assert_one_line_error(err, "truncated")
    assert out == ""


def test_lmdb_pointing_past_its_own_pages_is_one_line(tmp_path):
    pack_lmdb(photos(tmp_path / "photos"), tmp_path / "good.lmdb", progress=False)
    data = bytearray((tmp_path / "good.lmdb").read_bytes())
    for meta_page in (0, 4096):  # the main tree's root page number (MDB_meta.mm_dbs[1].md_root)
        struct.pack_into("<Q", data, meta_page + 16 + 24 + 48 + 40, 10**6)
    (tmp_path / "doctored.lmdb").write_bytes(bytes(data))
    code, _, err, _ = run_forked(["data", "info", str(tmp_path / "doctored.lmdb")], tmp_path)
    assert code == 2, (code, err)
    assert_one_line_error(err, "doctored.lmdb")


def _lmdb_with(path: Path, meta: bytes, labels: bytes) -> Path:
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=2**22)
    with env.begin(write=True) as txn:
        txn.put(b"__meta__", meta)
        txn.put(b"__labels__", labels)
        txn.put(b"%09d" % 0, struct.pack("<IH", 0, 1) + b"a" + b"not an image")
    env.close()
    return path


GOOD_META = {"format": "resnets-lmdb", "version": 1, "classes": ["cat", "dog"], "splits": {"": [0, 1]}}


@pytest.mark.parametrize("meta, labels, message", [
    (b"\xff not json", b"\0\0\0\0", "not the JSON object"),
    (json.dumps([1, 2]).encode(), b"\0\0\0\0", "not the JSON object"),
    (json.dumps({**GOOD_META, "classes": None}).encode(), b"\0\0\0\0", "no class names"),
    (json.dumps({**GOOD_META, "classes": [1, 2]}).encode(), b"\0\0\0\0", "no class names"),
    (json.dumps({**GOOD_META, "splits": {"": [0, 5]}}).encode(), b"\0\0\0\0", "splits"),
    (json.dumps({**GOOD_META, "splits": {"": "all"}}).encode(), b"\0\0\0\0", "splits"),
    (json.dumps({**GOOD_META, "splits": None}).encode(), b"\0\0\0\0", "splits"),
    (json.dumps(GOOD_META).encode(), b"\0\0\0", "int32"),
    (json.dumps(GOOD_META).encode(), struct.pack("<i", 7), "labels outside"),
    (json.dumps({**GOOD_META, "version": "x" * 10}).encode(), b"\0\0\0\0", "unsupported layout"),
])
def test_lmdb_metadata_not_written_by_pack_is_one_line(tmp_path, capsys, meta, labels, message):
    path = _lmdb_with(tmp_path / "odd.lmdb", meta, labels)
    code, out, err = cli(["data", "info", path], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, message)


def test_lmdb_record_shorter_than_its_header_is_one_line(tmp_path, capsys):
    path = _lmdb_with(tmp_path / "short.lmdb", json.dumps(GOOD_META).encode(), b"\0\0\0\0")
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=2**22)
    with env.begin(write=True) as txn:
        txn.put(b"%09d" % 0, b"\x01")
    env.close()
    code, _, err = cli(["data", "info", path, "--check"], capsys)
    assert code == 2
    assert_one_line_error(err, "too short")


# --- folders: symlinks, special files, sizes ----------------------------------------------------

def test_symlink_loops_are_not_followed_and_label_nothing_wrongly(tmp_path):
    root = photos(tmp_path / "photos")
    (root / "cat" / "up").symlink_to("..")  # photos/cat/up/dog/*.png would be labelled "cat"
    (root / "dog" / "back").symlink_to("..")  # two loops: exponential under followlinks=True
    (root / "cat" / "dogs").symlink_to(root / "dog")
    code, out, err, _ = run_forked(["data", "info", str(root), "--json"], tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert report["classes"] == ["cat", "dog"]
    assert report["splits"]["all"] == {"images": 12, "per_class": {"cat": 6, "dog": 6}}
    assert f"resnets: warning: skipped {root / 'cat' / 'up'}: symbolic links to folders are not followed" in err
    assert "Traceback" not in err


def test_predict_inputs_walk_without_following_folder_links(tmp_path):
    from resnets.predict import expand_inputs

    root = photos(tmp_path / "photos")
    (root / "cat" / "up").symlink_to("..")
    (root / "extra.png").symlink_to(root / "cat" / "000.png")  # a link to a file is followed
    with pytest.warns(BadImageWarning, match="symbolic links to folders are not followed"):
        found = expand_inputs([root])
    assert len(found) == 13 and len(set(found)) == 13
    assert all("/up/" not in str(path) for path in found)


def test_dev_zero_named_png_is_not_read(tmp_path):
    root = photos(tmp_path / "photos")
    (root / "cat" / "zero.png").symlink_to("/dev/zero")
    code, out, err, peak = run_forked(["data", "info", str(root), "--check"], tmp_path)
    assert code == 0, err
    assert peak < GIB, f"peak memory {peak / 2**20:.0f} MiB"
    assert "all: 12 images" in out and "unreadable: 0" in out
    assert f"resnets: warning: skipped {root / 'cat' / 'zero.png'}: not a regular file" in err
    # named directly as a data set, it is refused before anything is read
    (tmp_path / "zero.zip").symlink_to("/dev/zero")
    code, _, err, peak = run_forked(["data", "info", str(tmp_path / "zero.zip")], tmp_path)
    assert code == 2 and peak < GIB
    assert_one_line_error(err, "neither a folder nor a regular file")


def test_dev_zero_is_refused_by_the_file_reader(tmp_path):
    """The reader itself (what every folder dataset reads through) checks the open file."""
    from resnets.data.images import read_image_file

    (tmp_path / "zero.png").symlink_to("/dev/zero")
    inherited = resident_bytes()
    pid = os.fork()
    if pid == 0:
        try:
            read_image_file(tmp_path / "zero.png")
            os._exit(3)
        except BadImageError as error:
            os._exit(0 if "not a regular file" in str(error) else 4)
        except BaseException:  # noqa: BLE001
            os._exit(5)
    deadline = time.monotonic() + TIMEOUT_S
    while not (result := os.wait4(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            pytest.fail("read_image_file read /dev/zero without end")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(result[1]) == 0
    assert result[2].ru_maxrss * 1024 - inherited < GIB


@pytest.mark.parametrize("name", ["cat/fifo.png", "fifo.zip"])
def test_fifo_never_blocks(tmp_path, name):
    root = photos(tmp_path / "photos")
    fifo = (root if "/" in name else tmp_path) / name
    os.mkfifo(fifo)
    target = root if "/" in name else fifo
    code, out, err, _ = run_forked(["data", "info", str(target), "--check"], tmp_path)
    if "/" in name:  # inside a folder: left out with a warning, the rest is read
        assert code == 0, err
        assert "all: 12 images" in out
        assert f"resnets: warning: skipped {fifo}: not a regular file" in err
    else:  # named as the data set: one line
        assert code == 2
        assert_one_line_error(err, "neither a folder nor a regular file")


def test_fifo_given_to_predict_is_skipped_not_opened(tmp_path):
    from resnets.predict import expand_inputs

    os.mkfifo(tmp_path / "fifo.png")
    with pytest.warns(BadImageWarning, match="not a regular file"):
        assert expand_inputs([tmp_path / "fifo.png"]) == []


def test_oversized_file_is_skipped_before_reading(tmp_path, capsys):
    root = photos(tmp_path / "photos")
    with open(root / "cat" / "huge.png", "wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_IMAGE_BYTES + 1)
    code, out, err = cli(["data", "info", root, "--check"], capsys)
    assert code == 0 and "unreadable: 1" in out and "huge.png" in out
    dataset = open_dataset(root)
    index = next(i for i in range(len(dataset)) if dataset.describe(i).endswith("huge.png"))
    with pytest.raises(BadImageError, match=f"more than the {MAX_IMAGE_BYTES}"):
        dataset[index]  # refused on its size, not after reading it


def test_decompression_bomb_limit_stays_on(tmp_path, capsys):
    root = photos(tmp_path / "photos")
    side = 100_000  # 10 gigapixels declared, in a 60-byte file

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    (root / "cat" / "bomb.png").write_bytes(bomb)
    code, out, err = cli(["data", "info", root, "--check"], capsys)
    assert code == 0 and "unreadable: 1" in out and "bomb.png" in out


# --- zip archives ---------------------------------------------------------------------------------

def _set_flag(archive: Path, member: str, flag: int) -> None:
    """Set a general-purpose flag bit of ``member`` in both its local and central headers."""
    raw = bytearray(archive.read_bytes())
    name = member.encode()
    for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = raw.find(signature)
        while start >= 0:
            if raw[start + name_at:start + name_at + len(name)] == name:
                raw[start + flag_at] |= flag
            start = raw.find(signature, start + 4)
    archive.write_bytes(bytes(raw))


def _corrupt_stored(archive: Path, member: str) -> None:
    """Flip one byte of a stored member's data (its CRC no longer matches)."""
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(member)
    data_at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_at + info.file_size // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))


def photos_zip_with(tmp_path: Path, extra_members: list) -> Path:
    """A zip of the 12 good photos plus ``extra_members`` (names or ZipInfos), each a copy of one photo."""
    root = photos(tmp_path / "photos")
    archive = tmp_path / "photos.zip"
    png = (root / "cat" / "000.png").read_bytes()
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(root.rglob("*.png")):
            handle.write(path, path.relative_to(root).as_posix())
        for member in extra_members:
            handle.writestr(member, png)
    return archive


def test_zip_members_with_bad_crc_or_encryption_are_skipped_like_corrupt_images(tmp_path, capsys):
    archive = photos_zip_with(tmp_path, ["cat/crc.png", "dog/locked.png"])
    _corrupt_stored(archive, "cat/crc.png")
    _set_flag(archive, "dog/locked.png", 0x1)
    code, out, err = cli(["data", "pack", archive, tmp_path / "out.lmdb", "--json"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["splits"] == {"all": 12}
    assert sorted(summary["skipped"]) == [f"{archive}:cat/crc.png", f"{archive}:dog/locked.png"]
    assert f"resnets: warning: skipped unreadable image {archive}:cat/crc.png" in err
    assert f"resnets: warning: skipped unreadable image {archive}:dog/locked.png" in err
    code, out, err = cli(["data", "info", archive, "--check"], capsys)
    assert code == 0 and "unreadable: 2" in out


def test_zip_members_with_absolute_or_parent_paths_are_ignored(tmp_path, capsys):
    archive = photos_zip_with(tmp_path, [zipfile.ZipInfo(name) for name in
                                         ("/etc/evil.png", "/abs/x.png", "../dog/up.png", "cat//double.png")])
    code, out, err = cli(["data", "info", archive, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["classes"] == ["cat", "dog"]  # never a class named ""
    assert report["splits"]["all"] == {"images": 12, "per_class": {"cat": 6, "dog": 6}}
    for member in ("/etc/evil.png", "/abs/x.png", "../dog/up.png", "cat//double.png"):
        assert f"resnets: warning: skipped {archive}:{member}: zip member with an absolute path" in err


# --- CIFAR ---------------------------------------------------------------------------------------

def test_truncated_cifar_tarball_is_one_line(tmp_path, capsys):
    write_cifar10(tmp_path / "cifar-10-batches-py", batch_size=100)
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "cifar-10-batches-py", "cifar-10-batches-py")
    data = (tmp_path / "cifar.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) * 2 // 3])
    code, out, err = cli(["data", "info", tmp_path / "cut.tar.gz"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "cannot read archive")


@pytest.mark.parametrize("meta", [{b"num_cases_per_batch": 4}, {b"label_names": []},
                                  {b"label_names": [1, 2, 3]}, [b"plane"]])
def test_cifar_metadata_without_label_names_is_one_line(tmp_path, capsys, meta):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    code, _, err = cli(["data", "info", folder], capsys)
    assert code == 2
    assert_one_line_error(err, "batches.meta")


def test_cifar_batch_with_bad_labels_is_one_line(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, batch_size=2)
    batch = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    batch[b"labels"] = [b"x", None]
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    code, _, err = cli(["data", "pack", folder, tmp_path / "c.lmdb"], capsys)
    assert code == 2
    assert_one_line_error(err, "data_batch_1")


# --- non-UTF-8 names -----------------------------------------------------------------------------

def _non_utf8_tree(root: Path) -> Path:
    """photos with the cat folder renamed b"caf\\xe9" and one dog file b"x\\xff.png"."""
    photos(root)
    os.rename(root / "cat", os.fsencode(root) + b"/caf\xe9")
    os.rename(root / "dog" / "000.png", os.fsencode(root / "dog") + b"/x\xff.png")
    return root


def test_non_utf8_names_in_pack_and_info(tmp_path, capsys):
    root = _non_utf8_tree(tmp_path / "photos")
    code, out, err = cli(["data", "pack", root, tmp_path / "p.lmdb", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["classes"] == ["caf\\xe9", "dog"]
    code, out, err = cli(["data", "info", root, "--check"], capsys)
    assert code == 0 and "unreadable: 0" in out
    code, out, err = cli(["data", "info", tmp_path / "p.lmdb", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["splits"]["all"]["per_class"] == {"caf\\xe9": 6, "dog": 6}
    code, out, _ = cli(["data", "info", tmp_path / "p.lmdb", "--check"], capsys)
    assert code == 0 and "unreadable: 0" in out
    odd_destination = os.fsdecode(os.fsencode(tmp_path) + b"/p\xff.lmdb")
    code, out, err = cli(["data", "pack", root, odd_destination], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path}/p\\xff.lmdb: all 12 images")


def test_non_utf8_names_in_evaluate(tmp_path, capsys):
    from _train_fixtures import TINY
    from resnets.factory import create_model
    from resnets.weights.format import save_weights

    root = _non_utf8_tree(tmp_path / "photos")
    model = create_model("resnet20", num_classes=2, **TINY)
    save_weights(tmp_path / "w.safetensors", model, class_names=["caf\\xe9", "dog"])
    code, out, err = cli(["evaluate", tmp_path / "w.safetensors", "--data", root], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "caf\\xe9" in out and "12 images" in out


# --- folders where files are expected, and files where folders are --------------------------------

def test_folder_where_a_file_is_expected_and_the_reverse(tmp_path, capsys):
    root = photos(tmp_path / "photos")
    cases = [
        (["data", "pack", root, root / "cat" / "000.png" / "out.lmdb"], "is a file, not a folder"),
        (["data", "pack", root, root / "cat"], "is a folder"),
        (["data", "info", root / "cat" / "000.png"], "unknown data format"),
    ]
    (tmp_path / "empty.zip").mkdir()
    cases.append((["data", "info", tmp_path / "empty.zip"], "no images found"))
    cifar = tmp_path / "cifar-10-batches-py"
    write_cifar10(cifar)
    (cifar / "batches.meta").unlink()
    (cifar / "batches.meta").mkdir()  # a folder where the CIFAR meta file should be
    cases.append((["data", "info", cifar], "no images found"))
    for argv, message in cases:
        code, out, err = cli(argv, capsys)
        assert code == 2, (argv, err)
        assert_one_line_error(err, message)
    assert not (root / "cat" / "000.png").is_dir()
