"""Fast-training optimizer pieces: BatchNorm biases at their own rate (Page 2019), weight EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnets.errors import ResnetsError
from resnets.train.ema import build_ema, ema_decay_for_steps
from resnets.train.optim import build_optimizer, param_groups
from resnets.train.schedule import build_scheduler


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


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating BN buffers (running mean/var), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def perturb(net: nn.Module, generator: torch.Generator) -> None:
    """A stand-in for a training step: new weights and new BN statistics (variances kept positive)."""
    with torch.no_grad():
        for name, tensor in net.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
                if name.endswith("running_var"):
                    tensor.abs_()


def test_ema_follows_the_formula_for_weights_and_bn_buffers():
    net, decay, other_decay = tiny_net(), 0.8, 0.7
    ema = build_ema(net, decay)
    generator = torch.Generator().manual_seed(1)
    perturb(net, generator)
    ema.update_parameters(net)  # the first update copies: ema_0 = w_0
    expected, other = float_state(net), float_state(net)
    for _ in range(4):
        perturb(net, generator)
        ema.update_parameters(net)
        weights = float_state(net)
        for key in expected:
            expected[key] = decay * expected[key] + (1 - decay) * weights[key]
            other[key] = other_decay * other[key] + (1 - other_decay) * weights[key]
    averaged = float_state(ema.module)
    assert set(averaged) == set(expected) and "1.running_mean" in averaged and "1.running_var" in averaged
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key])
        with pytest.raises(AssertionError):  # the comparison tells decays apart
            torch.testing.assert_close(averaged[key], other[key])


def test_decay_from_half_life_halves_an_old_value_after_that_many_updates():
    decay = ema_decay_for_steps(5)
    net = nn.Linear(1, 1, bias=False)
    ema = build_ema(net, decay)
    with torch.no_grad():
        net.weight.fill_(0.0)
        ema.update_parameters(net)
        net.weight.fill_(1.0)
        for _ in range(5):
            ema.update_parameters(net)
    assert ema.module.weight.item() == pytest.approx(0.5)
    for bad in (0, -3, float("nan"), float("inf")):
        with pytest.raises(ResnetsError):
            ema_decay_for_steps(bad)


def muon_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def one_backward(net: nn.Module) -> None:
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 3, 6, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    nn.functional.cross_entropy(net(x), y).backward()


def test_muon_orthogonalises_the_filter_update_and_sgd_steps_the_rest():
    net, reference = muon_net(), muon_net()
    optimizer = build_optimizer("muon", param_groups(net, 0.1, 0.0, head=net[5]), 0.9, torch.device("cpu"))
    sgd = build_optimizer("sgd", param_groups(reference, 0.1, 0.0, head=reference[5]), 0.9, torch.device("cpu"))
    before = net[0].weight.detach().clone()
    one_backward(net)
    one_backward(reference)
    grad = net[0].weight.grad.reshape(8, -1).clone()
    optimizer.step()
    sgd.step()
    update = (before - net[0].weight.detach()).reshape(8, -1) / 0.1  # out 8 < in 27: lr not adjusted
    singular = torch.linalg.svdvals(update)
    assert singular.min() > 0.5 and singular.max() < 1.5  # Newton-Schulz: all near 1
    raw = torch.linalg.svdvals(grad)
    assert raw.max() / raw.min() > 3  # an SGD update's singular values are far from equal
    for name in ("1.weight", "1.bias", "5.weight", "5.bias"):  # the rest: exactly torch's SGD
        torch.testing.assert_close(net.state_dict()[name], reference.state_dict()[name])


def test_onecycle_drives_every_group_of_muon():
    net = muon_net()
    groups = param_groups(net, 0.05, 5e-4, head=net[5], norm_bias_lr_scale=4.0)
    optimizer = build_optimizer("muon", groups, 0.9, torch.device("cpu"))
    assert [g["muon"] for g in optimizer.param_groups] == [True, False, False, False, False]
    scheduler = build_scheduler(optimizer, "onecycle", total_steps=6, warmup_steps=2)
    start = [g["lr"] for g in optimizer.param_groups]
    for _ in range(3):
        optimizer.zero_grad()
        one_backward(net)
        optimizer.step()
        scheduler.step()
    later = [g["lr"] for g in optimizer.param_groups]  # just past the peak (2 warm-up steps)
    assert all(lr > s for lr, s in zip(later, start)) and later[2] == pytest.approx(4 * later[0])
    assert all(g["momentum"] < 0.9 for g in optimizer.param_groups)  # cycled down near the peak lr
    state = optimizer.state_dict()
    assert len(state["state"]) == len(list(net.parameters()))  # every buffer checkpointed
    restored = build_optimizer("muon", param_groups(net, 0.05, 5e-4, head=net[5], norm_bias_lr_scale=4.0),
                               0.9, torch.device("cpu"))
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.state[net[0].weight]["momentum_buffer"],
                               optimizer.state[net[0].weight]["momentum_buffer"])
