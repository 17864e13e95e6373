"""``resnets data info`` and ``resnets data pack``: outputs, and one-line errors with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _data_helpers import make_tree
from resnets.cli import main


def run(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_missing_path_is_one_line_and_status_2(tmp_path, capsys):
    assert run(["data", "info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"resnets: error: no such data set: {tmp_path / 'nope'}\n"
    assert run(["data", "pack", str(tmp_path / "nope"), str(tmp_path / "out.lmdb")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out.lmdb").exists()


def test_missing_path_via_subprocess(tmp_path):
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "resnets", "data", "info", str(tmp_path / "nope")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"resnets: error: no such data set: {tmp_path / 'nope'}\n"


def test_pack_then_info_json(tmp_path, capsys):
    make_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "bad.jpg").write_bytes(b"")
    assert run(["data", "pack", str(tmp_path / "tree"), str(tmp_path / "t.lmdb"), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["splits"] == {"train": 15, "val": 15} and summary["skipped"][0].endswith("bad.jpg")
    assert "packing" in err  # progress bar on stderr
    assert f"resnets: warning: skipped unreadable image {tmp_path / 'tree' / 'train' / 'cat' / 'bad.jpg'}\n" in err
    assert "resnets: warning: skipped 1 unreadable image(s) of 31" in err
    assert run(["data", "info", str(tmp_path / "t.lmdb"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "lmdb" and report["splits"]["train"]["per_class"] == {"cat": 5, "dog": 5, "emu": 5}


def test_info_check_lists_unreadable_files(tmp_path, capsys):
    make_tree(tmp_path, splits=(None,), per_class=2)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert run(["data", "info", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "folder, 3 classes" in out and "all: 7 images" in out and "unreadable: 1" in out
    assert str(tmp_path / "dog" / "broken.jpg") in out
