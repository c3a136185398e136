"""Learning-rate plans a method sets itself, epoch by epoch: the official schedules that are not
the run's scheduler (DivideMix's lr / 10 at half, PES's and SOP's steps, ProMix's cosine, ...).

Each plan is a function of the epoch alone applied to the initial rate of every parameter group
(kept by :func:`base_lrs` at setup), never to the current rate, so a resumed run sets exactly
the rates an uninterrupted one had. The trainer logs every optimiser's rate (``lr``, then
``lr_<name>`` for the others).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch


def base_lrs(optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, list[float]]:
    """The initial rate of every parameter group of ``optimizers``, by name: what the plans start
    from. Call it in ``setup`` (before a checkpoint's state is loaded), with the optimisers the
    plan is for."""
    return {k: [g["lr"] for g in o.param_groups] for k, o in optimizers.items()}


def set_lrs(optimizers: Mapping[str, torch.optim.Optimizer], base: Mapping[str, Sequence[float]],
            plan: Callable[[float], float]) -> None:
    """Set the rate of every group of the optimisers named in ``base`` to ``plan(initial rate)``
    (the others keep theirs)."""
    for key, lrs in base.items():
        for group, lr0 in zip(optimizers[key].param_groups, lrs, strict=True):
            group["lr"] = plan(lr0)
