"""Binary ``.caffemodel`` files (a serialized ``caffe.NetParameter``) without Caffe or protoc.

Only the messages that carry weights are declared, with Caffe's own field numbers (from
``caffe.proto``); every other field of a real caffemodel is skipped by the protobuf parser as
an unknown field. The descriptors are built in Python, so nothing is generated at build time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ...errors import ResnetsError
from ...fileio import atomic_write_bytes

_F = descriptor_pb2.FieldDescriptorProto

# (message, [(field, number, type, label, message type name, packed)]) from caffe.proto.
_SCHEMA = [
    ("BlobShape", [("dim", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, None, True)]),
    ("BlobProto", [
        ("num", 1, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("channels", 2, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("height", 3, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("width", 4, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("data", 5, _F.TYPE_FLOAT, _F.LABEL_REPEATED, None, True),
        ("shape", 7, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "BlobShape", False),
        ("double_data", 8, _F.TYPE_DOUBLE, _F.LABEL_REPEATED, None, True),
    ]),
    ("LayerParameter", [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("type", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("bottom", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("top", 4, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("blobs", 7, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "BlobProto", False),
    ]),
    # The pre-2015 layer message (``layers``): its type is an enum, kept here as a plain int.
    ("V1LayerParameter", [
        ("bottom", 2, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("top", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("name", 4, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("type", 5, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("blobs", 6, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "BlobProto", False),
    ]),
    ("NetParameter", [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("layers", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "V1LayerParameter", False),
        ("layer", 100, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "LayerParameter", False),
    ]),
]
_PACKAGE = "resnets_caffe"


def _build_messages() -> dict[str, type]:
    file_proto = descriptor_pb2.FileDescriptorProto(name="resnets_caffe_subset.proto",
                                                    package=_PACKAGE, syntax="proto2")
    for message_name, fields in _SCHEMA:
        message = file_proto.message_type.add(name=message_name)
        for name, number, ftype, label, type_name, packed in fields:
            field = message.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if packed:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name, _ in _SCHEMA}


_MESSAGES = _build_messages()
NetParameter = _MESSAGES["NetParameter"]
BlobProto = _MESSAGES["BlobProto"]


# Caffe's own limits: at most 32 axes (kMaxBlobAxes), each dimension an int32.
MAX_BLOB_AXES = 32
MAX_BLOB_DIM = (1 << 31) - 1


def blob_to_array(blob, where: str = "a blob") -> np.ndarray:
    """A BlobProto as an array: its ``shape``, or the legacy (num, channels, height, width).

    The declared shape is untrusted: it is checked (dimensions 0..2^31-1, at most 32 axes) and
    its element count compared with the values actually present before anything is allocated.
    """
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = tuple(d for d in (blob.num, blob.channels, blob.height, blob.width))
    if len(shape) > MAX_BLOB_AXES or any(not 0 <= d <= MAX_BLOB_DIM for d in shape):
        raise ResnetsError(f"{where} declares shape {shape[:8]}{'...' if len(shape) > 8 else ''}: "
                           f"at most {MAX_BLOB_AXES} dimensions from 0 to {MAX_BLOB_DIM}; the caffemodel is damaged")
    present = len(blob.double_data) or len(blob.data)
    if math.prod(shape) != present:
        raise ResnetsError(f"{where} declares shape {shape} ({math.prod(shape)} values) but holds {present}; "
                           "the caffemodel is damaged")
    values = (np.array(blob.double_data, dtype=np.float64) if len(blob.double_data)
              else np.array(blob.data, dtype=np.float32))
    return values.reshape(shape)


def read_binaryproto(path: str | os.PathLike) -> np.ndarray:
    """The array in a ``.binaryproto`` file (one BlobProto): Caffe's ``mean_file``, (1, C, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"mean file {str(path)!r} not found; check the path")
    blob = BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
    except DecodeError as error:
        raise ResnetsError(f"{path} is not a readable binaryproto (truncated? {error})") from None
    return blob_to_array(blob)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """{layer name: [blob arrays]} of every layer with weights in a binary ``.caffemodel``.

    Both the current ``layer`` and the legacy V1 ``layers`` fields are read.
    """
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"caffemodel {str(path)!r} not found; check the path")
    net = NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except DecodeError as error:
        raise ResnetsError(f"{path} is not a readable caffemodel (truncated or not binary "
                           f"protobuf: {error}); re-download or re-export it") from None
    weights: dict[str, list[np.ndarray]] = {}
    for layer in list(net.layer) + list(net.layers):
        if len(layer.blobs):
            weights[layer.name] = [blob_to_array(blob, f"blob {i} of layer {layer.name!r}")
                                   for i, blob in enumerate(layer.blobs)]
    if not weights:
        raise ResnetsError(f"{path} holds no weights (an empty or truncated caffemodel?)")
    return weights


# Field numbers used when writing: serialized protobuf messages may be concatenated (their
# fields merge), so large float arrays are appended as raw packed bytes and never go through
# a Python-level repeated field, which is orders of magnitude slower.
_NET_LAYER, _LAYER_BLOBS, _BLOB_DATA = 100, 7, 5


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _blob_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<f4")
    header = BlobProto()
    header.shape.dim.extend(array.shape)
    # Field order as protobuf itself writes it (data = 5 before shape = 7): byte-identical files.
    return _length_delimited(_BLOB_DATA, array.tobytes()) + header.SerializeToString()


def write_caffemodel(path: str | os.PathLike, net_name: str,
                     layers: Mapping[str, Sequence[np.ndarray]],
                     layer_types: Mapping[str, str] | None = None) -> None:
    """Write ``{layer name: [blobs]}`` as a binary caffemodel (atomically).

    ``layer_types`` optionally records each layer's Caffe type; Caffe itself matches weights to
    layers by name only. Blobs are stored as float32 with an N-d ``shape``.
    """
    parts = [NetParameter(name=net_name).SerializeToString()]
    for name, blobs in layers.items():
        header = _MESSAGES["LayerParameter"](name=name)
        if layer_types and name in layer_types:
            header.type = layer_types[name]
        layer = header.SerializeToString() + b"".join(
            _length_delimited(_LAYER_BLOBS, _blob_bytes(array)) for array in blobs)
        parts.append(_length_delimited(_NET_LAYER, layer))
    atomic_write_bytes(path, b"".join(parts))
