"""The command line's frame: a lazy top-level parser (``resnets --help`` imports no command and no
torch), "did you mean" for misspelt commands, choices and flags, defaults in every help, and where
the tests find the shared data sets."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _data_helpers
from resnets.cli import COMMANDS, _HelpFormatter, _shows_default, build_parser

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(SRC), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_top_level_help_and_version_import_no_command_nor_torch(flag):
    started = time.monotonic()
    done = _python(
        "import sys\nfrom resnets.cli import main\n"
        f"try:\n    main([{flag!r}])\nexcept SystemExit as exited:\n    assert exited.code == 0, exited.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'resnets.cli.')))\n"
        "print('LOADED', loaded)\n")
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout
    assert time.monotonic() - started < 60  # a sanity bound only: it takes well under a second
    if flag == "--help":
        for name, (_, help_line) in COMMANDS.items():
            assert f"    {name} " in done.stdout and help_line.split()[0] in done.stdout


def test_console_script_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "resnets", "--help"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0 and done.stderr == ""
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert set(COMMANDS) <= listed


def test_a_command_imports_only_its_own_module():
    done = _python(
        "import sys\nfrom resnets.cli import main\n"
        "try:\n    main(['demo', '--help'])\nexcept SystemExit as exited:\n    assert exited.code == 0\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('resnets.cli.')))\n")
    assert done.returncode == 0, done.stderr
    assert "LOADED ['resnets.cli.demo']" in done.stdout
    assert "--out OUT" in done.stdout  # demo's own options: its full parser


def test_static_table_matches_what_the_modules_register():
    subparsers = _subparsers(build_parser())
    registered = {action.dest: action.help for action in subparsers._choices_actions}
    assert registered == {name: help_line for name, (_, help_line) in COMMANDS.items()}
    assert list(registered) == list(COMMANDS)  # the order `resnets --help` lists them


@pytest.mark.parametrize("argv", [["train", "--epochs", "3", "--data", "x"], ["search", "index.parquet", "a.jpg"],
                                  ["data", "info", "folder"], ["--version"]])
def test_build_parser_with_argv_registers_the_named_command(argv):
    parser = build_parser(argv)
    name = next((word for word in argv if not word.startswith("-")), None)
    for command, sub in _subparsers(parser).choices.items():
        has_options = len(sub._actions) > 1  # more than -h
        assert has_options == (command in ("embed", "search") if name == "search" else command == name), command
    if name is not None:
        assert callable(parser.parse_args(argv).handler)


def test_build_parser_without_argv_registers_every_command():
    for command, sub in _subparsers(build_parser()).choices.items():
        assert len(sub._actions) > 1, command


@pytest.mark.parametrize("argv, expected", [
    (["train", "--batchsize", "8"], "unrecognized arguments: --batchsize (did you mean --batch-size?)"),
    (["models", "--jsn"], "unrecognized arguments: --jsn (did you mean --json?)"),
    (["data", "pack", "a", "b", "--fromat=wds"], "unrecognized arguments: --fromat=wds (did you mean --format?)"),
    (["models", "--zzzzzz"], "unrecognized arguments: --zzzzzz"),
    (["models", "a", "b"], "unrecognized arguments: b"),
    (["trian"], "argument COMMAND: invalid choice: 'trian' (did you mean train?)"),
    (["lr_find"], "argument COMMAND: invalid choice: 'lr_find' (did you mean lr-find?)"),
    (["data", "pakc"], "argument ACTION: invalid choice: 'pakc' (did you mean pack?)"),
    (["export", "resnet18", "--format", "onx"], "argument --format: invalid choice: 'onx' (did you mean onnx?)"),
])
def test_misspellings_get_one_line_with_a_suggestion(run_cli, argv, expected):
    status, out, err = run_cli(*argv)
    assert (status, out, err) == (2, "", f"resnets: error: {expected}\n")


def test_unknown_command_without_a_close_match_lists_the_commands(run_cli):
    status, _, err = run_cli("xyzzy")
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("resnets: error: argument COMMAND: invalid choice: 'xyzzy' (choose from ")
    assert all(repr(name) in err for name in COMMANDS)


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_help_shows_defaults_once():
    checked = 0
    for parser in _all_parsers(build_parser()):
        formatter = _HelpFormatter(parser.prog)
        for action in parser._actions:
            if action.help is argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text.count("(default:") <= 1, (parser.prog, text)
            if _shows_default(action):
                assert "default" in text, (parser.prog, action.option_strings, text)
                checked += 1
    assert checked > 50


def test_help_shows_defaults_of_options_without_help_text(run_cli):
    status, out, _ = run_cli("demo", "--help")
    assert status == 0
    assert "--model MODEL    (default: resnet20)" in out and "--epochs EPOCHS  (default: 10)" in out
    status, out, _ = run_cli("train", "--help")
    assert status == 0 and "(default: 10)" in out and "(default: 10) (default" not in out


def test_shared_data_folder_comes_from_the_environment(tmp_path):
    code = "import _data_helpers; print(_data_helpers.SHARED_DATA)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent, env={**os.environ, "RESNETS_SHARED_DATA": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RESNETS_SHARED_DATA"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent, env=env)
    assert Path(done.stdout.strip()) == Path(__file__).resolve().parents[2] / "shared" / "data"


def test_absent_shared_data_skips_saying_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setattr(_data_helpers, "SHARED_DATA", tmp_path)
    with pytest.raises(pytest.skip.Exception, match="set RESNETS_SHARED_DATA to the folder holding cifar10-jpeg.zip"):
        _data_helpers.shared_file("cifar10-jpeg.zip")
    (tmp_path / "cifar10-jpeg.zip").write_bytes(b"")
    assert _data_helpers.shared_file("cifar10-jpeg.zip") == tmp_path / "cifar10-jpeg.zip"
