"""Patch-whitening initialisation of a network's first convolution.

Source: David Page, "How to train your ResNet" part 8 (2019), and Keller Jordan's airbench (2024):
the first layer's filters are the eigenvectors of the second moment of the training images' k x k
patches, each divided by sqrt(eigenvalue + eps), so that the layer's outputs are decorrelated
with unit second moment from the first step. Each filter is used with both signs, so that a ReLU
after the layer passes both halves of every whitened direction. As in airbench94_muon, the moment
is uncentred (the images are already normalised, so their mean is near zero) and the
convolution's bias keeps its initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ResnetsError

# At most this many images are used: the covariance of 10,000 CIFAR images' patches is already
# exact to a few parts in a thousand, and more only costs time.
MAX_IMAGES = 10_000
# Images unfolded at once; bounds the float64 patch matrix (chunk x C*k*k x patches per image).
_CHUNK = 256


def patch_covariance(images: Tensor, kernel_size: int) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D) of every k x k x C patch (stride 1, no padding), D = C*k*k.

    Patches are flattened in the order of a conv weight's (C, k, k) so the eigenvectors reshape
    straight into filters. Accumulated over chunks of images in float64 (sums of many products
    lose digits in float32); the covariance divides by the number of patches.
    """
    _check_images(images, kernel_size)
    images = images[:MAX_IMAGES]
    dim = images.shape[1] * kernel_size * kernel_size
    total = torch.zeros(dim, dtype=torch.float64, device=images.device)
    outer = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    count = 0
    for chunk in images.split(_CHUNK):
        patches = F.unfold(chunk.to(torch.float64), kernel_size)  # (n, D, L)
        patches = patches.transpose(1, 2).reshape(-1, dim)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += patches.shape[0]
    mean = total / count
    return mean, outer / count - torch.outer(mean, mean)


def whitening_filters(images: Tensor, kernel_size: int, eps: float = 5e-4) -> Tensor:
    """(2*C*k*k, C, k, k) filters: the patches' second moment's eigenvectors by decreasing eigenvalue,
    each scaled by 1/sqrt(eigenvalue + eps), followed by the same filters negated."""
    if not eps > 0:
        raise ResnetsError(f"whitening eps must be positive, got {eps}")
    mean, cov = patch_covariance(images, kernel_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov + torch.outer(mean, mean))  # the second moment; ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    scaled = eigenvectors.T / (eigenvalues.clamp(min=0) + eps).sqrt()[:, None]
    filters = scaled.reshape(-1, images.shape[1], kernel_size, kernel_size).to(images.dtype)
    return torch.cat([filters, -filters])


def fit_patch_whitening(conv: nn.Conv2d, images: Tensor, eps: float = 5e-4) -> int:
    """Write the top ``out_channels // 2`` whitening filters, then their negatives, into ``conv``.

    With more output channels than 2*C*k*k, the channels beyond are left as initialised, and so is
    the bias. Returns the number of channels written.
    """
    _check_conv(conv, images)
    kernel_size = conv.kernel_size[0]
    filters = whitening_filters(images, kernel_size, eps)
    half = min(conv.out_channels // 2, filters.shape[0] // 2)
    with torch.no_grad():
        weight = conv.weight
        weight[:half] = filters[:half].to(weight)
        weight[half:2 * half] = -filters[:half].to(weight)
    return 2 * half


def _check_images(images: Tensor, kernel_size: int) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ResnetsError(f"whitening needs float images (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
    if kernel_size < 1 or min(images.shape[2:]) < kernel_size:
        raise ResnetsError(f"whitening kernel {kernel_size} does not fit images of size {tuple(images.shape[2:])}")
    if images.shape[0] == 0:
        raise ResnetsError("whitening needs at least one image")


def _check_conv(conv: nn.Conv2d, images: Tensor) -> None:
    if conv.groups != 1:
        raise ResnetsError(f"patch whitening needs a convolution with groups=1, got groups={conv.groups}")
    if conv.out_channels % 2:
        raise ResnetsError(f"patch whitening needs an even number of output channels, got {conv.out_channels}")
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.dilation != (1, 1):
        raise ResnetsError(f"patch whitening needs a square undilated kernel, got kernel {conv.kernel_size} "
                           f"dilation {conv.dilation}")
    if images.ndim == 4 and images.shape[1] != conv.in_channels:
        raise ResnetsError(f"the convolution takes {conv.in_channels} channels, the images have {images.shape[1]}")
