"""Weight-averaged (EMA, "mean teacher") copies of a network, shared by the methods that keep
one (ELR+ today; the mean-teacher variants of the SOTA methods later). They live here because no
method imports another.

Formulas of ELR+ (Liu et al., NeurIPS 2020; official github.com/shengliu66/ELR, ``ELR_plus/``):
``utils/util.py:45-52`` ``sigmoid_rampup`` and ``trainer/trainer.py:321-331``
``update_ema_variables``, which averages ``parameters()`` only: the BatchNorm running statistics
of the copy come from its own forwards.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - min(current, length) / length)^2), and 1 when ``length`` is 0 (util.py:45-52)."""
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


def ema_decay(step: int, gamma: float, ramp: bool, ramp_steps: float) -> float:
    """The averaging weight alpha of the copy after global step ``step`` (from 0):
    ``sigmoid_rampup(step + 1, ramp_steps) * gamma`` with ``ema_update`` (``ramp``), else
    ``min(1 - 1 / (step + 1), gamma)`` (trainer.py:321-331)."""
    if ramp:
        return sigmoid_rampup(step + 1, ramp_steps) * gamma
    return min(1.0 - 1.0 / (step + 1), gamma)


def make_ema(model: nn.Module) -> nn.Module:
    """``model`` (a network of its own, fresh from ``ctx.make_backbone()``) made into a weight
    average: it takes no gradient and moves by :func:`update_ema` only. Not a deep copy: a copy
    of a compiled network (``--compile``) would run the original's compiled forward."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, alpha: float) -> None:
    """ema <- alpha * ema + (1 - alpha) * model, over the parameters (not the buffers), in one
    fused call per tensor list."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_mul_(ema_params, alpha)
    torch._foreach_add_(ema_params, params, alpha=1.0 - alpha)
