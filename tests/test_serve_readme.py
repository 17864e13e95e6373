"""The README's serve commands, run as written: the real `curl` against a real `resnets serve`.

The server starts from the README's `resnets serve` line with its model (`runs/ft`, a fine-tuned
ResNet-18) replaced by a small resnet18 weights file and its port by a free one. Every other line
of the section's code blocks runs through bash, in a folder holding `cat.jpg`, with only the
README's `http://127.0.0.1:8080` replaced by that server's address. `cat.jpg` is a noisy photo of
over 100 kB, as real photos are (a base64 payload that size does not fit one command argument).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from conftest import randomize_batchnorm  # noqa: E402
from test_serve import CLASSES, RunningServer  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
ORIGIN = "http://127.0.0.1:8080"
SERVED = "resnet18"  # the README's runs/ft is a ResNet-18 fine-tune: the URLs name its architecture


def serve_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Serve\n")
    return text[start:text.index("\n## ", start + 1)]


def shell_commands(section: str) -> list[str]:
    """The commands of the section's code blocks, a line ending in \\ or | joined with the next."""
    commands, current = [], ""
    for block in re.findall(r"```[a-z]*\n(.*?)```", section, re.DOTALL):
        for line in block.splitlines():
            current += line + "\n"
            if not line.rstrip().endswith(("\\", "|")):
                if current.strip():
                    commands.append(current.strip())
                current = ""
    return commands


def server_args(command: str, model: Path) -> list[str]:
    """The README's `resnets serve MODEL ...` options, without MODEL and --port (the test's own)."""
    words = shlex.split(command, comments=True)
    assert words[:2] == ["resnets", "serve"], command
    options, rest = [], iter(words[3:])
    for word in rest:
        if word == "--port":
            assert next(rest) == ORIGIN.rsplit(":", 1)[1], "the curl lines call another port than the server's"
        else:
            options.append(word)
    return options


def save_resnet18(path: Path) -> Path:
    import torch

    from resnets.factory import create_model
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    return save_weights(path, randomize_batchnorm(create_model("resnet18", num_classes=len(CLASSES)), seed=2),
                        class_names=CLASSES)


def noisy_photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((480, 360)))
    noisy = np.clip(smooth + rng.normal(0, 40, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, "JPEG", quality=92)
    assert path.stat().st_size > 100_000
    return path


@pytest.fixture(scope="module")
def tools():
    missing = [tool for tool in ("curl", "bash", "base64") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH (apt-get install -y curl): the README's commands need it")


def test_readme_serve_commands_run_as_written(tools, tmp_path):
    from resnets.predict import load_for_inference, predict_files

    commands = shell_commands(serve_section())
    serve = [c for c in commands if c.startswith("resnets serve")]
    curls = [c for c in commands if not c.startswith("resnets serve")]
    assert len(serve) == 1 and all("curl " in c and ORIGIN in c for c in curls), commands
    model = save_resnet18(tmp_path / "ft.safetensors")
    photo = noisy_photo(tmp_path / "cat.jpg")
    (expected,) = predict_files(load_for_inference(model), [photo], topk=5)
    top = [(t["class"], t["probability"]) for t in expected["top"]]

    server = RunningServer(model, *server_args(serve[0], model), name=None)
    answered = set()
    try:
        for command in curls:
            run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command.replace(ORIGIN, server.url)],
                                 cwd=tmp_path, capture_output=True, timeout=120)
            assert run.returncode == 0, f"{command}\n{run.stderr.decode(errors='replace')}"
            answered.add(check_answer(command, run.stdout, tmp_path, top))
    finally:
        status = server.stop()
    assert status == 0
    assert answered == {"predictions", "metadata", "infer", "explain", "metrics"}


def check_answer(command: str, stdout: bytes, folder: Path, top: list[tuple[str, float]]) -> str:
    """Which endpoint ``command`` called, after checking its answer."""
    path = re.search(r"127\.0\.0\.1:8080(/\S*)", command).group(1)
    if path == f"/predictions/{SERVED}":
        assert "content-type" not in command.lower()  # curl's own: application/x-www-form-urlencoded
        answer = json.loads(stdout)
        assert list(answer) == [name for name, _ in top], answer
        np.testing.assert_allclose(list(answer.values()), [p for _, p in top], atol=1e-4)
        return "predictions"
    if path == f"/v2/models/{SERVED}":
        assert json.loads(stdout)["name"] == SERVED
        return "metadata"
    if path == f"/v2/models/{SERVED}/infer":
        outputs = {o["name"]: o for o in json.loads(stdout)["outputs"]}
        assert outputs["labels"]["data"] == [name for name, _ in top]
        return "infer"
    if path == f"/explain/{SERVED}":
        assert "content-type" not in command.lower()
        written = re.search(r"-o (\S+)", command).group(1)
        with Image.open(io.BytesIO((folder / written).read_bytes())) as overlay:
            assert overlay.format == "PNG" and overlay.size[0] >= 224
        return "explain"
    if path == "/metrics":
        assert re.search(rb'^resnets_requests_total\{endpoint="predictions"\} [1-9]', stdout, re.MULTILINE)
        return "metrics"
    raise AssertionError(f"a README command calls an endpoint this test does not check: {command}")
