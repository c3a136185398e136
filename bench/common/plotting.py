"""Figure helpers every floor may use: print-ready saving (300 dpi PNG, PDF), titles that fit,
and the diagnostic figures methods write into their run folder (matplotlib's Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DPI = 300  # print resolution


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, pdf: bool = True) -> list[Path]:
    """``path`` as a 300 dpi PNG and, with ``pdf``, the same figure as a vector PDF beside it."""
    plt = pyplot()
    paths = [path] + ([path.with_suffix(".pdf")] if pdf else [])
    for out in paths:  # a PDF without its creation date: the same figure gives the same bytes
        fig.savefig(out, dpi=DPI, bbox_inches="tight",
                    metadata={"CreationDate": None} if out.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def wrap_title(text: str, width_in: float, fontsize: float = 12) -> str:
    """``text`` broken into lines that fit a figure ``width_in`` inches wide."""
    import textwrap

    return textwrap.fill(text, width=max(20, int(width_in * 72 / (0.55 * fontsize))), break_on_hyphens=False)


def score_histogram(values: np.ndarray, is_clean: np.ndarray | None, path: Path, *, xlabel: str,
                    mixture: Any = None, title: str = "") -> Path:
    """Histogram of a per-sample noise score, split into truly clean and truly noisy samples
    when the truth is known, with the fitted mixture's weighted densities drawn over it."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    values = np.asarray(values, dtype=np.float64)
    bins = np.histogram_bin_edges(values, bins=min(60, max(10, len(np.unique(values)))))
    if is_clean is None:
        ax.hist(values, bins=bins, color="grey", alpha=0.7, label="all samples")
    else:
        ax.hist(values[is_clean], bins=bins, color="tab:blue", alpha=0.6, label="truly clean")
        ax.hist(values[~is_clean], bins=bins, color="tab:red", alpha=0.6, label="truly noisy")
    if mixture is not None:
        xs = np.linspace(values.min(), values.max(), 400)
        dens = mixture.raw_density(xs) * len(values) * (bins[1] - bins[0])  # densities to counts per bin
        ax.plot(xs, dens[0], color="navy", label="mixture: clean component")
        ax.plot(xs, dens[1], color="darkred", label="mixture: noisy component")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, pdf=False)
    return path


def prediction_change_curve(changes: list[float], base_epoch: int | None, path: Path) -> Path:
    """Stage-1 prediction changes per epoch (label wave), with the chosen base epoch marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    epochs = np.arange(2, 2 + len(changes))
    ax.plot(epochs, changes, marker="o")
    if base_epoch is not None:
        ax.axvline(base_epoch, color="tab:green", linestyle="--", label=f"base model: epoch {base_epoch}")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("samples whose prediction changed")
    ax.set_title("Label wave (stage 1)")
    fig.tight_layout()
    save_figure(fig, path, pdf=False)
    return path
