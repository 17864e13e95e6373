"""Checks on an untrusted Caffe network definition, made before anything is built or allocated.

Every parameter a layer builder reads is checked here for its type (an integer field holds an
integer, not ``1e12`` or ``nan``) and range (strides, kernels and groups at least 1, sizes below
2^31), and every layer for the number of blobs it reads and writes, so a hostile or damaged
prototxt ends in one :class:`ResnetsError` line instead of a traceback or a huge allocation.
What depends on blob shapes (kernel larger than its input, parameter count) is checked while
the net is planned on the meta device (:mod:`.net`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ...errors import ResnetsError
from .prototxt import Message

# Caffe stores sizes as (u)int32: nothing a real net declares comes near.
MAX_DIM = (1 << 31) - 1
# A net declaring more parameters than this is refused before any allocation (8 GB of float32).
MAX_PARAMS = 2_000_000_000
# Values of one blob for one image (512 MiB of float32); real nets stay below 2^24 at 224 px.
MAX_BLOB_VALUES = 1 << 27

_SPATIAL = ("kernel_size", "stride", "pad", "dilation")

# Integer fields: their minimum (the maximum is MAX_DIM, axes are -4..3).
_INTS: dict[str, dict[str, int]] = {
    "convolution_param": {"num_output": 1, "kernel_size": 1, "kernel_h": 1, "kernel_w": 1, "stride": 1,
                          "stride_h": 1, "stride_w": 1, "pad": 0, "pad_h": 0, "pad_w": 0, "dilation": 1,
                          "group": 1},
    "pooling_param": {"kernel_size": 1, "kernel_h": 1, "kernel_w": 1, "stride": 1, "stride_h": 1,
                      "stride_w": 1, "pad": 0, "pad_h": 0, "pad_w": 0},
    "inner_product_param": {"num_output": 1},
    "crop_param": {"offset": 0},
    "concat_param": {"concat_dim": 0},
    "transform_param": {"crop_size": 1},
    "data_param": {"batch_size": 1},
    "image_data_param": {"batch_size": 1, "new_height": 1, "new_width": 1},
    "memory_data_param": {"batch_size": 1, "channels": 1, "height": 1, "width": 1},
}
_AXES = {"inner_product_param": ("axis",), "concat_param": ("axis",), "flatten_param": ("axis", "end_axis"),
         "crop_param": ("axis",), "softmax_param": ("axis",)}
# Float fields: (lowest, highest) allowed, both inclusive.
_FLOATS: dict[str, dict[str, tuple[float, float]]] = {
    "batch_norm_param": {"eps": (1e-12, 1.0), "moving_average_fraction": (0.0, 1.0)},
    "relu_param": {"negative_slope": (-1e6, 1e6)},
    "dropout_param": {"dropout_ratio": (0.0, 0.999999)},
    "eltwise_param": {"coeff": (-1e12, 1e12)},
    "transform_param": {"scale": (-1e12, 1e12), "mean_value": (-1e12, 1e12)},
}
_BOOLS = {"convolution_param": ("bias_term",), "inner_product_param": ("bias_term", "transpose"),
          "scale_param": ("bias_term",), "pooling_param": ("global_pooling",),
          "batch_norm_param": ("use_global_stats",), "transform_param": ("mirror",),
          "image_data_param": ("is_color",)}
_ENUMS = {("pooling_param", "pool"): ("MAX", "AVE", "STOCHASTIC", "0", "1", "2"),
          ("eltwise_param", "operation"): ("PROD", "SUM", "MAX", "0", "1", "2")}

# (fewest bottoms, most bottoms or None, tops) of the layers that run.
_ARITY: dict[str, tuple[int, int | None, int | None]] = {
    "Convolution": (1, 1, 1), "Pooling": (1, 1, 1), "InnerProduct": (1, 1, 1), "ReLU": (1, 1, 1),
    "BatchNorm": (1, 1, 1), "Scale": (1, 1, 1), "Dropout": (1, 1, 1), "Softmax": (1, 1, 1),
    "Sigmoid": (1, 1, 1), "TanH": (1, 1, 1), "Flatten": (1, 1, 1), "Eltwise": (2, None, 1),
    "Concat": (1, None, 1), "Crop": (2, 2, 1), "Split": (1, 1, None),
}


def is_int(value: Any) -> bool:
    """An integer proper (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_dims(dims: list[Any], what: str) -> tuple[int, ...]:
    """Blob dimensions as written in a prototxt: integers >= 1, their product bounded."""
    for dim in dims:
        if not is_int(dim) or not 1 <= dim <= MAX_DIM:
            raise ResnetsError(f"{what} has dimension {dim!r}; dimensions are integers from 1 to {MAX_DIM}")
    if math.prod(dims[1:]) > MAX_BLOB_VALUES:
        raise ResnetsError(f"{what} declares {math.prod(dims[1:]):.3g} values per image, over the limit "
                           f"of {MAX_BLOB_VALUES:.3g}; use a smaller input shape")
    return tuple(dims)


def check_layer(message: Message, kind: str, name: str) -> None:
    """Types and ranges of the parameters of one layer, and how many blobs it reads and writes."""
    where = f"{kind} layer {name!r}"
    for field in ("bottom", "top"):
        for value in message.get(field, []):
            if not isinstance(value, str):
                raise ResnetsError(f"{where}: {field} must be a quoted blob name, got {value!r}")
    for param_name, values in message.items():
        if param_name.endswith("_param"):
            for param in values:
                if not isinstance(param, dict):
                    raise ResnetsError(f"{where}: {param_name} must be a {{ ... }} block, got {param!r}")
                _check_param(param_name, param, where)
    _check_arity(kind, message, where)


def _check_param(param_name: str, param: Message, where: str) -> None:
    def check(field: str, ok: Callable[[Any], bool], wanted: str) -> None:
        for value in param.get(field, []):
            if not ok(value):
                raise ResnetsError(f"{where}: {param_name}.{field} must be {wanted}, got {value!r}")

    for field, minimum in _INTS.get(param_name, {}).items():
        if field in _SPATIAL and len(param.get(field, [])) > 2:
            raise ResnetsError(f"{where}: {len(param[field])} values of {field}; only 2-d layers run here")
        check(field, lambda v: is_int(v) and minimum <= v <= MAX_DIM, f"an integer from {minimum} to {MAX_DIM}")
    for field in _AXES.get(param_name, ()):
        check(field, lambda v: is_int(v) and -4 <= v <= 3, "an axis from -4 to 3")
    for field, (low, high) in _FLOATS.get(param_name, {}).items():
        check(field, lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and low <= v <= high,
              f"a number from {low:g} to {high:g}")
    for field in _BOOLS.get(param_name, ()):
        check(field, lambda v: isinstance(v, bool), "true or false")
    for (message_name, field), allowed in _ENUMS.items():
        if message_name == param_name:
            check(field, lambda v: str(v) in allowed and not isinstance(v, (bool, float)),
                  f"one of {', '.join(allowed[:3])}")


def _check_arity(kind: str, message: Message, where: str) -> None:
    if kind not in _ARITY:
        return
    fewest, most, tops = _ARITY[kind]
    bottoms, produced = len(message.get("bottom", [])), len(message.get("top", []))
    if bottoms < fewest or (most is not None and bottoms > most):
        wanted = f"{fewest}" if fewest == most else f"at least {fewest}" if most is None else f"{fewest} to {most}"
        raise ResnetsError(f"{where} reads {bottoms} blob(s) but takes {wanted}; check its `bottom:` lines")
    if produced < 1 or (tops is not None and produced != tops):
        wanted = "at least 1" if tops is None else str(tops)
        raise ResnetsError(f"{where} writes {produced} blob(s) but must write {wanted}; check its `top:` lines")


def check_param_count(count: int, limit: int, what: str) -> None:
    """Refuse a definition whose parameters exceed ``limit`` (nothing is allocated yet)."""
    if count > limit:
        raise ResnetsError(f"{what} declares {count:.3g} parameters ({count * 4 / 1e9:.3g} GB of float32), over "
                           f"the limit of {limit:.3g}; a real network is far smaller (to lift it, pass "
                           "max_params= to from_prototxt)")
