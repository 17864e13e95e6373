"""Optimizers: parameter groups (no weight decay on norms and biases, separate head lr, faster norm biases)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.sgd import sgd as sgd_update

from ..errors import ResnetsError

DEFAULT_NS_STEPS = 5  # torch.optim.Muon's Newton-Schulz iterations

DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05, "muon": 5e-4}


def default_lr(opt: str, batch_size: int) -> float:
    """The usual starting points: SGD 0.1 per 256 images (Goyal et al.), AdamW 1e-3 per 1024.
    ``muon`` starts from SGD's, the optimizer of all but its body filters."""
    return 0.1 * batch_size / 256 if opt in ("sgd", "muon") else 1e-3 * batch_size / 1024


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 head_lr: float | None = None, head: nn.Module | None = None,
                 norm_bias_lr_scale: float = 1.0, own: dict[str, nn.Parameter] | None = None,
                 decay_all: bool = False) -> list[dict]:
    """Split parameters into (body|head) x (decay|no decay) groups.

    Norm weights and every bias are 1-D: decaying them only fights the normalisation, so they
    get no weight decay. Frozen parameters stay in the groups (they have no grad, so the
    optimizer skips them) so that unfreezing later needs no new optimizer.

    ``norm_bias_lr_scale`` != 1 moves the biases of normalisation layers into their own groups
    (``body_norm_bias``, ``head_norm_bias``) at ``scale`` times their rate, still without decay:
    David Page, "How to train your ResNet" part 8 (2019), trains the BatchNorm biases 64x faster.
    At 1 the groups are the plain ones, unchanged. ``own`` names parameters that get a group of
    their own at the rate of the norm biases, e.g. ``whiten_bias`` for a callback to schedule.

    ``decay_all`` decays the 1-D parameters too (airbench decays its biases); their groups stay
    apart from the filters' (Muon takes only >=2-D ones) and are named ``*_1d``.
    """
    own = own or {}
    own_ids = {id(p) for p in own.values()}
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    norm_bias_ids = _norm_bias_ids(model) if norm_bias_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for param in (p for p in model.parameters() if id(p) not in own_ids):
        key = (id(param) in head_ids, param.ndim <= 1, id(param) in norm_bias_ids)
        groups.setdefault(key, []).append(param)
    result = []
    one_d_decay = weight_decay if decay_all else 0.0
    for (is_head, one_d, norm_bias), params in sorted(groups.items()):
        group_lr = head_lr if is_head and head_lr is not None else lr
        suffix = "_norm_bias" if norm_bias else ("_1d" if decay_all else "_no_decay") if one_d else ""
        result.append({"params": params, "weight_decay": one_d_decay if one_d else weight_decay,
                       "lr": group_lr * norm_bias_lr_scale if norm_bias else group_lr,
                       "name": f"{'head' if is_head else 'body'}{suffix}"})
    return result + [{"params": [param], "weight_decay": one_d_decay, "lr": lr * norm_bias_lr_scale, "name": name}
                     for name, param in own.items()]


def _norm_bias_ids(model: nn.Module) -> set[int]:
    """ids of the ``bias`` of every BatchNorm/InstanceNorm (``_NormBase``), GroupNorm and LayerNorm."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {id(m.bias) for m in model.modules() if isinstance(m, norms) and m.bias is not None}


def build_optimizer(name: str, groups: list[dict], momentum: float, device: torch.device,
                    renormalize: bool = False, muon_momentum: float | None = None,
                    muon_ns_steps: int | None = None) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW, fused where the device supports it, else foreach;
    ``muon``: :class:`MuonSGD` (Muon on the body's filters at ``muon_momentum``, default
    ``momentum``, ``muon_ns_steps`` Newton-Schulz iterations, default torch's 5; SGD-Nesterov on the rest; with ``renormalize`` each filter tensor is rescaled to
    norm sqrt(out channels) before its update, and the filters get no weight decay: their norm is
    fixed, so decay has nothing to do, and airbench has none)."""
    if name == "muon":
        muon_group = {"momentum": momentum if muon_momentum is None else muon_momentum,
                      "ns_steps": muon_ns_steps or DEFAULT_NS_STEPS}
        if renormalize:
            muon_group["weight_decay"] = 0.0
        groups = [{**group, **muon_group} if group.get("name") == "body" else group for group in groups]
        return MuonSGD(groups, lr=groups[0]["lr"], momentum=momentum, renormalize=renormalize)
    fast = {"fused": True} if _fused_supported(device) else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, nesterov=momentum > 0, **fast)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], **fast)


class MuonSGD(torch.optim.Optimizer):
    """Muon for the body's weight matrices and filters, SGD with Nesterov momentum for the rest.

    Source: Keller Jordan, "Muon: an optimizer for hidden layers in neural networks" (2024) and
    airbench's CIFAR-10 speed runs, which train the convolution filters with Muon and the
    norms, biases and classifier with SGD. The Muon step is torch's own (the functional behind
    ``torch.optim.Muon``); that class takes only 2-D parameters, so each filter is stepped
    through its (out, in*k*k) view, which shares storage with the 4-D weight, gradient and
    momentum buffer. One optimizer object, so LR schedulers (OneCycleLR with momentum
    cycling included), GradScaler, ``zero_grad`` and checkpointing see every group as usual.

    The group named ``body`` (the >=2-D body weights from :func:`param_groups`) is Muon's; its
    ``lr`` is Muon's rate (scaled as torch's ``adjust_lr_fn="original"``: by sqrt(max(1, out/in)))
    and its ``weight_decay`` is decoupled (``w *= 1 - lr * wd``), as in torch's Muon. Other
    groups are plain SGD-Nesterov (coupled weight decay).
    """

    def __init__(self, params: list[dict], lr: float, momentum: float, renormalize: bool = False) -> None:
        groups = [{**group, "muon": group.get("name") == "body"} for group in params]
        for group in groups:
            if not group.get("momentum", momentum) > 0:
                raise ResnetsError(f"muon needs a positive momentum, got {group.get('momentum', momentum)}")
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ResnetsError("muon's group 'body' must hold only weights of 2 or more dimensions")
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": 0.0, "nesterov": True,
                                  "muon": False, "renormalize": renormalize})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer.step signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (_muon_step if group["muon"] else _sgd_step)(params, group, self.state)
        return loss


def _sgd_step(params: list[torch.Tensor], group: dict, state: dict) -> None:
    bufs = [state[p].get("momentum_buffer") for p in params]
    sgd_update(params, [p.grad for p in params], bufs, weight_decay=group["weight_decay"],
               momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
               maximize=False)
    for p, buf in zip(params, bufs):
        state[p]["momentum_buffer"] = buf


def _muon_step(params: list[torch.Tensor], group: dict, state: dict) -> None:
    # torch's Muon step function (torch >= 2.9); imported here so that other optimizers need no Muon
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, muon

    for p in params:
        if "momentum_buffer" not in state[p]:
            state[p]["momentum_buffer"] = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
        if group.get("renormalize"):  # airbench: the step's size is then relative to a fixed weight norm
            p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(EPS))
    # reshape is a view of a contiguous weight; a channels-last one is stepped as a copy, written back
    matrix = [p.reshape(p.shape[0], -1) for p in params]
    muon(matrix, [p.grad.reshape(p.shape[0], -1) for p in params],
         [state[p]["momentum_buffer"].view(p.shape[0], -1) for p in params],
         lr=group["lr"], weight_decay=group["weight_decay"], momentum=group["momentum"],
         nesterov=group["nesterov"], ns_coefficients=(DEFAULT_A, DEFAULT_B, DEFAULT_C),
         ns_steps=group.get("ns_steps", DEFAULT_NS_STEPS), eps=EPS, adjust_lr_fn=None, has_complex=False)
    for p, m in zip(params, matrix):
        if m.data_ptr() != p.data_ptr():
            p.copy_(m.view(p.shape))


def _fused_supported(device: torch.device) -> bool:
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        torch.optim.SGD([probe], lr=0.1, fused=True)
        torch.optim.AdamW([probe], lr=0.1, fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def zero_missing_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give every trainable parameter of a momentum group a momentum buffer (zeros) if it has none.

    After ``--unfreeze-after`` the newly trainable parameters have no buffer while the others do,
    and torch's fused and foreach SGD refuse such a mix (TypeError). A zero buffer is what the
    first step would make anyway: momentum x 0 + grad is the grad itself, bit for bit.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("momentum", 0):
            for param in (p for p in group["params"] if p.requires_grad):
                state = optimizer.state[param]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
