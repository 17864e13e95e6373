"""Residual blocks and the shortcuts between stages.

Parameter names follow torchvision (``conv1``, ``bn1``, ..., ``downsample.0``/``.1``) so that
torchvision and timm checkpoints load with ``strict=True``. The average-pool shortcut of
ResNet-D puts its pool first (``downsample.0``), as timm does, so its convolution is
``downsample.1``.
"""

from __future__ import annotations

from typing import Callable, Literal

from torch import Tensor, nn

ShortcutKind = Literal["projection", "avg_down", "zero_pad"]
NormFactory = Callable[[int], nn.Module]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A of the paper (CIFAR nets): subsample by striding, pad new channels with zeros.

    It has no parameters, which is why ResNet-20 has 0.27 M of them and not more.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_ch - in_ch

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return nn.functional.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class SubsampleShortcut(nn.MaxPool2d):
    """Shortcut of a strided block whose width does not change (Keras ``ResNet50V2``): a 1x1
    max-pool, i.e. every ``stride``-th pixel. Like an identity it reads the block's raw input,
    not the pre-activated one."""

    reads_raw_input = True

    def __init__(self, stride: int) -> None:
        super().__init__(kernel_size=1, stride=stride)


def _shortcut(block: nn.Module, x: Tensor, preact: Tensor) -> Tensor:
    """A pre-activation block's shortcut: identity or subsample of ``x``, projection of ``preact``."""
    if block.downsample is None:
        return x
    return block.downsample(x if getattr(block.downsample, "reads_raw_input", False) else preact)


def make_shortcut(kind: ShortcutKind, in_ch: int, out_ch: int, stride: int,
                  norm: NormFactory | None) -> nn.Module | None:
    """The shortcut of a block whose output shape differs from its input; None if it does not.

    ``norm=None`` builds the pre-activation form, whose projection has no norm of its own.
    """
    if stride == 1 and in_ch == out_ch:
        return None
    if kind == "zero_pad":
        return ZeroPadShortcut(in_ch, out_ch, stride)
    layers: list[nn.Module] = []
    if kind == "avg_down":
        pool: nn.Module = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                           if stride > 1 else nn.Identity())
        layers += [pool, conv1x1(in_ch, out_ch)]
    elif kind == "projection":
        layers.append(conv1x1(in_ch, out_ch, stride))
    else:
        raise ValueError(f"unknown shortcut kind {kind!r}: use projection, avg_down or zero_pad")
    if norm is not None:
        layers.append(norm(out_ch))
    return nn.Sequential(*layers) if len(layers) > 1 else layers[0]


def _drop_path(rate: float) -> nn.Module:
    if rate <= 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth  # imported only when used: torchvision is slow to import

    return StochasticDepth(rate, mode="row")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, norm: NormFactory = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path_rate)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet-50/101/152, ResNeXt and Wide ResNet.

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (v1: the paper, Caffe, Keras);
    the default puts it on the 3x3 conv (v1.5: torchvision), which is slightly more accurate.
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, norm: NormFactory = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_ch, width, stride_1x1)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path_rate)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + shortcut)


class PreActBasicBlock(nn.Module):
    """Pre-activation form of BasicBlock (ResNet v2): BN-ReLU before each conv, no ReLU after the sum.

    The projection shortcut takes the pre-activated input, as in the v2 paper's code and Keras.
    """

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, norm: NormFactory = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock supports only groups=1 and base_width=64")
        self.bn1 = norm(in_ch)
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn2 = norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path_rate)

    def last_conv(self) -> nn.Conv2d:
        return self.conv2

    def forward(self, x: Tensor) -> Tensor:
        preact = self.relu(self.bn1(x))
        shortcut = _shortcut(self, x, preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        return self.drop_path(out) + shortcut


class PreActBottleneck(nn.Module):
    """Pre-activation form of Bottleneck (ResNet v2), stride on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, norm: NormFactory = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = norm(in_ch)
        self.conv1 = conv1x1(in_ch, width, stride_1x1)
        self.bn2 = norm(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn3 = norm(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path_rate)

    def last_conv(self) -> nn.Conv2d:
        return self.conv3

    def forward(self, x: Tensor) -> Tensor:
        preact = self.relu(self.bn1(x))
        shortcut = _shortcut(self, x, preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return self.drop_path(out) + shortcut


class ConvPool(nn.Module):
    """A ResNet-9 stage's entry: 3x3 conv, BN, ReLU, then a 2x2 max-pool that halves the size
    (David Page, "How to train your ResNet", 2018: the "prep"/"layer" units of his ResNet-9).

    ``pool_before_norm`` pools right after the conv (conv, pool, BN, act), as Keller Jordan's
    airbench does, so the BN and activation run on a quarter of the pixels.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: NormFactory = nn.BatchNorm2d,
                 pool_before_norm: bool = False) -> None:
        super().__init__()
        self.conv = conv3x3(in_ch, out_ch)
        self.bn = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.pool_before_norm = pool_before_norm

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_before_norm:
            return self.relu(self.bn(self.pool(self.conv(x))))
        return self.pool(self.relu(self.bn(self.conv(x))))


class PlainConv(nn.Module):
    """conv-BN-ReLU without a shortcut: airbench's second conv of a group, which replaced the
    residual pair of Page's ResNet-9 (a ``conv_pool`` stage's block when ``residual=False``).
    It has no ``last_norm``: zeroing its BN would cut the signal, not make an identity."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, norm: NormFactory = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if stride != 1 or downsample is not None or groups != 1 or drop_path_rate > 0:
            raise ValueError("PlainConv is a stride-1 conv (no shortcut, groups=1, no stochastic depth)")
        self.conv = conv3x3(in_ch, planes)
        self.bn = norm(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResidualPair(nn.Module):
    """Page's residual unit: ``x + relu(bn(conv(relu(bn(conv(x))))))``, identity shortcut.

    Unlike :class:`BasicBlock` the second ReLU comes before the addition, as in Page's ResNet-9.
    """

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, norm: NormFactory = nn.BatchNorm2d,
                 drop_path_rate: float = 0.0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if in_ch != planes or stride != 1 or downsample is not None or groups != 1:
            raise ValueError("ResidualPair keeps its width and size (identity shortcut, groups=1)")
        self.conv1 = conv3x3(planes, planes)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = _drop_path(drop_path_rate)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return x + self.drop_path(out)


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
    "conv_pool": ResidualPair,  # a stage is ConvPool + ``layers[i]`` ResidualPairs (ResNet-9)
}


def zero_init_last(block: nn.Module) -> None:
    """Start a block as the identity: zero its last BN scale (post-act) or last conv (pre-act)."""
    if hasattr(block, "last_norm"):
        norm = block.last_norm()
        if getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)
    elif hasattr(block, "last_conv"):
        nn.init.zeros_(block.last_conv().weight)
