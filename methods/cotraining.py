"""Pieces of two-network co-training shared by Co-teaching, Co-teaching+ and JoCoR (they live
here because no method imports another).

The three official repositories (bhanML/Co-teaching ``main.py``/``loss.py``,
xingruiyu/coteaching_plus ``main.py``/``loss.py``, hongxin001/JoCoR ``algorithm/jocor.py``)
repeat the same forget-rate ramp and the same Adam plan: constant learning rate, then a linear
decay to 0 with beta1 switched from 0.9 to 0.1.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from bench.common.defaults import RunSetting
from bench.common.errors import UsageError

DECAY_START = 0.4  # Co-teaching main.py: epoch_decay_start 80 of n_epoch 200 (mnist, cifar10)
DECAY_START_MANY_CLASSES = 0.5  # Co-teaching main.py: 100 of 200 in the cifar100 branch
BETA1_PLAN = (0.9, 0.1)  # main.py: mom1, mom2 (beta1 before and after decay_start)


def forget_rate_at(epoch: int, forget_rate: float, tk: int, exponent: float) -> float:
    """The official ``rate_schedule[epoch]`` (epoch from 0), for any number of epochs:
    ``np.linspace(0, forget_rate ** exponent, tk)[epoch]`` before ``tk``, ``forget_rate`` after."""
    if epoch >= tk:
        return float(forget_rate)
    return float(np.linspace(0, forget_rate ** exponent, tk)[epoch])


class NominalRate:
    """A forget rate's per-setting default (bench.common.defaults): the nominal rate of the run's
    synthetic noise (times ``factor``), as the official scripts take it (``forget_rate =
    noise_rate``); real noise has no nominal rate and the papers give no estimate of one, so
    there the user must give it (``source``: the official file that takes it, for the error)."""

    def __init__(self, method: str, source: str, factor: float = 1.0) -> None:
        self.method, self.source, self.factor = method, source, factor

    def __call__(self, s: RunSetting) -> float:
        if s.noise_rate is None:
            raise UsageError(f"{self.method} needs --set forget_rate=R on {s.dataset}: its noise is real, so there is "
                             f"no nominal rate to forget ({self.source} takes --forget_rate or the noise rate)")
        return float(s.noise_rate) * self.factor

    def __str__(self) -> str:
        times = f" x {self.factor:g}" if self.factor != 1 else ""
        return f"the run's nominal noise rate{times} (real noise: none, --set forget_rate=R required)"


def official_lr_plan(epoch: int, epochs: int, base_lr: float, decay_start: int) -> tuple[float, float]:
    """(lr, beta1) of the official Adam plan at ``epoch`` (from 0) of ``epochs``: ``base_lr``
    and 0.9 before ``decay_start``, then ``base_lr * (epochs - epoch) / (epochs - decay_start)``
    and 0.1 (``alpha_plan``, ``beta1_plan``)."""
    if epoch < decay_start:
        return base_lr, BETA1_PLAN[0]
    return base_lr * (epochs - epoch) / (epochs - decay_start), BETA1_PLAN[1]


def decay_start_epoch(epochs: int, num_classes: int) -> int:
    """The epoch the official plan starts decaying, scaled to ``epochs``: 40% of them (80 of 200,
    MNIST and CIFAR-10), 50% with more than 10 classes (100 of 200, CIFAR-100)."""
    share = DECAY_START if num_classes <= 10 else DECAY_START_MANY_CLASSES
    return round(share * epochs)


def apply_lr_plan(optimizers: Mapping[str, torch.optim.Optimizer], base: Mapping[str, Sequence[float]],
                  epoch: int, epochs: int, decay_start: int) -> None:
    """Set lr and (where the optimiser has ``betas``) beta1 of every group from the epoch alone."""
    for key, opt in optimizers.items():
        for group, lr0 in zip(opt.param_groups, base[key], strict=True):
            group["lr"], beta1 = official_lr_plan(epoch, epochs, lr0, decay_start)
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])  # only beta1 (main.py)


def small_loss(loss: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Positions of the ``num_keep`` smallest values of ``loss`` (a stable sort: ties keep their
    batch order; the official ``np.argsort``/``torch.sort`` are not stable)."""
    return torch.argsort(loss.detach(), stable=True)[:num_keep]


def cross_update_losses(loss1: torch.Tensor, loss2: torch.Tensor, num_keep: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each net's loss on the samples its peer kept: (loss_net1, loss_net2, kept1, kept2).

    ``kept1``/``kept2`` are the batch positions each net keeps by its own small loss.
    """
    kept1, kept2 = small_loss(loss1, num_keep), small_loss(loss2, num_keep)
    return loss1[kept2].sum() / num_keep, loss2[kept1].sum() / num_keep, kept1, kept2
