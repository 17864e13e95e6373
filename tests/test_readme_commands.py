"""Every shell line of the README runs here, as a user would type it, in README order.

The lines are those of the README's ```bash blocks, the ``$ ...`` lines of its transcripts and the
lines of its other command blocks (a line ending in ``\\`` or ``|`` joined with the next). They run
one after another in one temporary folder, so a line finds what the lines above it made
(``runs/c10`` is trained, resumed, evaluated, predicted with and exported, in that order). The
files the README names are small stand-ins under the README's own names: ``cifar10-jpeg.zip`` a
CIFAR-like zip of 32x32 JPEGs (``train/`` and ``test/``, CIFAR-10's classes), ``photos/``,
``pets/``, ``xrays/`` (grayscale) and ``skin/`` (imbalanced) tiny image folders, ``shapes/`` a
multi-label set with a ``path,labels`` csv, ``holiday/``, ``holiday.zip`` and ``picks.txt`` photos
without classes, Keras and Caffe ResNet-50 files written by Keras and by our Caffe exporter, and a
weights cache holding resnet18 and resnet50 files as after a download (tests/test_readme.py's
folder). ``resnets ...`` runs in this process through the command line's ``main`` (a fresh
interpreter would spend seconds importing torch for each), ``python benchmarks/...`` through
``runpy`` as ``__main__``; ``--procs 2`` still starts its own processes.

What is changed in a line, only for speed (fewer epochs, a smaller budget, a smaller model where a
method's cost grows with it), is in one table, SUBSTITUTED; what does not run here, with its
reason, is in SKIPPED; a line that fails because of a bug in src/ is an expected failure,
the bug named, in SRC_BUGS; the Serve section's lines run against a real server in
tests/test_serve_readme.py (RUN_ELSEWHERE). A README line in none of them and without a runner
fails test_every_readme_shell_line_is_run_or_listed. Each run must exit 0, make the files it names
(``--out``, ``--report``, ``--map``, a converted or packed file, a run folder's weights) and, with
``--json``, print one JSON document.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _multilabel_data import make_shapes
from test_readme import FENCE, README, fill_readme_folder
from weights_helpers import real_photo

REPO = Path(__file__).resolve().parents[1]
# Keras, writing the stand-in .h5, warns hundreds of times about numpy 2's copy keyword.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# -- what is changed, skipped or run elsewhere ------------------------------------------------------
# README line -> (old, new) replacements in it, each found exactly once, and why.
SUBSTITUTED: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "make demo": (
        (("make demo", "resnets demo --out runs/demo --epochs 1"),),
        "the Makefile's demo target runs `resnets demo --out runs/demo` once .venv is installed "
        "(checked below); 1 of its 10 epochs"),
    "resnets train --model resnet20 --data cifar10-jpeg.zip --minutes 30 --out runs/c10-30min": (
        (("--minutes 30", "--minutes 0.1"),), "a 6-second budget plans one or two epochs"),
    "resnets train --model resnet20 --data cifar10-jpeg.zip --epochs 30 --batch-size 256 --lr 0.4 --sched onecycle "
    "--label-smoothing 0.1 --channels-last --out runs/c10": (
        (("--epochs 30", "--epochs 5 --stop-after 1"),),
        "5 epochs, stopped (resumable) after the first, so that the next line's --resume has four to run"),
    "resnets train --model resnet18 --weights imagenet --freeze backbone --data photos/ --epochs 10 --opt adamw "
    "--lr 3e-3 --out runs/ft": (
        (("--epochs 10", "--epochs 2"),), "2 epochs: each writes a ResNet-18 checkpoint"),
    "resnets train --weights runs/c10 --data photos/ --freeze stem,layer1 --head-lr 0.1 --lr 0.01 "
    "--unfreeze-after 3 --out runs/ft2": (
        (("--unfreeze-after 3", "--unfreeze-after 3 --epochs 4"),),
        "4 of the default 10 epochs: the unfreezing after 3 still happens"),
    "resnets train --model resnet20 --data cifar10-jpeg.zip --procs 2 --max-minutes 60 --out runs/c10-hour": (
        (("--max-minutes 60", "--max-minutes 60 --epochs 1"),), "1 of the default 10 epochs"),
    "resnets train --config cifar10-resnet-paper --data cifar10-jpeg.zip --out runs/paper": (
        (("--out runs/paper", "--epochs 1 --out runs/paper"),), "1 of the recipe's 164 epochs"),
    "resnets lr-find --model resnet50 --weights imagenet --data pets/ --out lr.png": (
        (("--model resnet50", "--model resnet18"), ("--out lr.png", "--steps 15 --batch-size 2 --out lr.png")),
        "15 steps of 2 images through a ResNet-18 instead of 200 of 128 through a ResNet-50 (with 10, a "
        "random net on random pixels diverges before the sweep has the points the suggestions read)"),
    "resnets train --model resnet18 --weights imagenet --in-chans 1 --data xrays/ --out runs/gray": (
        (("--out runs/gray", "--epochs 1 --out runs/gray"),), "1 of the default 10 epochs of a ResNet-18 at 224"),
    "resnets train --model resnet18 --weights imagenet --data skin/ --class-weights auto --sampler balanced "
    "--augment-policy trivialaugment --random-erasing 0.25 --aug-repeats 2 --out runs/skin": (
        (("--out runs/skin", "--epochs 1 --out runs/skin"),), "1 of the default 10 epochs of a ResNet-18 at 224"),
    "resnets train --model resnet20 --data shapes/labels.csv --val-split 0.2 --lr 0.1 --epochs 10 --out runs/shapes": (
        (("--epochs 10", "--epochs 2"),), "2 epochs"),
    "resnets train --config cifar10-resnet9-fast --data cifar10-jpeg.zip --out runs/r9": (
        (("--out runs/r9", "--epochs 3 --out runs/r9"),), "3 of the recipe's 12 epochs (its warm-up is 2.5)"),
    "resnets train --config cifar10-airbench --data cifar10-jpeg.zip --out runs/airbench": (
        (("--out runs/airbench", "--epochs 1 --out runs/airbench"),), "1 of the recipe's 8 epochs"),
    "python benchmarks/cifar10_time_to_accuracy.py --minutes 60 --baseline cifar10-resnet9-fast": (
        (("--minutes 60", "--minutes 0.1"),),
        "a 6-second budget; its default --data, $RESNETS_SHARED_DATA/cifar10-jpeg.zip, is the stand-in"),
    "python benchmarks/imagenette_budget.py --minutes 14 --reference": (
        (("--minutes 14", "--minutes 0.1"),),
        "a 6-second budget; its default --data, $RESNETS_SHARED_DATA/imagenette-224-train.zip, is the stand-in"),
    "resnets train --config imagenette-resnet20-budget --data imagenette-224-train.zip --minutes 14 --out runs/nette": (
        (("--minutes 14", "--minutes 0.1"),), "a 6-second budget on the stand-in"),
    "resnets explain resnet50 photo.jpg --method scorecam --class tabby --layer layer3.5 --out cams/": (
        (("explain resnet50", "explain resnet18"), ("--layer layer3.5", "--layer layer1.1")),
        "ScoreCAM runs the model once per channel of the layer: 1024 ResNet-50 passes (minutes here) "
        "become 64 ResNet-18 passes"),
    "resnets explain runs/nette6 photo.jpg --out maps/": (
        (("runs/nette6", "runs/ft"),), "the transcript's six-class Imagenette run is the README's runs/ft"),
    "resnets bench resnet18 resnet50 --backend eager,onnxruntime,openvino --batch-size 1,8,32 --json": (
        (("--batch-size 1,8,32", "--batch-size 1 --img-size 32 --reps 1 --warmup 0"),),
        "one timed call at batch 1 of 32x32 images (three batch sizes at 224 take minutes here)"),
    "resnets compare --models resnet18,resnet50,mobilenet_v3_large --json": (
        (("--json", "--img-size 32 --reps 1 --warmup 0 --json"),), "one timed call of 32x32 images"),
}

# README line -> why it does not run here.
SKIPPED: dict[str, str] = {
    "make test": "the test suite itself, this test included",
    "python3 -m venv .venv && .venv/bin/pip install torch==2.14.1 torchvision==0.29.1":
        "installs from the package registry (no network here; the suite runs in the installed .venv)",
    '.venv/bin/pip install -e ".[demo]"': "installs from the package registry (no network here)",
    "python3 -m venv .venv": "makes a virtual environment only for the next two lines, which need the network",
    ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu":
        "downloads torch's CPU wheels (no network here)",
    "torchrun --nproc-per-node 4 -m resnets train --model resnet50 --data imagenet/ --out runs/r50":
        "4 processes on a GPU machine's ImageNet; torchrun-started training is tested in tests/test_train_ddp.py",
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id r50 "
    "-m resnets train --model resnet50 --data /data/imagenet-shards/ --batch-size 1024 --out runs/r50":
        "two 8-GPU machines; two 'nodes' on 127.0.0.1 are tested in tests/test_train_multinode.py",
}

# README section -> the test that runs its lines as written.
RUN_ELSEWHERE: dict[str, str] = {
    "Serve": "tests/test_serve_readme.py::test_readme_serve_commands_run_as_written runs `resnets serve` "
             "and every curl line (pipes included) through bash against a real server",
}

# README line -> the bug in src/ that makes it fail today (strict: fixed, the line must pass).
SRC_BUGS: dict[str, str] = {}

SHELL_WORDS = ("resnets", "python", "python3", "make", "torchrun", "curl", "{", ".venv/bin/pip")


# -- the README's shell lines -----------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    text: str      # continuations joined, trailing comment removed, spaces collapsed
    section: str   # the ``## `` heading above it
    block: int     # which code block of the README (counted from 1)


def _commands(body: str) -> list[str]:
    """A block's commands: a line ending in \\ or | joined with the next, comments removed."""
    commands, current = [], ""
    for raw in body.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        current += line + "\n"
        if not line.endswith(("\\", "|")):
            if current.strip():
                commands.append(" ".join(current.replace("\\\n", " ").split()))
            current = ""
    return commands


def shell_lines() -> list[Line]:
    """Every command of the README's shell blocks, in README order."""
    text = README.read_text(encoding="utf-8")
    lines = []
    for number, match in enumerate(FENCE.finditer(text), 1):
        language, body = match.groups()
        headings = re.findall(r"^## (.+)$", text[:match.start()], re.M)
        section = headings[-1] if headings else ""
        if language == "bash":
            commands = _commands(body)
        elif language == "":
            prompts = [line[2:] for line in body.splitlines() if line.startswith("$ ")]
            first = body.split(None, 1)[0] if body.strip() else ""
            commands = _commands("\n".join(prompts)) if prompts else _commands(body) if first in SHELL_WORDS else []
        else:
            continue
        lines += [Line(command, section, number) for command in commands]
    return lines


LINES = shell_lines()
RUNNABLE = [line for line in LINES if line.text not in SKIPPED and line.section not in RUN_ELSEWHERE]


def substituted(line: str) -> str:
    replacements, _ = SUBSTITUTED.get(line, ((), ""))
    for old, new in replacements:
        assert line.count(old) == 1, f"SUBSTITUTED: {old!r} is not in {line!r} exactly once"
        line = line.replace(old, new)
    return line


def runner(command: str) -> str | None:
    words = shlex.split(command)
    if words[0] == "resnets":
        return "resnets"
    if words[0] == "python" and words[1].startswith("benchmarks/"):
        return "script"
    return None


# -- the stand-ins ----------------------------------------------------------------------------------
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _images(folder: Path, count: int, size: tuple[int, int], seed: int, mode: str = "RGB",
            suffix: str = ".jpg") -> None:
    """``count`` smooth random images (upscaled noise: JPEG-friendly, as photos are) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
        small.convert(mode).save(folder / f"{i:04d}{suffix}", quality=90)


def _tree(root: Path, per_class: dict[str, int], size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    for k, (name, count) in enumerate(per_class.items()):
        _images(root / name, count, size, seed * 100 + k, mode)
    return root


def _zip(root: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(root).as_posix())


def _keras_resnet50(path: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3)).save(path)


def make_stand_ins(root: Path) -> None:
    """The data and weights files the README's commands name, small, under the README's names."""
    from resnets import create_model
    from resnets.weights.caffe import export_caffe

    scratch = root / ".scratch"
    for split, count in (("train", 3), ("test", 1)):
        _tree(scratch / "cifar" / split, dict.fromkeys(CIFAR10, count), (32, 32), seed=len(split))
    _zip(scratch / "cifar", root / "cifar10-jpeg.zip")
    _tree(scratch / "nette", {"n01440764": 10, "n02102040": 10}, (96, 80), seed=9)  # 10 % held out: 1 a class
    _zip(scratch / "nette", root / "imagenette-224-train.zip")
    classes = ("cat", "dog", "emu")
    _tree(root / "photos", dict.fromkeys(classes, 5), (48, 40), seed=3)
    _tree(scratch / "photos-val" / "val", dict.fromkeys(classes, 2), (48, 40), seed=4)
    _zip(scratch / "photos-val", root / "photos-val.zip")
    _tree(root / "pets", {"beagle": 4, "persian": 4}, (48, 40), seed=5)
    _tree(root / "xrays", {"normal": 4, "pneumonia": 4}, (40, 40), seed=6, mode="L")
    _tree(root / "skin", {"benign": 8, "melanoma": 3}, (40, 40), seed=7)
    _images(root / "holiday", 6, (60, 40), seed=8)  # a t-SNE map needs 5
    _zip(root / "holiday", root / "holiday.zip")
    (root / "picks.txt").write_text("# two of the photos\nphoto.jpg\nwide.jpg\n")
    photo = real_photo()
    photo.save(root / "cat.jpg")
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(root / "query.jpg")
    labels = make_shapes(root / "shapes", count=30)  # 'images/0001.png,cat;dog' as the README writes it
    renamed = {"red_square": "cat", "green_disc": "dog", "blue_triangle": "emu", "yellow_bar": "fox"}
    labels.write_text(re.sub("|".join(renamed), lambda m: renamed[m.group(0)], labels.read_text()))
    export_caffe(create_model("resnet50_v1").eval(), root / "ResNet-50-deploy.prototxt",
                 root / "ResNet-50-model.caffemodel")
    _keras_resnet50(root / "keras_resnet50.h5")
    (root / "benchmarks").symlink_to(REPO / "benchmarks", target_is_directory=True)
    shutil.rmtree(scratch)


# -- running a line ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    command: str
    status: int | str
    out: str
    err: str
    seconds: float
    problems: list[str] = field(default_factory=list)


def _run_resnets(words: list[str]) -> int | str:
    from resnets.cli import main

    try:
        main(words[1:])
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else (0 if exited.code is None else 1)
    except Exception:  # noqa: BLE001 - a bug: its traceback is the report
        return "raised " + traceback.format_exc()
    return "returned without exiting"


def _run_script(words: list[str]) -> int | str:
    """``python SCRIPT ARGS`` as ``__main__`` in this process (its own imports, sys.argv, sys.path)."""
    argv, path, common = sys.argv, list(sys.path), sys.modules.pop("_common", None)
    sys.argv = words[1:]
    try:
        runpy.run_path(words[1], run_name="__main__")
        return 0
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else (0 if exited.code is None else 1)
    except Exception:  # noqa: BLE001
        return "raised " + traceback.format_exc()
    finally:
        sys.argv, sys.path[:] = argv, path
        sys.modules.pop("_common", None)
        if common is not None:
            sys.modules["_common"] = common


def expected_files(words: list[str], out: str) -> list[Path]:
    """The files and folders a command says it makes."""
    paths = [Path(words[i + 1]) for i, word in enumerate(words[:-1]) if word in ("--out", "--report", "--map")]
    if words[0] == "python":
        paths.append(Path("runs/bench-cifar10/time_to_accuracy.json"))
        return paths
    command = words[1]
    if command in ("train", "demo") and "--print-config" not in words:
        run = words[words.index("--resume") + 1] if "--resume" in words else words[words.index("--out") + 1]
        paths += [Path(run) / "weights.safetensors", Path(run) / "metrics.jsonl"]
    if command == "export" and "prototxt" in words:
        paths.append(Path(words[words.index("--out") + 1]).with_suffix(".caffemodel"))
    if command == "convert":
        paths.append(Path(words[3]))
    if words[1:3] == ["data", "pack"]:
        paths.append(Path(words[4]))
    if command in ("bench", "compare") and "--out" not in words:
        paths.append(Path(f"{command}-results") / f"{command}.json")
    if words[1:3] == ["weights", "download"]:
        paths.append(Path(out.strip().splitlines()[-1]))
    return paths


def run_line(text: str, capsys) -> Outcome:
    command = substituted(text)
    words = shlex.split(command)
    kind = runner(command)
    threads = torch.get_num_threads()
    capsys.readouterr()
    began = time.perf_counter()
    try:
        status = _run_resnets(words) if kind == "resnets" else _run_script(words)
    finally:
        torch.set_num_threads(threads)  # the benchmark sets its --threads
    seconds = time.perf_counter() - began
    out, err = capsys.readouterr()
    outcome = Outcome(command, status, out, err, seconds)
    if status != 0:
        outcome.problems.append(f"exit status {status}")
        return outcome
    for path in expected_files(words, out):
        if not path.exists():
            outcome.problems.append(f"{path} was not made")
    if "--json" in words:
        try:
            json.loads(out)
        except ValueError as error:
            outcome.problems.append(f"--json printed no one JSON document ({error}): {out[:300]!r}")
    if words[0] == "python":
        try:
            json.loads(out.strip().splitlines()[-1])  # the benchmark's report, printed last
        except (ValueError, IndexError) as error:
            outcome.problems.append(f"the benchmark printed no JSON report last ({error})")
    if "--print-config" in words and "model:" not in out:
        outcome.problems.append("--print-config printed no recipe")
    return outcome


class ReadmeSession:
    """The workspace, and the outcome of each line run so far (in README order)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.outcomes: dict[int, Outcome] = {}

    def run_through(self, index: int, capsys) -> Outcome:
        """Run every line up to ``index`` not yet run (what it may need), then give its outcome."""
        for i in range(index + 1):
            if i not in self.outcomes:
                self.outcomes[i] = run_line(RUNNABLE[i].text, capsys)
        return self.outcomes[index]


@pytest.fixture(scope="module")
def readme_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme_commands")
    with pytest.MonkeyPatch.context() as patch:
        fill_readme_folder(root, patch)  # chdir, photo.jpg, wide.jpg, the cached resnet18/resnet50 weights
        patch.setenv("RESNETS_SHARED_DATA", str(root))  # the benchmark's default data: the stand-in zip
        patch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
        make_stand_ins(root)
        yield ReadmeSession(root)


# -- the tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [
    pytest.param(i, id=f"{i:02d}:{line.text[:70]}",
                 marks=[pytest.mark.xfail(reason=SRC_BUGS[line.text], strict=True)] if line.text in SRC_BUGS else [])
    for i, line in enumerate(RUNNABLE)])
def test_readme_line_runs(readme_session, capsys, index):
    outcome = readme_session.run_through(index, capsys)
    assert not outcome.problems, (f"README line {RUNNABLE[index].text!r}\nran as {outcome.command!r}: "
                                  f"{'; '.join(outcome.problems)}\nstderr:\n{outcome.err[-3000:]}")


def test_every_readme_shell_line_is_run_or_listed():
    texts = [line.text for line in LINES]  # a line written twice (pip install -e) is listed once
    assert len(LINES) >= 50, f"only {len(LINES)} shell lines found in README.md: is the extraction broken?"
    for table in (SUBSTITUTED, SKIPPED, SRC_BUGS):
        stale = set(table) - set(texts)
        assert not stale, f"no longer README lines (update the table): {sorted(stale)}"
    assert not set(SUBSTITUTED) & set(SKIPPED)
    assert set(RUN_ELSEWHERE) <= {line.section for line in LINES}
    for line in RUNNABLE:
        substituted(line.text)  # every replacement applies
        assert runner(substituted(line.text)), (
            f"README line {line.text!r} neither runs here (resnets ..., python benchmarks/...) nor is in "
            "SKIPPED with its reason or in a section of RUN_ELSEWHERE")


def test_run_elsewhere_lines_are_the_ones_run_there():
    """The Serve section's lines are exactly those tests/test_serve_readme.py runs."""
    serve_readme = pytest.importorskip("test_serve_readme")
    theirs = [" ".join(re.sub(r"\\\n", " ", c).split()) for c in serve_readme.shell_commands(serve_readme.serve_section())]
    ours = [line.text for line in LINES if line.section == "Serve"]
    stripped = [" ".join(re.sub(r"(^|\s)#.*$", "", c, flags=re.M).split()) for c in theirs]
    assert ours == stripped
    assert hasattr(serve_readme, "test_readme_serve_commands_run_as_written")


def test_make_demo_is_resnets_demo():
    """The substitution of `make demo` is what the Makefile's demo target runs once installed."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert recipe == "$(BIN)/resnets demo --out runs/demo"
    (((_, replacement),), _) = SUBSTITUTED["make demo"]
    assert replacement.startswith("resnets demo --out runs/demo")
