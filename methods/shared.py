"""Small pieces several methods use, kept here because no method imports another (the mixtures
have their own module, :mod:`methods.mixtures`)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.errors import UsageError


def lq_loss(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """GCE's L_q, mean over the batch of (1 - p_y^q) / q (Zhang & Sabuncu 2018), with p_y^q as
    exp(q log_softmax_y): the same value without the NaN gradient p^q has where p_y underflows.
    Used by GCE and by TURN's linear probing."""
    p_y_q = torch.exp(q * F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1))
    return ((1 - p_y_q) / q).mean()


def keras_probs(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """softmax renormalised and clipped to [eps, 1 - eps], as the Keras losses of the SCE and
    loss-correction references compute q = p / sum(p) with ``K.epsilon()`` (bootstrapping,
    forward / backward correction)."""
    p = F.softmax(logits, dim=1)
    return (p / p.sum(dim=1, keepdim=True)).clamp(eps, 1 - eps)


# np.percentile(eta[:, i], 97, interpolation='higher'): loss-correction models.py:441, T-Revision tools.py:33
PERCENTILE = 97


def anchor_transition(eta: np.ndarray, filter_outlier: bool, percentile: float = PERCENTILE) -> np.ndarray:
    """The anchor-point estimate of T from class probabilities ``eta`` (N x C): row i is eta at
    the sample with the highest probability of class i (below the column's ``percentile`` when
    ``filter_outlier``), rows normalised (Patrini et al. 2017, loss-correction models.py:413-477;
    T-Revision's ``tools.fit``). Each column is filtered on a copy: the official zeroing works in
    place on eta and so changes what later anchors read."""
    eta = np.asarray(eta, dtype=np.float64)
    c = eta.shape[1]
    t = np.empty((c, c))
    for i in range(c):
        col = eta[:, i]
        if filter_outlier:
            col = np.where(col >= np.percentile(col, percentile, method="higher"), 0.0, col)
        t[i] = eta[int(np.argmax(col))]
    return t / t.sum(axis=1, keepdims=True)


def classifier_of(net: nn.Module, method: str) -> nn.Module:
    """The backbone's classifier: timm's ``get_classifier()``, else its last ``nn.Linear``; its
    input is the penultimate feature (TURN probes it, UNICON projects it)."""
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        raise UsageError(f"{method}: the backbone has no linear classifier (its features are the classifier's input)")
    return head
