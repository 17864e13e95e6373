"""The README is a user's guide, not a promise: its Python runs and its commands parse.

Every ```python block runs, in order, in one namespace, in a folder holding the files the README
names (a photo, a converted weights file, the source documents' prototxt) and a weights cache
holding torchvision-format files under the registry's names, as after a download. Every
``resnets ...`` line of the other blocks is parsed by the real command-line parser, so a flag or
a choice that does not exist fails here; tests/test_readme_commands.py then runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
pytestmark = pytest.mark.slow


def blocks(language: str | None = None) -> list[str]:
    found = FENCE.findall(README.read_text())
    return [body for lang, body in found if language is None or lang == language]


def command_lines() -> list[str]:
    """Every ``resnets ...`` command of the README's shell blocks, continuation lines joined."""
    lines = []
    for body in blocks("bash") + blocks(""):
        text = re.sub(r"\\\n\s*", " ", body)
        for line in text.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("resnets "):
                lines.append(re.sub(r"\s+#.*$", "", line))
    return lines


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_parses(line):
    from resnets.cli import build_parser

    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.handler)


def test_readme_has_commands_and_python():
    assert len(command_lines()) >= 20 and len(blocks("python")) >= 3


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """The files the README's Python names, and a cache holding 'downloaded' torchvision weights."""
    return fill_readme_folder(tmp_path, monkeypatch)


def fill_readme_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write into ``tmp_path`` (made the working folder) the README's photo.jpg, wide.jpg, converted
    .safetensors and seed prototxt, and a ``$RESNETS_CACHE`` holding every registered resnet18 and
    resnet50 weights file (torchvision's architecture, random values) whose hash the registry
    accepts, as after a download. tests/test_readme_commands.py builds on it too."""
    import torchvision
    from PIL import Image

    from resnets import create_model, save_weights
    from resnets.weights import pretrained

    from weights_helpers import real_photo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    real_photo().save(tmp_path / "photo.jpg")
    Image.open(tmp_path / "photo.jpg").crop((0, 0, 224, 160)).save(tmp_path / "wide.jpg")
    shutil.copy(Path(__file__).parent / "data" / "resnet18-7class-train.prototxt", tmp_path)
    save_weights(tmp_path / "converted.safetensors", create_model("resnet18"))
    for (name, tag), entry in list(pretrained._registry().items()):
        if name not in ("resnet18", "resnet50"):
            continue
        path = tmp_path / "cache" / entry.filename
        if not path.exists():
            torch.save(getattr(torchvision.models, name)().state_dict(), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        monkeypatch.setitem(pretrained._registry(), (name, tag), dataclasses.replace(entry, hash_prefix=digest))
    return tmp_path


def test_readme_python_runs(readme_folder, capsys):
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme"}
    for index, body in enumerate(blocks("python")):
        try:
            exec(compile(body, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - name the block that failed
            pytest.fail(f"README python block {index + 1} raised {type(error).__name__}: {error}\n{body}")
    assert "Total params" in capsys.readouterr().out  # the summary table printed
