"""Optimizers: parameter groups (no weight decay on norms and biases, separate head lr, faster norm biases)."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


def default_lr(opt: str, batch_size: int) -> float:
    """The usual starting points: SGD 0.1 per 256 images (Goyal et al.), AdamW 1e-3 per 1024."""
    return 0.1 * batch_size / 256 if opt == "sgd" else 1e-3 * batch_size / 1024


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 head_lr: float | None = None, head: nn.Module | None = None,
                 norm_bias_lr_scale: float = 1.0) -> list[dict]:
    """Split parameters into (body|head) x (decay|no decay) groups.

    Norm weights and every bias are 1-D: decaying them only fights the normalisation, so they
    get no weight decay. Frozen parameters stay in the groups (they have no grad, so the
    optimizer skips them) so that unfreezing later needs no new optimizer.

    ``norm_bias_lr_scale`` != 1 moves the biases of normalisation layers into their own groups
    (``body_norm_bias``, ``head_norm_bias``) at ``scale`` times their rate, still without decay:
    David Page, "How to train your ResNet" part 8 (2019), trains the BatchNorm biases 64x faster.
    At 1 the groups are the plain ones, unchanged.
    """
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    norm_bias_ids = _norm_bias_ids(model) if norm_bias_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        key = (id(param) in head_ids, param.ndim <= 1, id(param) in norm_bias_ids)
        groups.setdefault(key, []).append(param)
    result = []
    for (is_head, no_decay, norm_bias), params in sorted(groups.items()):
        group_lr = head_lr if is_head and head_lr is not None else lr
        suffix = "_norm_bias" if norm_bias else "_no_decay" if no_decay else ""
        result.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                       "lr": group_lr * norm_bias_lr_scale if norm_bias else group_lr,
                       "name": f"{'head' if is_head else 'body'}{suffix}"})
    return result


def _norm_bias_ids(model: nn.Module) -> set[int]:
    """ids of the ``bias`` of every BatchNorm/InstanceNorm (``_NormBase``), GroupNorm and LayerNorm."""
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {id(m.bias) for m in model.modules() if isinstance(m, norms) and m.bias is not None}


def build_optimizer(name: str, groups: list[dict], momentum: float, device: torch.device) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW, fused where the device supports it, else foreach."""
    fast = {"fused": True} if _fused_supported(device) else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, nesterov=momentum > 0, **fast)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], **fast)


def _fused_supported(device: torch.device) -> bool:
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        torch.optim.SGD([probe], lr=0.1, fused=True)
        torch.optim.AdamW([probe], lr=0.1, fused=True)
    except (RuntimeError, ValueError):
        return False
    return True
