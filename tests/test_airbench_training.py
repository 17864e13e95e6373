"""airbench's training techniques, each a setting of its own, on small cases."""

from __future__ import annotations

import pytest
import torch

from _train_fixtures import tensor_data, tiny_config
from resnets.train.config import TrainConfig
from resnets.train.distributed import DistContext
from resnets.train.engine import Meters, Trainer
from resnets.train.schedule import build_scheduler
from resnets.train.setup import prepare


def test_linear_schedule_falls_straight_to_zero_without_warm_up():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.24)
    scheduler = build_scheduler(optimizer, "linear", total_steps=200, warmup_steps=0)
    rates = []
    for _ in range(200):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.24) and rates[100] == pytest.approx(0.12)
    assert rates == pytest.approx([0.24 * (1 - k / 200) for k in range(200)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def _first_step_gradient(tmp_path, reduction: str) -> torch.Tensor:
    config = tiny_config(tmp_path / reduction, loss_reduction=reduction, epochs=1, batch_size=8, lr=1e-9)
    setup = prepare(config, tensor_data(), torch.device("cpu"), DistContext())
    setup.train_loader.set_epoch(0)
    x, y = next(iter(setup.train_loader))
    trainer = Trainer(setup, [])
    setup.optimizer.zero_grad()
    trainer.train_step(x, y, Meters(setup.device), step_now=False)
    return setup.model.conv1.weight.grad.clone()


def test_sum_reduced_loss_is_the_mean_times_the_batch(tmp_path):
    mean, total = _first_step_gradient(tmp_path, "mean"), _first_step_gradient(tmp_path, "sum")
    torch.testing.assert_close(total, mean * 8, rtol=1e-5, atol=1e-7)
    assert TrainConfig(loss_reduction="sum").loss_reduction == "sum"


def test_muon_renormalisation_sets_each_filter_tensors_norm_before_the_update():
    from resnets.train.optim import build_optimizer

    def stepped(renormalize: bool) -> torch.Tensor:
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 3)
        optimizer = build_optimizer("muon", [{"params": [weight], "lr": 1e-12, "name": "body"}], 0.6,
                                    torch.device("cpu"), renormalize=renormalize)
        weight.grad = torch.randn_like(weight)
        optimizer.step()
        return weight.detach()

    torch.manual_seed(0)
    start_norm = (torch.randn(8, 4, 3, 3) * 3).norm().item()
    assert stepped(True).norm().item() == pytest.approx(8 ** 0.5, rel=1e-6)  # sqrt(out channels)
    assert stepped(False).norm().item() == pytest.approx(start_norm, rel=1e-6)  # off: the norm it had


def test_the_whitening_bias_stops_training_at_the_step_named(tmp_path):
    """--whiten-bias-epochs 1 on airbench94: the fitted whitening weights never move; the bias moves
    in epoch 1 and not after; a resumed run agrees bit for bit."""
    from resnets.train import train
    from resnets.train.checkpoint import load_state

    data = tensor_data(n_train=48, n_val=8, size=32)
    options = dict(model="airbench94", model_options={}, patch_whitening=True, whiten_bias_epochs=1.0,
                   epochs=3, batch_size=8, lr=0.05, norm_bias_lr_scale=1.0)
    train(tiny_config(tmp_path / "run", **options), data=data, stop_after=1)
    after_one = load_state(tmp_path / "run")["model"]
    train(tiny_config(tmp_path / "ignored", resume=str(tmp_path / "run")), data=data)
    final = load_state(tmp_path / "run")["model"]
    assert torch.equal(after_one["conv1.weight"], final["conv1.weight"])  # fixed as fitted
    assert torch.equal(after_one["conv1.bias"], final["conv1.bias"])      # stopped after epoch 1
    assert final["conv1.bias"].abs().sum() > 0                            # but it trained (fitted at 0)
    assert not torch.equal(after_one["layer1.0.conv.weight"], final["layer1.0.conv.weight"])  # the rest trains
    train(tiny_config(tmp_path / "full", **options), data=data)
    unbroken = load_state(tmp_path / "full")["model"]
    assert all(torch.equal(unbroken[k], final[k]) for k in final)  # resumed = unbroken, bit for bit
    with pytest.raises(Exception, match="--whiten-bias-epochs needs --patch-whitening"):
        TrainConfig(model="airbench94", whiten_bias_epochs=3.0)


def _recipe_optimizer(**changes):
    from resnets import create_model
    from resnets.train.recipes import read_recipe
    from resnets.train.setup import build_run_optimizer

    values = {key.replace("-", "_"): value for key, value in read_recipe("cifar10-airbench").items()}
    config = TrainConfig(**{**values, **changes})
    model = create_model(config.model)
    return build_run_optimizer(config, model, model.get_classifier(), torch.device("cpu"))


def test_the_airbench_recipe_builds_airbench94_muons_parameter_groups():
    groups = {g["name"]: g for g in _recipe_optimizer().param_groups}
    muon, head = groups["body"], groups["head"]
    # Muon on the filters: rate 0.24, momentum 0.6, no decay (the norm is renormalised each step)
    assert muon["muon"] and muon["lr"] == 0.24 and muon["momentum"] == 0.6 and muon["weight_decay"] == 0
    assert all(p.ndim == 4 for p in muon["params"])
    # SGD at momentum 0.85 on the rest: biases at 0.053, the head at 0.67, each decaying by 2e-6 x 2000 / rate
    for name, rate in (("body_norm_bias", 0.053), ("whiten_bias", 0.053), ("head", 0.67)):
        group = groups[name]
        assert not group["muon"] and group["momentum"] == 0.85, name
        assert group["lr"] == pytest.approx(rate) and group["weight_decay"] == pytest.approx(2e-6 * 2000 / rate), name
    trainable = sum(p.numel() for g in groups.values() for p in g["params"] if p.requires_grad)
    assert trainable == 1_972_792 - 1152  # every parameter but the BatchNorm scales, which stay at 1


def test_without_decay_all_the_one_dimensional_parameters_do_not_decay():
    groups = {g["name"]: g for g in _recipe_optimizer(decay_all=False, lr_coupled_decay=False).param_groups}
    assert groups["body_norm_bias"]["weight_decay"] == 0 and groups["whiten_bias"]["weight_decay"] == 0
    assert groups["head"]["weight_decay"] == 0.004 and "body_no_decay" in groups


def test_muon_momentum_defaults_to_the_momentum():
    groups = {g["name"]: g for g in _recipe_optimizer(muon_momentum=None).param_groups}
    assert groups["body"]["momentum"] == groups["head"]["momentum"] == 0.85


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 8])
def test_one_cycle_runs_on_the_shortest_runs(total):
    """torch's OneCycleLR divides by each phase's length: a run of a few steps must not make one empty."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4, momentum=0.9)
    scheduler = build_scheduler(optimizer, "onecycle", total_steps=total, warmup_steps=0)
    rates = []
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 <= rate <= 0.4 for rate in rates)
