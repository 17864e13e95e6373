"""The Open Inference Protocol (KServe v2 / Triton HTTP) endpoints of ``resnets serve``.

The model declares two inputs; an inference request sends exactly one of them:

- ``image``: ``BYTES``, shape ``[N]``: encoded image files (JPEG, PNG...). In the JSON body
  each element is a base64 string; with the binary-data extension (header
  ``Inference-Header-Content-Length``, the input's ``parameters.binary_data_size``) the raw
  bytes follow the JSON, each element prefixed by its length (4 bytes, little-endian).
- ``input``: ``FP32``, shape ``[N, 3, S, S]``: images already resized and normalised as the
  model's preprocessing says, as a flat (row-major) or nested list, or binary little-endian.

Outputs (all unless the request lists some): ``probabilities`` ``FP32 [N, classes]`` and
``labels`` ``BYTES [N, k]``, the top-k class names, most probable first (``k`` from the
request's ``parameters.topk``, else the server's ``--topk``). A multi-label model's
probabilities are independent sigmoids, and its ``labels`` are, per image, every class at or
above the model's recorded threshold (the output's ``parameters.threshold``), most probable
first: ``[N, L]`` with ``L`` the most any image has, shorter rows padded with ``""``.

A request is parsed in a decode thread (:func:`parse_request`), never on the event loop, and
counted before it is materialised (:mod:`.admission`): the declared shape and the length of a JSON
``data`` list are checked against ``--max-images`` before any element is base64-decoded, and a
length-prefixed body is read only up to the first element past the declared count. Empty elements
are a 400 where they are read.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import warnings
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request

from .. import __version__
from ..errors import ResnetsError
from ..textparse import load_json, shorten
from .admission import Limits
from .server import Server, ServeError

BINARY_HEADER = "inference-header-content-length"
OUTPUTS = ("probabilities", "labels")
# curl -d without -H declares application/x-www-form-urlencoded; the body is parsed as JSON either way
JSON_TYPES = ("", "application/json", "application/octet-stream", "application/x-www-form-urlencoded")


def model_metadata(server: Server) -> dict[str, Any]:
    size, classes = server.predictor.img_size, len(server.predictor.class_names)
    labels = -1 if server.threshold is not None else min(server.config.topk, classes)  # multi-label: varies
    return {"name": server.config.name, "versions": ["1"], "platform": f"pytorch_{server.predictor.backend}",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                       {"name": "input", "datatype": "FP32", "shape": [-1, 3, size, size]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1, labels]}]}


def add_v2_routes(app: FastAPI, server: Server) -> None:
    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "resnets", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        check_ready(server)
        return {"ready": True}

    @app.get("/v2/models/{model}")
    async def metadata(model: str) -> dict:
        server.check_model(model)
        return model_metadata(server)

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> dict:
        server.check_model(model)
        check_ready(server)
        return {"name": model, "ready": True}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> dict:
        server.check_model(model)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            raise ServeError(415, f"unsupported content type {content_type!r}: the v2 protocol takes "
                                  f"application/json (binary data after it with Inference-Header-Content-Length)")
        header, images, tensor = await server.run(parse_request, await request.body(),
                                                  request.headers.get(BINARY_HEADER), server.config.limits,
                                                  server.predictor.img_size)
        if tensor is None:
            probs = await server.classify([(data, f"image[{i}]") for i, data in enumerate(images)])
        else:
            probs = await server.infer(tensor)
        return response(server, header, probs)


def check_ready(server: Server) -> None:
    """503 unless a request would be answered now (warmed up, every worker thread running)."""
    if not server.ready:
        reason = ("the server is stopping" if server.closing else "the model is not loaded yet" if not server.warm
                  else "a worker thread is being restarted")
        raise ServeError(503, f"not ready: {reason}")


def parse_request(body: bytes, json_length: str | None, limits: Limits,
                  size: int) -> tuple[dict, list[bytes], torch.Tensor | None]:
    """An inference request -> (its JSON header, its encoded images, or its FP32 tensor: None for
    images), every count checked against ``limits`` before elements are materialised."""
    header, binary = split_body(body, json_length)
    spec = single_input(header)
    _requested_outputs(header)  # a request for an unknown output or a bad topk is refused before any work
    _topk(header, 1)
    if spec.get("datatype") == "BYTES":
        return header, image_elements(spec, binary, limits), None
    return header, [], float_tensor(spec, binary, size, limits)


def split_body(body: bytes, json_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of an inference request and the binary data after it (if any); the JSON is
    bounded by ``--max-body-mb`` and parsed in a decode thread (:func:`parse_request`)."""
    if not body:
        raise ServeError(400, "empty request body: send a v2 inference request (JSON)")
    if json_length is None:
        text, binary = body, b""
    else:
        if not json_length.isdigit() or int(json_length) > len(body):
            raise ServeError(400, f"invalid Inference-Header-Content-Length {json_length!r} for a body of "
                                  f"{len(body)} bytes")
        text, binary = body[:int(json_length)], body[int(json_length):]
    try:
        header = load_json(text, "the request", max_bytes=len(text))  # the body is capped by --max-body-mb
    except ResnetsError as error:
        raise ServeError(400, str(error)) from None
    if not isinstance(header, dict):
        raise ServeError(400, "the request must be a JSON object with 'inputs'")
    return header, binary


def single_input(header: dict) -> dict:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ServeError(400, "the request must have exactly one input: 'image' (BYTES) or 'input' (FP32)")
    spec = inputs[0]
    datatype = spec.get("datatype")
    if datatype not in ("BYTES", "FP32"):
        raise ServeError(400, f"input datatype must be BYTES (encoded images) or FP32 (a normalised "
                              f"[N, 3, S, S] tensor), got {datatype!r}")
    checked_shape(spec)
    return spec


def checked_shape(spec: dict) -> list[int]:
    """The input's declared shape: a list of positive integers."""
    shape = spec.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool)
                                                     and d >= 1 for d in shape)):
        raise ServeError(400, f"input shape must be a list of positive integers, got {shorten(shape)}")
    return shape


def _binary_size(spec: dict, binary: bytes) -> int | None:
    parameters = spec.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ServeError(400, "input parameters must be a JSON object")
    size = (parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise ServeError(400, f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON")
    return size


def image_elements(spec: dict, binary: bytes, limits: Limits = Limits()) -> list[bytes]:
    """The encoded images of a BYTES input (base64 strings in JSON, or length-prefixed binary),
    counted against ``limits.max_images`` before any is materialised."""
    shape = checked_shape(spec)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ServeError(400, f"BYTES input shape must be [N] (one encoded image each), got {shape}")
    count = shape[0]
    limits.check_count(count, "images declared")
    if _binary_size(spec, binary) is not None:
        images = _length_prefixed(binary, count)
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise ServeError(400, "BYTES input data must be a list of base64 strings (one encoded image each)")
        limits.check_count(len(data), "elements")
        if not all(isinstance(d, str) for d in data):
            raise ServeError(400, "BYTES input data must be a list of base64 strings (one encoded image each)")
        images = [_base64(text, i) for i, text in enumerate(data)]
    if len(images) != count:
        raise ServeError(400, f"BYTES input declares shape [{count}] but holds {len(images)} elements")
    return images


def _base64(text: str, index: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"image[{index}] is not valid base64") from None
    if not data:
        raise ServeError(400, f"empty image[{index}]: send the bytes of an image")
    return data


def _length_prefixed(binary: bytes, count: int) -> list[bytes]:
    """The elements of a length-prefixed body: read up to one past ``count`` (the declared number),
    so a body of millions of elements costs no more than its declared count."""
    items, offset = [], 0
    while offset < len(binary):
        if len(items) == count:
            raise ServeError(400, f"BYTES input declares shape [{count}] but its binary data holds more elements")
        if offset + 4 > len(binary):
            raise ServeError(400, "truncated BYTES element: a 4-byte length prefix is cut off")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if length == 0:
            raise ServeError(400, f"empty image[{len(items)}]: a BYTES element of 0 bytes")
        if offset + length > len(binary):
            raise ServeError(400, f"truncated BYTES element: {length} bytes declared, "
                                  f"{len(binary) - offset} left")
        items.append(binary[offset:offset + length])
        offset += length
    return items


def float_tensor(spec: dict, binary: bytes, size: int, limits: Limits = Limits()) -> torch.Tensor:
    """The FP32 input as an (N, 3, S, S) tensor, checked against the declared shape and ``limits``."""
    shape = checked_shape(spec)
    if spec.get("name") not in (None, "input"):
        raise ServeError(400, f"unknown FP32 input {shorten(spec.get('name'))}; the model's FP32 input is "
                              f"'input'")
    if len(shape) != 4 or shape[1:] != [3, size, size]:
        raise ServeError(400, f"FP32 input shape must be [N, 3, {size}, {size}], got {shorten(shape)}")
    limits.check_count(shape[0], "images declared")
    limits.check_total(shape[0] * size * size, shape[0])
    expected = math.prod(shape)
    if _binary_size(spec, binary) is not None:
        if len(binary) != 4 * expected:
            raise ServeError(400, f"FP32 binary data of {len(binary)} bytes for shape {shape} "
                                  f"({4 * expected} expected)")
        values = np.frombuffer(binary, dtype="<f4").astype(np.float32)
    else:
        values = _json_floats(spec.get("data"))
    if values.size != expected:
        raise ServeError(400, f"FP32 input has {values.size} values for shape {shape} ({expected} expected)")
    if not np.isfinite(values).all():
        raise ServeError(400, "FP32 input holds NaN or infinite values")
    return torch.from_numpy(values.reshape(shape).copy())


def _json_floats(data: Any) -> np.ndarray:
    if not isinstance(data, list):
        raise ServeError(400, "FP32 input data must be a list of numbers")
    try:
        with np.errstate(over="ignore"), warnings.catch_warnings():  # too large: inf, refused below
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise ServeError(400, "FP32 input data must be numbers (flat, or nested to the declared shape)") from None
    return values.reshape(-1)


def response(server: Server, header: dict, probs: torch.Tensor) -> dict[str, Any]:
    """The v2 inference response with the outputs the request asked for."""
    wanted = _requested_outputs(header)
    k = _topk(header, server.config.topk)
    outputs = []
    if "probabilities" in wanted:
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                        "data": probs.reshape(-1).tolist()})
    if "labels" in wanted:
        outputs.append(labels_output(server, probs, k))
    answer: dict[str, Any] = {"model_name": server.config.name, "model_version": "1", "outputs": outputs}
    if isinstance(header.get("id"), str):
        answer["id"] = header["id"]
    return answer


def labels_output(server: Server, probs: torch.Tensor, k: int) -> dict[str, Any]:
    """The ``labels`` output: per image its top k, or a multi-label model's labels padded with ``""``."""
    rows = [[name for name, _ in row] for row in server.labels(probs, k)]
    width = max(map(len, rows), default=0)
    output: dict[str, Any] = {"name": "labels", "datatype": "BYTES", "shape": [len(rows), width],
                              "data": [name for row in rows for name in row + [""] * (width - len(row))]}
    if server.threshold is not None:
        output["parameters"] = {"threshold": server.threshold}
    return output


def _requested_outputs(header: dict) -> tuple[str, ...]:
    outputs = header.get("outputs")
    if outputs is None:
        return OUTPUTS
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ServeError(400, "'outputs' must be a list of objects with a 'name'")
    names = tuple(o.get("name") for o in outputs)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ServeError(400, f"unknown output {unknown[0]!r}; the model's outputs are {', '.join(OUTPUTS)}")
    return names


def _topk(header: dict, default: int) -> int:
    topk = (header.get("parameters") or {}).get("topk", default) if isinstance(header.get("parameters"), dict) \
        else default
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ServeError(400, f"parameters.topk must be a positive integer, got {topk!r}")
    return topk
