"""MixMatch-style semi-supervised pieces shared by the methods that divide the data into a
labeled and an unlabeled set and train on both (DivideMix, UNICON). They live here because no
method imports another.

The formulas are DivideMix's ``Train_cifar.py`` (``SemiLoss``, ``linear_rampup``, the mixup of
the concatenated labeled and unlabeled batch, the uniform-prior penalty), which UNICON's
``Train_cifar.py`` repeats line for line.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RAMPUP_EPOCHS = 16  # linear_rampup(..., rampup_length=16) in both Train_cifar.py files


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening of probability rows: p^(1/T), renormalised."""
    pt = p ** (1 / temperature)
    return pt / pt.sum(dim=1, keepdim=True)


def linear_rampup(progress: float, warmup: int, lambda_u: float, length: int = RAMPUP_EPOCHS) -> float:
    """lambda_u * clip((epoch + batch / num_iter - warm_up) / 16, 0, 1) (Train_cifar.py)."""
    return lambda_u * float(np.clip((progress - warmup) / length, 0.0, 1.0))


def mixmatch_loss(logits: torch.Tensor, mixed_target: torch.Tensor, n_labeled: int,
                  lam_u: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE on the mixed labeled part (the first ``n_labeled`` rows), ``lam_u`` times the MSE of
    the softmax on the unlabeled part (mean over all its elements), and the penalty
    sum_c pi_c log(pi_c / mean prediction_c) with a uniform prior over all the rows.

    ``logits`` of the labeled rows only (``n_labeled`` rows, no unlabeled part) give Lx + the
    penalty over those rows, the loss of DivideMix's Train_clothing1M.py:101-109 and
    Train_webvision.py:103-110 (``loss_u`` is then 0 and ``lam_u`` has no effect)."""
    lx = -(F.log_softmax(logits[:n_labeled], dim=1) * mixed_target[:n_labeled]).sum(dim=1).mean()
    if logits.shape[0] > n_labeled:
        lu = (F.softmax(logits[n_labeled:], dim=1) - mixed_target[n_labeled:]).pow(2).mean()
    else:
        lu = logits.new_zeros(())
    prior = torch.full((logits.shape[1],), 1.0 / logits.shape[1], device=logits.device)
    pred_mean = F.softmax(logits, dim=1).mean(dim=0)
    penalty = (prior * (prior / pred_mean).log()).sum()
    loss = lx + lam_u * lu + penalty
    return loss, {"loss_x": lx.detach(), "loss_u": lu.detach(), "penalty": penalty.detach()}


def mixup(inputs: torch.Tensor, targets: torch.Tensor, alpha: float, gens: Any,
          rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda ~ Beta(alpha, alpha) (numpy, as ``np.random.beta``), lambda = max(lambda, 1 - lambda),
    each row mixed with the row a random permutation puts there (``torch.randperm``); the draws
    come from the run's generators ``gens`` (:class:`methods.base.Generators`), numpy first.

    ``rows``: mix and return only the first ``rows`` rows, each with the partner that the
    permutation of *all* the rows puts there (so a partner may come from the rows left out), as
    DivideMix's Train_clothing1M.py:91-97 and Train_webvision.py:93-99 mix the first 2B of the
    4B rows. The draws are the same whatever ``rows`` (one beta draw, one permutation of all)."""
    lam = float(gens.numpy.beta(alpha, alpha))
    lam = max(lam, 1 - lam)
    perm = torch.randperm(inputs.shape[0], generator=gens.torch, device=gens.torch.device).to(inputs.device)
    if rows is None:
        return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm]
    perm = perm[:rows]
    return lam * inputs[:rows] + (1 - lam) * inputs[perm], lam * targets[:rows] + (1 - lam) * targets[perm]


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_i sum_c p log p: the confidence penalty (``NegEntropy``) DivideMix's and UNICON's
    Train_cifar.py warm-ups add under asymmetric noise, and DivideMix's Train_clothing1M.py
    warm-up always (Train_clothing1M.py:206-209, 129-130)."""
    p = F.softmax(logits, dim=1)
    return (p * p.clamp_min(1e-12).log()).sum(dim=1).mean()
