"""Noise-detection diagnostics with one definition for every method that separates clean
from noisy samples (IDO, Co-teaching, DivideMix), so that they can be compared.

- ``clean_auc``: ROC AUC of a clean score (higher = more likely clean) against the true
  clean mask (given label == true label);
- ``clean_precision`` / ``clean_recall``: of the selected clean set (by default p_clean > 0.5)
  as a detector of truly clean samples.
"""
from __future__ import annotations

import numpy as np


def clean_mask(ctx: object) -> np.ndarray | None:
    """Truly clean samples (given label == true label) of a method context, None if unknown."""
    clean, given = getattr(ctx, "clean_labels", None), getattr(ctx, "given_labels", None)
    if clean is None:
        return None
    return (clean == given).cpu().numpy()


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


def detection_metrics(p_clean: np.ndarray, is_clean: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """``clean_auc`` of the clean probability, and precision/recall of p_clean > threshold."""
    out = {"clean_auc": clean_auc(p_clean, is_clean)}
    out.update(selection_metrics(np.asarray(p_clean) > threshold, is_clean))
    return out
