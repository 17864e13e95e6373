"""Per-layer summary tables: shapes, parameters, multiply-adds and memory.

Counting follows torchinfo's conventions, so the totals agree with it (ResNet-50 at 224x224:
25,557,032 parameters, 4.09 G multiply-adds): a convolution costs its weight and bias counts
times the output's batch and spatial size; any other layer with parameters costs its parameter
count times the batch size; layers without parameters cost nothing.

The memory lines are torchinfo's estimates too, in MB of 10**6 bytes: the input tensor; the
forward/backward pass as twice (activations and their gradients) the output bytes of every call
of a leaf layer that has parameters (convolutions, norms, the classifier: activations of ReLU,
pooling and additions are not counted); the parameters' bytes (torchinfo adds those of leaf
layers only: the same here, where every parameter lives in a leaf layer); and their total.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import ResnetsError, first_line
from .factory import create_model
from .fileio import atomic_write_text
from .models import get_model_spec, list_models
from .models.cards import CARDS_PATH, cached_cards

BYTES_PER_MB = 10**6  # MB as torchinfo prints them (not MiB)


@dataclass
class LayerRow:
    """One call of one module during the forward pass."""

    name: str
    type: str
    depth: int
    input_shape: list[int] | None
    output_shape: list[int] | None
    params: int
    macs: int
    is_leaf: bool
    trainable: bool = True
    output_bytes: int = 0


@dataclass
class Summary:
    """What :func:`summary` measured. ``str()`` gives the table; ``to_dict()`` the JSON form."""

    model_name: str
    input_size: tuple[int, ...]
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    buffers: int
    macs: int
    input_bytes: int = 0
    param_bytes: int = 0
    depth: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_mb(self) -> float:
        return self.input_bytes / BYTES_PER_MB

    @property
    def activations_mb(self) -> float:
        """Outputs of the leaf layers with parameters, doubled for their gradients (torchinfo's rule)."""
        return 2 * sum(r.output_bytes for r in self.rows if r.is_leaf and r.params) / BYTES_PER_MB

    @property
    def params_mb(self) -> float:
        return self.param_bytes / BYTES_PER_MB

    @property
    def total_mb(self) -> float:
        return self.input_mb + self.activations_mb + self.params_mb

    def visible_rows(self, depth: int | None = None) -> list[LayerRow]:
        """Rows down to ``depth`` (1: the model's direct children); all leaves when None."""
        depth = self.depth if depth is None else depth
        shown = [r for r in self.rows if r.type != "Identity"]  # placeholders such as a disabled drop-path
        if depth is None:
            return [r for r in shown if r.is_leaf]
        return [r for r in shown if r.depth <= depth]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.total_params - self.trainable_params,
            "buffers": self.buffers,
            "macs": self.macs,
            "memory_mb": {"input": round(self.input_mb, 3), "forward_backward": round(self.activations_mb, 3),
                          "params": round(self.params_mb, 3), "total": round(self.total_mb, 3)},
            "layers": [asdict(r) for r in self.rows],
            **self.extra,
        }

    def __str__(self) -> str:
        return format_table(self)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value:
        return _first_tensor(value[0])
    return None


def _shape_of(value: Any) -> list[int] | None:
    tensor = _first_tensor(value)
    return None if tensor is None else list(tensor.shape)


def _own_params(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts of a module, not counting its children."""
    params = list(module.parameters(recurse=False))
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _layer_macs(module: nn.Module, output_shape: list[int] | None) -> int:
    """Multiply-adds of one call, by torchinfo's rule (see the module docstring)."""
    if not output_shape:
        return 0
    counted = sum(p.numel() for name, p in module.named_parameters(recurse=False) if name in ("weight", "bias"))
    spatial = math.prod(output_shape[2:]) if isinstance(module, nn.modules.conv._ConvNd) else 1
    return counted * output_shape[0] * spatial


def check_input_size(model: nn.Module, height: int, width: int) -> None:
    """Refuse an input too small for the network's total stride, with one clear line."""
    minimum = getattr(model, "min_input_size", None)
    if minimum and (height < minimum or width < minimum):
        name = getattr(model, "model_name", type(model).__name__)
        raise ResnetsError(f"input {height}x{width} is too small for {name}: it needs at least "
                           f"{minimum}x{minimum} (the network downsamples by {minimum})")


def _normalise_input_size(input_size: int | Sequence[int], in_chans: int) -> tuple[int, ...]:
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        size = (1, in_chans, *size)
    elif len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or any(s < 1 for s in size):
        raise ResnetsError(f"input size must be N, (H, W), (C, H, W) or (B, C, H, W) with positive "
                           f"values, got {input_size!r}")
    return size


def summary(model: nn.Module, input_size: int | Sequence[int] = 224, *, depth: int | None = None,
            device: str | torch.device | None = None) -> Summary:
    """Run one forward pass with hooks and tabulate every module call.

    ``input_size``: side, (H, W), (C, H, W) or (B, C, H, W) (batch 1, the model's ``in_chans``);
    ``depth``: how deep ``str()`` shows the module tree (None: all leaves); ``device``: default
    the model's; ``"meta"`` counts without computing (ResNet-152 in milliseconds). The input is
    zeros of the model's dtype, so the memory lines follow it.
    """
    size = _normalise_input_size(input_size, getattr(model, "in_chans", 3))
    check_input_size(model, size[2], size[3])
    first = next(model.parameters(), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    rows: list[LayerRow] = []
    handles = _attach_hooks(model, rows)
    was_training = model.training
    model.eval()
    images = torch.zeros(size, device=device, dtype=dtype)  # the model's own dtype
    try:
        with torch.no_grad(), _shape_only_batchnorm(model, torch.device(device).type == "meta"):
            model(images)
    except RuntimeError as error:
        raise ResnetsError(f"the model cannot run on input {list(size)}: {first_line(error)}") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    _aggregate_containers(rows)
    params = list(model.parameters())
    return Summary(
        model_name=getattr(model, "model_name", type(model).__name__), input_size=size, rows=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        buffers=sum(b.numel() for b in model.buffers()),
        macs=sum(r.macs for r in rows if r.is_leaf), input_bytes=_nbytes(images),
        param_bytes=sum(_nbytes(p) for p in params), depth=depth)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@contextlib.contextmanager
def _shape_only_batchnorm(model: nn.Module, enabled: bool) -> Iterator[None]:
    """On the meta device, let BatchNorm pass its input through (same shape, no arithmetic).

    torch runs meta BatchNorm as a Python decomposition, 20x slower than a meta convolution;
    counting needs only the output shape, which BatchNorm never changes. Hooks still fire.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []
    for norm in norms:
        norm.forward = lambda x: x  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _attach_hooks(model: nn.Module, rows: list[LayerRow]) -> list[Any]:
    handles = []
    for name, module in model.named_modules():
        if module is model:
            continue
        depth = name.count(".") + 1
        is_leaf = next(module.children(), None) is None

        def pre_hook(mod: nn.Module, inputs: tuple, name: str = name, depth: int = depth,
                     is_leaf: bool = is_leaf) -> None:
            params, trainable = _own_params(mod)
            rows.append(LayerRow(name, type(mod).__name__, depth, _shape_of(inputs), None, params, 0,
                                 is_leaf, trainable == params))
            mod._summary_row = rows[-1]  # type: ignore[attr-defined]

        def post_hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            row = mod._summary_row  # type: ignore[attr-defined]
            tensor = _first_tensor(output)
            row.output_shape = None if tensor is None else list(tensor.shape)
            row.output_bytes = 0 if tensor is None else _nbytes(tensor)
            row.macs = _layer_macs(mod, row.output_shape) if row.is_leaf else 0

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    return handles


def _aggregate_containers(rows: list[LayerRow]) -> None:
    """Give each container row the totals of the calls nested inside it (rows are in call order)."""
    for i, row in enumerate(rows):
        if row.is_leaf:
            continue
        prefix = row.name + "."
        nested = [r for r in rows[i + 1:] if r.is_leaf and r.name.startswith(prefix)]
        row.macs = sum(r.macs for r in nested)
        seen: set[str] = set()
        row.params += sum(r.params for r in nested if not (r.name in seen or seen.add(r.name)))


def _fmt_shape(shape: list[int] | None) -> str:
    return "-" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def _fmt_count(value: float, unit: str = "") -> str:
    for threshold, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " K")):
        if value >= threshold:
            return f"{value / threshold:.2f}{suffix}{unit}"
    return f"{value:.0f}{' ' + unit if unit else ''}"


def format_table(result: Summary, depth: int | None = None) -> str:
    """The summary as a fixed-width table with totals and memory estimates."""
    header = ("Layer (type)", "Input shape", "Output shape", "Param #", "Mult-adds")
    lines = []
    for row in result.visible_rows(depth):
        indent = "  " * (row.depth - 1) if (depth or result.depth) else ""
        lines.append((f"{indent}{row.name} ({row.type})", _fmt_shape(row.input_shape),
                      _fmt_shape(row.output_shape), f"{row.params:,}" if row.params else "--",
                      _fmt_count(row.macs) if row.macs else "--"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    rule = "=" * (sum(widths) + 2 * (len(widths) - 1))

    def render(cells: Sequence[str]) -> str:
        left = cells[0].ljust(widths[0])
        return "  ".join([left, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    out = [rule, f"{result.model_name}  input {list(result.input_size)}", rule, render(header), rule]
    out += [render(line) for line in lines]
    out += [rule,
            f"Total params: {result.total_params:,}",
            f"Trainable params: {result.trainable_params:,}",
            f"Non-trainable params: {result.total_params - result.trainable_params:,}",
            f"Buffers (e.g. BatchNorm statistics): {result.buffers:,}",
            f"Total mult-adds: {_fmt_count(result.macs)}",
            rule,
            f"Input size (MB): {result.input_mb:.2f}",
            f"Forward/backward pass size (MB): {result.activations_mb:.2f}",
            f"Params size (MB): {result.params_mb:.2f}",
            f"Estimated Total Size (MB): {result.total_mb:.2f}",
            rule]
    return "\n".join(out)


def model_card(name: str) -> dict[str, Any]:
    """Name, description, natural input size, parameters and MACs of a registered model.

    Built and run on the meta device, so it allocates and computes nothing.
    """
    spec = get_model_spec(name)
    with torch.device("meta"):
        model = create_model(name)
    result = summary(model, spec.input_size, device="meta")
    return {"name": name, "description": spec.description, "input_size": spec.input_size,
            "num_classes": spec.num_classes, "params": result.total_params, "macs": result.macs}


def model_cards(names: list[str]) -> list[dict[str, Any]]:
    """Cards of ``names``: stored ones where cards.json has them, computed for the rest (run-time models)."""
    stored = cached_cards()
    return [stored[name] if name in stored else model_card(name) for name in names]


if __name__ == "__main__":  # regenerates resnets/models/cards.json
    atomic_write_text(CARDS_PATH, json.dumps([model_card(name) for name in list_models()], indent=1) + "\n")
    print(f"wrote {CARDS_PATH}")
