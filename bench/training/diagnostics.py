"""Noise-detection metrics with one definition for every method that separates clean from noisy
samples, computed by the trainer (which keeps the truth) from the guesses a method makes
(:class:`methods.base.Detection`), so that methods can be compared and never see clean labels.

- ``clean_auc``: ROC AUC of a clean score (higher = more likely clean) against the true
  clean mask (given label == true label);
- ``clean_precision`` / ``clean_recall``: of the method's selected clean set as a detector of
  truly clean samples.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(x: Any) -> np.ndarray:
    return x.detach().double().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def clean_auc(score: np.ndarray, is_clean: np.ndarray) -> float:
    """ROC AUC of ``score`` for the truly clean samples; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    is_clean = np.asarray(is_clean, dtype=bool)
    if is_clean.all() or not is_clean.any():
        return float("nan")
    return float(roc_auc_score(is_clean, np.asarray(score, dtype=np.float64)))


def selection_metrics(selected: np.ndarray, is_clean: np.ndarray) -> dict[str, float]:
    """Precision and recall of a selected clean set against the truly clean samples."""
    selected, is_clean = np.asarray(selected, dtype=bool), np.asarray(is_clean, dtype=bool)
    hits = float((selected & is_clean).sum())
    return {
        "clean_precision": hits / selected.sum() if selected.any() else float("nan"),
        "clean_recall": hits / is_clean.sum() if is_clean.any() else float("nan"),
    }


def detection_metrics(detections: list[Any], is_clean: np.ndarray) -> dict[str, float]:
    """The metrics of a method's detections (its ``detections(epoch)``) against the truth."""
    out: dict[str, float] = {}
    for d in detections:
        out[d.auc] = clean_auc(as_numpy(d.score), is_clean)
        if d.selected is not None:
            sel = selection_metrics(as_numpy(d.selected) > 0, is_clean)
            out[d.precision], out[d.recall] = sel["clean_precision"], sel["clean_recall"]
    return out


def transition_error(estimate: Any, truth: np.ndarray) -> float:
    """Relative L1 error of an estimated transition matrix, sum |T_est - T| / sum |T| (T-Revision
    ``tools.py`` ``error``; Xia et al. 2019 report it as the estimation error)."""
    est, truth = as_numpy(estimate), np.asarray(truth, dtype=np.float64)
    if est.shape != truth.shape:
        raise ValueError(f"transition estimate of shape {est.shape}, the truth is {truth.shape}")
    return float(np.abs(est - truth).sum() / np.abs(truth).sum())
