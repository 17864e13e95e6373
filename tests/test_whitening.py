"""Patch-whitening of the first convolution (Page 2019, Jordan's airbench 2024)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import ResnetsError
from resnets.models.whitening import fit_patch_whitening, patch_covariance, whitening_filters


def correlated_images(n: int = 200, channels: int = 3, size: int = 8) -> torch.Tensor:
    """Channels mixed and pixels blurred: patches strongly correlated, far from white."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(n, channels, size + 2, size + 2, generator=generator)
    mix = torch.tensor([[1.0, 0.8, 0.3], [0.2, 1.0, 0.7], [0.5, 0.1, 1.0]])[:channels, :channels]
    mixed = torch.einsum("dc,nchw->ndhw", mix, noise)
    blurred = F.avg_pool2d(mixed, 3, stride=1)  # neighbouring pixels share 6 of 9 inputs
    return 2.0 * blurred + 0.5


def output_covariance(conv: nn.Conv2d, images: torch.Tensor, channels: int) -> torch.Tensor:
    with torch.no_grad():
        out = F.conv2d(images.double(), conv.weight[:channels].double())
    flat = out.transpose(0, 1).reshape(channels, -1)
    return flat @ flat.T / flat.shape[1]  # uncentred, as the fit (airbench's)


def max_deviation_from_identity(cov: torch.Tensor) -> float:
    return (cov - torch.eye(cov.shape[0], dtype=cov.dtype)).abs().max().item()


def test_whitened_outputs_have_identity_covariance_and_kaiming_does_not():
    images = correlated_images()
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, 2, bias=True)
    bias = conv.bias.detach().clone()
    raw = max_deviation_from_identity(output_covariance(conv, images, 12))
    assert raw > 0.05  # the check below discriminates: a plain init is far from white

    assert fit_patch_whitening(conv, images) == 24
    assert max_deviation_from_identity(output_covariance(conv, images, 12)) < 0.05
    assert torch.equal(conv.bias, bias)  # the bias keeps its initialisation (airbench)


def test_filters_sorted_by_decreasing_eigenvalue_and_negatives_exact():
    images = correlated_images()
    filters = whitening_filters(images, 2, eps=5e-4)
    assert filters.shape == (24, 3, 2, 2)
    positive, negative = filters[:12], filters[12:]
    assert torch.equal(negative, -positive)
    mean, cov = patch_covariance(images, 2)
    cov = cov + torch.outer(mean, mean)  # the uncentred second moment the filters whiten
    flat = positive.reshape(12, -1).double()
    # v^T C v for a filter v = e / sqrt(lambda + eps) is lambda / (lambda + eps): increasing in
    # lambda, so it decreases along the filters exactly when the eigenvalues do.
    ratios = torch.einsum("id,de,ie->i", flat, cov, flat)
    assert (ratios[:-1] >= ratios[1:]).all()
    norms = flat.norm(dim=1)  # 1/sqrt(lambda + eps): increases as lambda decreases
    assert (norms[:-1] <= norms[1:]).all()
    assert norms[-1] > 2 * norms[0]  # the data really is correlated: eigenvalues spread


def test_patch_covariance_matches_unfold_reference():
    images = correlated_images(n=20)
    mean, cov = patch_covariance(images, 3)
    patches = F.unfold(images.double(), 3).transpose(1, 2).reshape(-1, 27)
    assert torch.allclose(mean, patches.mean(0))
    assert torch.allclose(cov, torch.cov(patches.T, correction=0), atol=1e-10)


def test_half_the_channels_get_top_filters_and_their_negatives():
    images = correlated_images()
    conv = nn.Conv2d(3, 8, 2, bias=False)
    assert fit_patch_whitening(conv, images) == 8
    filters = whitening_filters(images, 2)
    assert torch.allclose(conv.weight[:4], filters[:4])
    assert torch.equal(conv.weight[4:], -conv.weight[:4])


def test_extra_channels_beyond_twice_patch_dim_are_kept():
    images = correlated_images()
    conv = nn.Conv2d(3, 30, 2)
    before = conv.weight.detach().clone()
    assert fit_patch_whitening(conv, images) == 24
    assert torch.equal(conv.weight[24:], before[24:])
    assert not torch.equal(conv.weight[:24], before[:24])
    assert torch.equal(conv.weight[12:24], -conv.weight[:12])


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 7, 2), nn.Conv2d(3, 6, 2, groups=3)], ids=["odd", "groups"])
def test_refuses_odd_channels_and_grouped_convs(conv):
    with pytest.raises(ResnetsError):
        fit_patch_whitening(conv, correlated_images(n=4))
