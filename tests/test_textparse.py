"""Bounded parsing (issue 24): hostile YAML, JSON and .npy headers end in one-line errors, never in
a traceback, a 500 or gigabytes; property tests: only ResnetsError escapes, and valid documents
read as the unbounded parsers read them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from resnets.errors import ResnetsError
from resnets.textparse import MAX_DEPTH, load_json, load_npy, load_yaml, shorten

DEEP = "[" * 50_000
LONG_INT = "1" * 5_000
PROPERTY = settings(max_examples=200, deadline=None)


def alias_bomb() -> str:
    """Nine levels of nine aliases: 9**9 x's once expanded, in about 400 bytes."""
    lines, previous = ["a: &a [" + ",".join(["xxxx"] * 9) + "]"], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


# torch's libraries map more than 2 GB of address space: the limit is set once they are loaded,
# 2 GB above what the process holds then.
LIMITED_MAIN = """
import os, resource, sys
import resnets.cli.train, resnets.train.recipes
from resnets.cli import main
held = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (held + (2 << 30), held + (2 << 30)))
main(sys.argv[1:])
"""


def one_line_error(status: int, err: str) -> str:
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("resnets: error:"), err
    return err


# -- the cases of the issue -----------------------------------------------------------------------
def test_alias_bomb_recipe_is_refused_quickly_in_little_memory(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) < 500

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LIMITED_MAIN, "train", "--config", str(bomb), "--print-config"],
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    err = one_line_error(done.returncode, done.stderr)
    assert "alias" in err and len(err) < 300


@pytest.mark.parametrize("text, words", [(f"lr: {DEEP}\n", "nested"), (f"epochs: {LONG_INT}\n", "longer than"),
                                         (f"epochs: !!int {LONG_INT}\n", "longer than")])
def test_hostile_recipes_are_one_line(tmp_path, run_cli, text, words):
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(text)
    status, _, err = run_cli("train", "--config", recipe, "--print-config")
    assert words in one_line_error(status, err) and len(err) < 300


def test_deep_json_label_row_is_one_line(tmp_path, run_cli):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"path": "a.png", "labels": ["x"]}\n' + DEEP + "\n")
    status, _, err = run_cli("data", "info", labels)
    assert "line 2: nested 50000 deep" in one_line_error(status, err)


def write_npy_index(tmp_path, vectors_npy: bytes, sidecar: str):
    path = tmp_path / "index.npy"
    path.write_bytes(vectors_npy)
    (tmp_path / "index.json").write_text(sidecar)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_deep_index_sidecar_is_refused(tmp_path):
    from resnets.embed import load_index

    path = write_npy_index(tmp_path, npy_bytes(np.zeros((2, 3), np.float32)), DEEP)
    with pytest.raises(ResnetsError, match="index.json: nested 50000 deep"):
        load_index(path)


def test_npy_header_that_lies_about_its_shape_is_refused_before_allocating(tmp_path):
    from resnets.embed import load_index

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 64)})
    lying = buffer.getvalue() + b"\0" * 3000
    assert len(lying) < 4096
    path = write_npy_index(tmp_path, lying, json.dumps({"rows": []}))
    with pytest.raises(ResnetsError, match=r"header declares shape \(1000000000, 64\)"):
        load_index(path)
    truncated = tmp_path / "short.npy"
    truncated.write_bytes(npy_bytes(np.zeros((4, 8), np.float32))[:-4])
    with pytest.raises(ResnetsError, match="header declares"):
        load_npy(truncated, "short.npy")
    with pytest.raises(ResnetsError, match="Python objects"):
        load_npy(io_path(tmp_path, npy_bytes(np.array([{}, None], dtype=object))), "objects.npy")
    assert load_npy(io_path(tmp_path, npy_bytes(np.arange(6.0).reshape(2, 3))), "ok").tolist() == [[0, 1, 2],
                                                                                                     [3, 4, 5]]


def io_path(tmp_path, data: bytes):
    path = tmp_path / f"{len(data)}.npy"
    path.write_bytes(data)
    return path


def test_deep_weights_metadata_is_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from resnets.weights.format import load_weights_file

    path = tmp_path / "deep.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"resnets": DEEP})
    with pytest.raises(ResnetsError, match="its metadata: nested 50000 deep"):
        load_weights_file(path)


def test_deep_v2_body_is_a_400_and_the_server_keeps_answering(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import torch
    from fastapi.testclient import TestClient

    from resnets.factory import create_model
    from resnets.predict import load_for_inference
    from resnets.serve import ServeConfig, create_app
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    weights = save_weights(tmp_path / "tiny.safetensors", create_model("resnet20", num_classes=2),
                           class_names=["a", "b"])
    app = create_app(load_for_inference(weights, backend="eager"), ServeConfig(name="tiny", topk=1))
    url = "/v2/models/tiny/infer"
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}
    with TestClient(app) as client:
        for body in (DEEP, '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [%s]}]}'
                     % LONG_INT):
            answer = client.post(url, content=body.encode(), headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, answer.text
            assert "nested 50000 deep" in answer.json()["error"] or "longer than" in answer.json()["error"]
        assert client.post(url, json={"inputs": [tensor]}).status_code == 200


# -- the parsers themselves -----------------------------------------------------------------------
def test_limits_and_messages():
    assert load_yaml("a: &x [1, 2]\nb: *x\n", "r") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(ResnetsError, match="refers to its own"):
        load_yaml("a: &x [*x]\n", "r")
    with pytest.raises(ResnetsError, match="expand to more than"):
        load_yaml("a: &a [" + ",".join(["y" * 1000] * 30) + "]\n" + "b: [" + ",".join(["*a"] * 30) + "]\n",
                  "r", max_bytes=200_000)
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(nested, "j") is not None and load_yaml(nested, "y") is not None
    for loader in (load_json, load_yaml):
        with pytest.raises(ResnetsError, match="over the limit|deeper than"):
            loader("[" + nested + "]", "x")
    assert load_json('["[[[[", "\\"[{"]', "j") == ["[[[[", '"[{']  # brackets in strings do not count
    assert shorten("x" * 1000) == "x" * 77 + "..." and shorten([[1] * 1000] * 1000).startswith("[[1, 1")
    assert len(shorten("\x1b" * 1000)) == 80


def json_values():
    scalars = (st.none() | st.booleans() | st.integers(-10**40, 10**40) | st.text(max_size=12)
               | st.floats(allow_nan=False, allow_infinity=False))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25)


@PROPERTY
@given(st.text() | st.binary())
def test_load_json_of_any_text_is_a_value_or_a_resnets_error(data):
    try:
        load_json(data, "x")
    except ResnetsError:
        pass


@PROPERTY
@given(st.text())
def test_load_yaml_of_any_text_is_a_value_or_a_resnets_error(text):
    try:
        load_yaml(text, "x")
    except ResnetsError:
        pass


@PROPERTY
@given(json_values(), st.integers(0, 3))
def test_valid_documents_read_as_the_unbounded_parsers_read_them(value, indent):
    text = json.dumps(value, indent=indent or None)
    assert load_json(text, "j") == json.loads(text)
    assert load_json(text.encode("utf-16"), "j") == json.loads(text)
    document = yaml.safe_dump(value, default_flow_style=bool(indent % 2))
    assert load_yaml(document, "y") == yaml.safe_load(document)


@PROPERTY
@given(st.lists(st.sampled_from(["[", "]", "{", "}", '"', ",", ":", "1", "*a", "&a ", "- ", "\n", "!!int ",
                                 "a", "<<: ", "? "]), max_size=200).map("".join))
def test_bracket_soup_never_escapes(text):
    for loader in (load_json, load_yaml):
        try:
            loader(text, "x")
        except ResnetsError:
            pass
