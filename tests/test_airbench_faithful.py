"""The cifar10-airbench recipe's training step against airbench94_muon's, written out here from
its published description (K. Jordan, 2024): the same net and batch, three steps of each, the
same weights after. Everything the recipe's settings do to one step is covered: the summed loss
with label smoothing 0.2, Muon (momentum 0.6, Nesterov, each filter renormalised, 3 Newton-Schulz
steps, no decay) on the filters, SGD-Nesterov at 0.85 on the biases and head with
each group's decay 2e-6 x batch / its rate, the linear schedule and the whitening bias's own."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from _train_fixtures import tensor_data
from resnets.train.callbacks import WhiteningBias
from resnets.train.config import TrainConfig
from resnets.train.distributed import DistContext
from resnets.train.engine import Meters, Trainer
from resnets.train.recipes import read_recipe
from resnets.train.setup import prepare

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH, STEPS = 32, 3


def newton_schulz5(g: torch.Tensor, ns_coefficients=None, ns_steps=5, eps=1e-7) -> torch.Tensor:
    """The published orthogonalisation: 5 quintic iterations on the normalised matrix. airbench and
    torch run it in bfloat16, whose rounding alone moves an entry by ~15 % of its size (two orders
    of operations differ that much); here both sides run this float64 one, so that a difference
    in anything else shows."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(ns_steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class Reference:
    """airbench94_muon's two optimizers and schedules, by hand."""

    def __init__(self, model, total_steps: int, whiten_steps: int, batch: int):
        self.model, self.total, self.whiten_steps, self.step = model, total_steps, whiten_steps, 0
        wd = 2e-6 * batch
        norm_biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.sgd = [(p, rate, wd / rate, is_whiten) for p, rate, is_whiten in
                    [(model.conv1.bias, 0.053, True)] + [(p, 0.053, False) for p in norm_biases] +
                    [(model.fc.weight, 0.67, False)]]
        self.filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
        self.buffers: dict[int, torch.Tensor] = {}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for p in self.model.parameters():
            p.grad = None
        F.cross_entropy(self.model(x), y, label_smoothing=0.2, reduction="sum").backward()
        decay = 1 - self.step / self.total
        with torch.no_grad():
            for p, rate, weight_decay, is_whiten in self.sgd:
                lr = rate * (max(0.0, 1 - self.step / self.whiten_steps) if is_whiten else decay)
                if p.grad is None:
                    continue
                g = p.grad + weight_decay * p
                buf = self.buffers[id(p)] = self.buffers[id(p)] * 0.85 + g if id(p) in self.buffers else g.clone()
                p -= lr * (g + 0.85 * buf)
            for p in self.filters:
                buf = self.buffers[id(p)] = self.buffers.get(id(p), torch.zeros_like(p)) * 0.6 + p.grad
                update = p.grad + 0.6 * buf
                p *= len(p) ** 0.5 / p.norm()
                p -= 0.24 * decay * newton_schulz5(update.reshape(len(p), -1), ns_steps=3).view(p.shape)
        self.step += 1


def test_the_recipe_steps_as_airbench94_muon_does(tmp_path, monkeypatch):
    import torch.optim._muon

    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", newton_schulz5)
    values = {k.replace("-", "_"): v for k, v in read_recipe("cifar10-airbench").items()}
    config = TrainConfig(**{**values, "batch_size": BATCH, "weight_decay": 2e-6 * BATCH, "channels_last": False,
                            "out": str(tmp_path), "device": "cpu", "progress": False})
    setup = prepare(config, tensor_data(n_train=2 * BATCH, n_val=8, size=32), torch.device("cpu"), DistContext())
    # float64: in float32 three steps amplify the two sides' rounding to 1e-4 in some filters
    # (Newton-Schulz and the summed loss), which would hide nothing but flake; in float64 they
    # agree to 2e-7, the one real difference being where Muon's eps sits (torch's momentum is an
    # average, airbench's a sum: the same direction, a different norm beside the eps of 1e-7)
    setup.model.double()
    reference = Reference(copy.deepcopy(setup.model), setup.steps_per_epoch * config.epochs,
                          round(config.whiten_bias_epochs * setup.steps_per_epoch), BATCH)
    start = copy.deepcopy(setup.model.state_dict())
    trainer = Trainer(setup, [WhiteningBias(config.whiten_bias_epochs)])
    trainer.emit("on_fit_start")
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x, y = torch.randn(BATCH, 3, 32, 32, generator=generator).double(), torch.randint(0, 3, (BATCH,), generator=generator)
        trainer.train_step(x, y, Meters(setup.device))
        reference.train_step(x, y)
    ours, theirs = dict(setup.model.named_parameters()), dict(reference.model.named_parameters())
    for name, param in ours.items():
        torch.testing.assert_close(param, theirs[name], rtol=1e-5, atol=1e-6, msg=name)
        if param.requires_grad:  # every trained tensor moved, so the comparison is not of starting points
            assert not torch.allclose(param, start[name], rtol=1e-3, atol=1e-5), name
