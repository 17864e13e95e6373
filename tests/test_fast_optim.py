"""Fast-training optimizer pieces: BatchNorm biases at their own rate (Page 2019), weight EMA."""

from __future__ import annotations

import torch
from torch import nn

from resnets.train.ema import build_ema
from resnets.train.optim import param_groups


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, bias=False), nn.GroupNorm(2, 4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2))


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_norm_bias_group_holds_exactly_the_norm_biases_at_scaled_lr():
    net = tiny_net()
    groups = param_groups(net, 0.1, 5e-4, head_lr=0.01, head=net[9], norm_bias_lr_scale=64.0)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["body", "body_no_decay", "body_norm_bias", "head", "head_no_decay"]
    norm_bias = by_name["body_norm_bias"]
    assert ids(norm_bias["params"]) == ids([net[1].bias, net[4].bias, net[8].bias])
    assert norm_bias["lr"] == 0.1 * 64 and norm_bias["weight_decay"] == 0.0
    # the conv bias and the norm weights stay in the plain no-decay group at the plain rate
    assert ids(by_name["body_no_decay"]["params"]) == ids([net[0].bias, net[1].weight, net[4].weight, net[8].weight])
    assert by_name["body_no_decay"]["lr"] == 0.1
    assert by_name["head"]["lr"] == by_name["head_no_decay"]["lr"] == 0.01
    assert sorted(ids(p for g in groups for p in g["params"])) == sorted(ids(net.parameters()))


def test_scale_one_keeps_the_plain_groups():
    net = tiny_net()
    groups = param_groups(net, 0.1, 5e-4, head_lr=0.01, head=net[9], norm_bias_lr_scale=1.0)
    assert groups == param_groups(net, 0.1, 5e-4, head_lr=0.01, head=net[9])
    expected = [("body", [net[0].weight, net[3].weight], 0.1, 5e-4),
                ("body_no_decay", [net[0].bias, net[1].weight, net[1].bias, net[4].weight, net[4].bias,
                                   net[8].weight, net[8].bias], 0.1, 0.0),
                ("head", [net[9].weight], 0.01, 5e-4), ("head_no_decay", [net[9].bias], 0.01, 0.0)]
    assert [(g["name"], ids(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == \
        [(name, ids(params), lr, wd) for name, params, lr, wd in expected]
