"""Transfer learning: freeze parts of a ResNet (no grads, BN statistics fixed) and unfreeze later."""

from __future__ import annotations

from torch import nn

from ..errors import ResnetsError


def part_names(model: nn.Module) -> list[str]:
    """The freezable parts, input to output: ``stem``, ``layer1`` ... ``layerN``, ``head``."""
    return ["stem", *[info.module for info in model.feature_info], "head"]


def parse_freeze(spec: str | None, model: nn.Module) -> list[str]:
    """``"backbone"`` -> every part but the head; ``"stem,layer1"`` -> those parts."""
    if not spec:
        return []
    names = part_names(model)
    if spec.strip() == "backbone":
        return names[:-1]
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in parts if p not in names]
    if unknown:
        raise ResnetsError(f"cannot freeze {unknown[0]!r}: choose 'backbone' or a comma list of "
                           f"{', '.join(names[:-1])}")
    return parts


def part_modules(model: nn.Module, part: str) -> list[nn.Module]:
    """The modules making up one part."""
    if part == "stem":
        return [m for name in ("conv1", "bn1") if (m := getattr(model, name, None)) is not None]
    if part == "head":
        return [model.get_classifier()]
    modules = [getattr(model, part)]
    if part == model.feature_info[-1].module and hasattr(model, "norm"):
        modules.append(model.norm)  # a pre-activation net's final norm belongs to its last stage
    return modules


def _part_parameters(model: nn.Module, parts: list[str]) -> list[nn.Parameter]:
    return [param for part in parts for module in part_modules(model, part) for param in module.parameters()]


def freeze(model: nn.Module, parts: list[str]) -> None:
    """Stop gradients into ``parts``; call :func:`keep_frozen_in_eval` after every ``model.train()``.
    Parameters the model keeps frozen itself (airbench's BatchNorm scales) are left as they are."""
    for param in _part_parameters(model, parts):
        if param.requires_grad:
            param.requires_grad_(False)
            param.frozen_for_transfer = True  # what unfreeze() may give gradients back to


def unfreeze(model: nn.Module, parts: list[str]) -> None:
    """Undo :func:`freeze`: gradients back into what it froze, and only that."""
    for param in _part_parameters(model, parts):
        if getattr(param, "frozen_for_transfer", False):
            param.requires_grad_(True)
            del param.frozen_for_transfer


def keep_frozen_in_eval(model: nn.Module, parts: list[str]) -> None:
    """Put frozen parts in eval mode, so their BN running statistics do not move either."""
    for part in parts:
        for module in part_modules(model, part):
            module.eval()
