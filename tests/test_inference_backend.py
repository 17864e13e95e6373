"""The default inference backend: ONNX graphs pinned to the size they run at, ``auto``'s timed
probe, its cache (in memory and on disk, hostile files survived), and exact outputs."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import resnets
from resnets import inference
from resnets.inference import (backend_cache_path, onnxruntime_available, openvino_available,
                               optimize_for_inference)
from resnets.predict import InferenceModel

from conftest import randomize_batchnorm

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
needs_ov = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")
pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-4  # as tests/test_inference.py: the backends are exact fp32


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """A fresh cache folder and an empty in-memory cache for each test; never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(inference.CACHE_ENV, raising=False)
    monkeypatch.setattr(inference, "_CHOICES", {})
    return tmp_path / "cache" / "resnets" / inference.CACHE_FILE


@pytest.fixture
def probes(monkeypatch):
    """The calls of the probe, counted; the real probe runs."""
    calls = []
    real = inference.probe_backends

    def spy(modules, example, *args, **kwargs):
        calls.append(sorted(modules))
        return real(modules, example, *args, **kwargs)

    monkeypatch.setattr(inference, "probe_backends", spy)
    return calls


def tiny(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = resnets.create_model("resnet20", num_classes=10, layers=(1, 1, 1), widths=(8, 16, 32), stem_width=8)
    return randomize_batchnorm(model).eval(), torch.randn(5, 3, 32, 32)


def check_exact(module, model, *inputs):
    for x in inputs:
        with torch.no_grad():
            torch.testing.assert_close(module(x), model(x), rtol=0, atol=ATOL)


def ort_input_shape(module) -> list:
    (session,) = module.sessions.values()
    return session.get_inputs()[0].shape


@needs_ort
def test_onnxruntime_runs_a_graph_pinned_to_the_input_size():
    model, x = tiny()
    module = optimize_for_inference(model, "onnxruntime", example_input=x[:1])
    assert ort_input_shape(module)[1:] == [3, 32, 32]  # height and width static
    assert not isinstance(ort_input_shape(module)[0], int)  # batch dynamic (measured: no cost)
    check_exact(module, model, x, x[:1])
    other = torch.randn(2, 3, 40, 48)  # another size: a session of its own, also exact
    check_exact(module, model, other)
    assert sorted(module.sessions) == [(3, 32, 32), (3, 40, 48)]


@needs_ort
def test_the_auto_path_runs_a_static_graph(monkeypatch):
    model, x = tiny()
    monkeypatch.setattr(inference, "probe_backends", lambda modules, example: {
        name: (0.5 if name == "onnxruntime" else 1.0) for name in modules})
    module = optimize_for_inference(model, example_input=x[:2])
    assert module.backend == "onnxruntime" and module.auto_probe["source"] == "probe"
    assert ort_input_shape(module)[1:] == [3, 32, 32]
    check_exact(module, model, x[:2], x)


@needs_ov
def test_the_auto_path_through_openvino_is_static_and_exact(monkeypatch):
    model, x = tiny()
    monkeypatch.setattr(inference, "probe_backends", lambda modules, example: {
        name: (0.5 if name == "openvino" else 1.0) for name in modules})
    module = optimize_for_inference(model, example_input=x[:1])
    assert module.backend == "openvino"
    shape = module.model.inputs[0].get_partial_shape()
    assert [shape[i].get_length() for i in (1, 2, 3)] == [3, 32, 32]
    check_exact(module, model, x, x[:1])


def test_auto_probes_once_then_remembers_in_memory_and_on_disk(probes, cache_home):
    model, x = tiny()
    first = optimize_for_inference(model, example_input=x[:1])
    assert len(probes) == 1 and probes[0] == sorted(inference.auto_candidates())
    probe = first.auto_probe
    assert probe["source"] == "probe" and probe["backend"] == first.backend
    assert set(probe["probe_ms"]) == set(inference.auto_candidates())
    assert probe["backend"] == min(probe["probe_ms"], key=probe["probe_ms"].get)
    check_exact(first, model, x)

    again = optimize_for_inference(model, example_input=x[:1])
    assert len(probes) == 1 and again.auto_probe["source"] == "memory" and again.backend == first.backend
    entries = json.loads(cache_home.read_text())["entries"]
    assert [entry["backend"] for entry in entries.values()] == [first.backend]

    inference._CHOICES.clear()  # a new process: the choice comes from the disk
    from_disk = optimize_for_inference(model, example_input=x[:1])
    assert len(probes) == 1 and from_disk.auto_probe["source"] == "disk"
    check_exact(from_disk, model, x)


def test_the_choice_is_per_batch_and_size_and_ignores_the_weight_values(probes):
    model, x = tiny()
    optimize_for_inference(model, example_input=x[:1])
    optimize_for_inference(model, example_input=x[:2])  # another batch
    optimize_for_inference(model, example_input=torch.randn(1, 3, 40, 40))  # another size
    assert len(probes) == 3
    retrained, _ = tiny(seed=1)  # same architecture, other weights: as fast
    check_exact(optimize_for_inference(retrained, example_input=x[:1]), retrained, x)
    assert len(probes) == 3


def test_the_disk_cache_can_be_turned_off_or_moved(probes, cache_home, monkeypatch, tmp_path):
    model, x = tiny()
    monkeypatch.setenv(inference.CACHE_ENV, "off")
    assert backend_cache_path() is None
    optimize_for_inference(model, example_input=x[:1])
    assert not cache_home.exists()
    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "elsewhere.json"))
    inference._CHOICES.clear()
    optimize_for_inference(model, example_input=x[:1])
    assert (tmp_path / "elsewhere.json").is_file() and len(probes) == 2


def test_the_cache_folder_follows_xdg_and_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backend_cache_path() == tmp_path / "resnets" / inference.CACHE_FILE
    for unset in ("", "relative/dir"):  # the XDG spec: a relative path is to be ignored
        monkeypatch.setenv("XDG_CACHE_HOME", unset)
        assert backend_cache_path() == __import__("pathlib").Path.home() / ".cache" / "resnets" / inference.CACHE_FILE


def _write_hostile(path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling-link":
        path.symlink_to(path.parent / "nowhere")
    else:
        path.write_bytes({
            "garbage": b"\xff\xfe\x00not json at all",
            "truncated": b'{"version": 1, "entries": {"ab',
            "deep": b"[" * 200_000,
            "huge": b'{"version": 1, "entries": {}, "pad": "' + b"x" * (2 << 20) + b'"}',
            "long-number": b'{"version": 1, "entries": {}, "n": ' + b"9" * 100_000 + b"}",
            "wrong-shape": b'{"version": 1, "entries": [1, 2, 3]}',
            "not-an-object": b'"just a string"',
            "other-version": b'{"version": 999, "entries": {}}',
            "empty": b"",
        }[kind])


HOSTILE = ["garbage", "truncated", "deep", "huge", "long-number", "wrong-shape", "not-an-object",
           "other-version", "empty", "folder", "fifo", "link-to-dev-zero", "dangling-link"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_cache_file_is_one_warning_line_and_a_new_probe(kind, probes, cache_home, monkeypatch):
    monkeypatch.setattr(inference, "auto_candidates", lambda device="cpu": ["onnxruntime", "eager"]
                        if onnxruntime_available() else ["eager"])
    _write_hostile(cache_home, kind)
    model, x = tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = optimize_for_inference(model, example_input=x[:1])
    messages = [str(w.message) for w in caught if "backend cache" in str(w.message)]
    assert len(messages) <= 1 and all("\n" not in m and len(m) < 400 for m in messages)
    assert len(probes) == 1 and module.auto_probe["source"] == "probe"
    check_exact(module, model, x)
    if kind not in ("folder",):  # replaced by a good file (a folder is left alone)
        assert not cache_home.is_symlink() and cache_home.is_file()
        assert json.loads(cache_home.read_text())["version"] == 1


@pytest.mark.parametrize("entry", [
    {"backend": "tensorrt", "probe_ms": {"tensorrt": 1.0}},  # not a candidate here
    {"backend": "int8", "probe_ms": {"int8": 1.0}},  # not exact: never auto's
    {"backend": "eager", "probe_ms": {"eager": -1}},
    {"backend": "eager", "probe_ms": {"eager": "fast"}},
    {"backend": "eager", "probe_ms": []},
    {"backend": ["eager"]},
    "eager",
])
def test_a_nonsense_entry_is_probed_again(entry, probes, cache_home):
    model, x = tiny()
    optimize_for_inference(model, example_input=x[:1])
    document = json.loads(cache_home.read_text())
    document["entries"] = {key: entry for key in document["entries"]}
    cache_home.write_text(json.dumps(document))
    inference._CHOICES.clear()
    module = optimize_for_inference(model, example_input=x[:1])
    assert len(probes) == 2 and module.auto_probe["source"] == "probe"
    check_exact(module, model, x)


def test_an_unwritable_cache_is_no_error(probes, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(inference.CACHE_ENV, str(blocker / "sub" / "cache.json"))
    model, x = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_exact(optimize_for_inference(model, example_input=x[:1]), model, x)


def test_off_the_cpu_auto_is_eager_without_a_probe(probes, monkeypatch, cache_home):
    assert inference.auto_candidates("cuda") == ["eager"]
    assert inference.auto_candidates("cpu")[-1] == "eager"
    monkeypatch.setattr(inference, "auto_candidates", lambda device="cpu": ["eager"])  # as off the CPU
    model, x = tiny()
    module = optimize_for_inference(model, example_input=x[:1])
    assert module.backend == "eager" and module.auto_probe["source"] == "only candidate"
    assert probes == [] and not cache_home.exists()
    check_exact(module, model, x)


def test_predict_names_the_backend_auto_chose(probes):
    model, x = tiny()
    plain = InferenceModel(model, [str(i) for i in range(10)], model.preprocessing, torch.device("cpu"), model,
                           backend="plain")
    chosen = plain.with_backend("auto")
    assert chosen.backend in inference.auto_candidates() and chosen.backend == chosen.model.backend
    assert len(probes) == 1
    check_exact(chosen.model, model, x)


def test_bench_reports_what_auto_chose_and_the_probe(probes):
    from resnets.bench import benchmark, format_table

    report = benchmark(["resnet20"], ["auto"], [1, 2], img_size=32, repeats=1, warmup=0)
    auto_rows = [row for row in report.to_dict()["results"] if row["backend"] == "auto"]
    assert [row["batch_size"] for row in auto_rows] == [1, 2] and len(probes) == 2
    for row in auto_rows:
        assert row["chosen_backend"] in inference.auto_candidates()
        assert set(row["probe_ms"]) == set(inference.auto_candidates())
    table = format_table(report)
    assert "auto: resnet20 at batch 1 runs" in table and "probe medians" in table
