"""Torch modules for the Caffe layers that have no exact one-module equivalent in torch.nn."""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor, nn


class InnerProduct(nn.Linear):
    """Caffe's InnerProduct: flatten from ``axis`` on, then a linear map."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, axis: int = 1) -> None:
        super().__init__(in_features, out_features, bias)
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(torch.flatten(x, self.axis))


class ChannelScale(nn.Module):
    """Caffe's Scale layer on its own (not after a BatchNorm): ``x * gamma (+ beta)`` per channel."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = x * self.weight.view(shape)
        return x + self.bias.view(shape) if self.bias is not None else x


class Eltwise(nn.Module):
    """Element-wise SUM (with optional coefficients), PROD or MAX of its inputs."""

    def __init__(self, operation: str = "SUM", coeffs: Sequence[float] = ()) -> None:
        super().__init__()
        self.operation = operation
        self.coeffs = tuple(float(c) for c in coeffs)

    def extra_repr(self) -> str:
        return f"operation={self.operation}" + (f", coeffs={self.coeffs}" if self.coeffs else "")

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.operation == "PROD":
            return functools.reduce(torch.mul, inputs)
        if self.operation == "MAX":
            return functools.reduce(torch.maximum, inputs)
        coeffs = self.coeffs or (1.0,) * len(inputs)
        out = inputs[0] * coeffs[0] if coeffs[0] != 1.0 else inputs[0]
        for c, x in zip(coeffs[1:], inputs[1:]):
            out = out + (x * c if c != 1.0 else x)
        return out


class Concat(nn.Module):
    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis

    def extra_repr(self) -> str:
        return f"axis={self.axis}"

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.cat(inputs, self.axis)


class Crop(nn.Module):
    """Caffe's Crop: cut the first input to the second one's shape from ``axis`` on."""

    def __init__(self, axis: int = 2, offsets: Sequence[int] = ()) -> None:
        super().__init__()
        self.axis = axis
        self.offsets = tuple(offsets)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offsets={self.offsets or (0,)}"

    def forward(self, x: Tensor, reference: Tensor) -> Tensor:
        for i, dim in enumerate(range(self.axis % x.dim(), x.dim())):
            offset = self.offsets[0] if len(self.offsets) == 1 else (self.offsets[i] if self.offsets else 0)
            x = x.narrow(dim, offset, reference.shape[dim])
        return x


class Split(nn.Module):
    """Caffe's Split: the same blob under several names."""

    def __init__(self, copies: int) -> None:
        super().__init__()
        self.copies = copies

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x,) * self.copies
