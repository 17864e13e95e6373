"""The Keras ResNetV2 layout options of ResNetConfig (their numerics are tested against Keras)."""

from __future__ import annotations

import pytest
import torch

from resnets import ResnetsError, create_model


def test_stride_in_last_block_moves_downsampling_and_keeps_output_stride():
    model = create_model("preact_resnet18", stride_in_last_block=True, stem_bias=True, stem_pool_zero_pad=True)
    assert [f.reduction for f in model.feature_info] == [8, 16, 32, 32]
    assert [m.shape[-1] for m in model.forward_intermediates(torch.randn(1, 3, 64, 64))] == [8, 4, 2, 2]
    assert model.conv1.bias is not None
    default = create_model("preact_resnet18")
    assert [f.reduction for f in default.feature_info] == [4, 8, 16, 32] and default.conv1.bias is None


def test_zero_padded_stem_pool_differs_from_ignored_border_only_for_negative_inputs():
    zero, ignore = (create_model("preact_resnet18", stem_pool_zero_pad=flag).maxpool for flag in (True, False))
    x = torch.rand(1, 2, 8, 8)
    assert torch.equal(zero(x), ignore(x))
    assert not torch.equal(zero(-x), ignore(-x))


def test_stride_in_last_block_needs_preact_blocks():
    with pytest.raises(ResnetsError, match="pre-activation"):
        create_model("resnet18", stride_in_last_block=True)
