"""The project's own ONNX files as models: the graph ``resnets export`` wrote, run by onnxruntime.

``export`` stores the model's record beside the graph, in the ONNX file's ``metadata_props``
(JSON strings): ``model_name`` (the architecture), ``preprocessing`` (how to feed it),
``class_names`` and, for a multi-label model, ``task``. :func:`read_onnx_model` reads the file
(regular files only, size-capped, as every reader of a user's file), checks the graph and that
record, and gives an :class:`OnnxModel`: a module that runs the graph in an ONNX Runtime session
and carries the record as every model does, so that ``predict``, ``evaluate`` and ``serve``
take it through :func:`resnets.factory.load_model` like a weights file. It has no parameters and
no gradients: what needs them (``explain``, ``embed``, training) refuses it in one line.

A foreign ONNX file (torchvision's own export, a model zoo's) has no such record: it is refused
with one line naming the keys it lacks.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ResnetsError, first_line
from ..models import list_models
from ..models.builder import build_registered_model
from ..multilabel import task_of
from ..preprocessing import Preprocessing
from ..terminal import printable
from ..textparse import MAX_TEXT_BYTES, load_json, read_limited

ONNX_SUFFIX = ".onnx"
REQUIRED_KEYS = ("model_name", "preprocessing")  # what the graph alone cannot tell
MAX_ONNX_BYTES = 2**31 - 1  # protobuf's limit on one message; larger models keep external data


def is_onnx_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix, as ``export`` names them)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def onnx_file_refused(reference: str | os.PathLike) -> ResnetsError:
    """The one line for an ONNX file given where a model with layers and parameters is needed."""
    return ResnetsError(f"{printable(str(reference))} is an ONNX file: it can be run (predict, evaluate, serve), "
                        "not summarised, exported, embedded with or trained; pass the weights file or run "
                        "directory it was exported from")


def ort_session(graph: bytes | str, threads: int | None = None, level: str = "all", spinning: bool = False):
    """An ONNX Runtime CPU session as the inference backends run it.

    ``threads``: intra-op threads (default PyTorch's thread count); ``level``: graph
    optimisation (``basic``, ``extended``, ``all``). Idle ORT threads spin for a while after
    each run unless ``spinning`` is off, stealing the cores from whatever the process does next
    (PyTorch, data loading, another model).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """A model read from the project's ONNX file: its graph (``onnx_graph``, the file's bytes),
    run by ONNX Runtime, and its record (``model_name``, ``class_names``, ``preprocessing``,
    ``task_record``). ``forward`` takes the float batch the record's ``normalize`` makes."""

    def __init__(self, graph: bytes, record: dict[str, Any], source: str, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.onnx_graph = graph
        self.source = source
        self.model_name: str = record["model_name"]
        self.preprocessing: Preprocessing = record["preprocessing"]
        self.class_names: list[str] | None = record["class_names"]
        self.task_record: dict[str, Any] = record["task"]
        self.in_chans, self.num_classes = in_chans, num_classes
        self.min_input_size = _min_input_size(self.model_name)
        self.session = None  # built at the first call

    def forward(self, x: Tensor) -> Tensor:
        if self.session is None:
            self.session = checked_session(self.onnx_graph, self.source)
        array = x.detach().cpu().contiguous().float().numpy()
        (logits,) = self.session.run(None, {self.session.get_inputs()[0].name: array})
        return torch.from_numpy(logits)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, classes={self.num_classes}"


def checked_session(graph: bytes, source: str):
    """An ONNX Runtime session on ``graph``; a graph it refuses is one line naming ``source``."""
    try:
        return ort_session(graph)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ResnetsError(f"{printable(source)}: onnxruntime cannot run this ONNX graph "
                           f"({type(error).__name__}: {printable(first_line(error))[:200]})") from None


def read_onnx_model(path: str | os.PathLike) -> OnnxModel:
    """The model in the ONNX file ``path`` that ``resnets export`` wrote, with its record.

    One line (:class:`ResnetsError`) for: onnx/onnxruntime missing, a file that is not a regular
    file or too large, bytes that are not an ONNX model (random, truncated), a graph without one
    (N, C, H, W) image input and one (N, classes) output, and a file without the project's record.
    """
    where = os.fspath(path)
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise ResnetsError(f"reading the ONNX file {printable(where)} needs onnx and onnxruntime: "
                           "pip install 'resnets[onnx]'")
    import onnx

    data = read_limited(path, MAX_ONNX_BYTES)
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, onnx's ValidationError
        raise ResnetsError(f"{printable(where)} is not a readable ONNX model (truncated, or not ONNX: "
                           f"{type(error).__name__}: {printable(first_line(error))[:160]})") from None
    in_chans, num_classes = _graph_shape(proto, where)
    record = _record(proto, where)
    if record["class_names"] is not None and len(record["class_names"]) != num_classes:
        raise ResnetsError(f"{printable(where)}: its metadata names {len(record['class_names'])} classes but the "
                           f"graph outputs {num_classes}")
    return OnnxModel(data, record, where, in_chans, num_classes)


def _graph_shape(proto: Any, where: str) -> tuple[int, int]:
    """(input channels, output classes) of a graph with one (N, C, H, W) input and an (N, K) output."""
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    outputs = list(proto.graph.output)

    def dims(value: Any) -> list[int | None]:
        shape = value.type.tensor_type.shape.dim
        return [dim.dim_value if dim.HasField("dim_value") else None for dim in shape]

    if len(inputs) != 1 or len(dims(inputs[0])) != 4 or not dims(inputs[0])[1]:
        raise ResnetsError(f"{printable(where)}: expected one image input (N, C, H, W) with a fixed channel count")
    if not outputs or len(dims(outputs[0])) != 2 or not dims(outputs[0])[1]:
        raise ResnetsError(f"{printable(where)}: expected a (N, classes) output with a fixed class count")
    return int(dims(inputs[0])[1]), int(dims(outputs[0])[1])


def _record(proto: Any, where: str) -> dict[str, Any]:
    """The record ``export`` stores in the metadata, checked: model name, preprocessing, class
    names (optional), multi-label task (optional)."""
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ResnetsError(f"{printable(where)} is an ONNX file without resnets' record: its metadata has no "
                           f"{' and no '.join(missing)} (`resnets export` writes them; for a foreign ONNX file, "
                           "convert its weights instead)")
    values = {key: load_json(text.encode(), f"{where}: metadata {key}", max_bytes=MAX_TEXT_BYTES)
              for key, text in metadata.items() if key in (*REQUIRED_KEYS, "class_names", "task")}
    name, classes = values["model_name"], values.get("class_names")
    if not isinstance(name, str) or not name:
        raise ResnetsError(f"{printable(where)}: metadata model_name is not a name")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise ResnetsError(f"{printable(where)}: metadata class_names is not a list of names")
    task = values.get("task")
    if task is not None and not isinstance(task, dict):
        raise ResnetsError(f"{printable(where)}: metadata task is not a record")
    return {"model_name": name, "preprocessing": Preprocessing.from_dict(values["preprocessing"]),
            "class_names": classes, "task": task_of(task, where) if task else {}}


def _min_input_size(model_name: str) -> int | None:
    """The smallest input a registered architecture takes (built on the meta device), else None."""
    if model_name not in list_models():
        return None
    with torch.device("meta"):
        return build_registered_model(model_name).min_input_size
