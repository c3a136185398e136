"""Comparison figures from what MLflow holds (``python -m bench plot``), PNG via matplotlib.

- ``curves``: test accuracy per epoch, one panel per noise setting, one line per method (mean
  over seeds) with a band from the lowest to the highest seed;
- ``pareto``: accuracy against wall-clock time, one point per method and setting (means over
  seeds);
- ``wrong-events``: histograms of wrongevent's final wrong-event counts for truly clean and
  truly noisy samples, one panel per setting (first seed);
- ``detection``: clean_auc per epoch per method (mean over seeds), one panel per setting.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from bench.errors import UsageError
from bench.plots import _pyplot, method_colours, save_figure, wrap_title
from bench.reports import _columns, load_runs

KINDS = ("curves", "pareto", "wrong-events", "detection")


def _client(uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    from bench.tracking import default_tracking_uri

    return MlflowClient(uri or default_tracking_uri())


def _history(client: Any, run_id: str, name: str) -> pd.Series:
    h = client.get_metric_history(run_id, name)
    return pd.Series({m.step: m.value for m in h}, dtype=float).sort_index()


def _panels(n: int) -> tuple[Any, Any, np.ndarray]:
    plt = _pyplot()
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return plt, fig, axes.ravel()


def _title(fig: Any, text: str) -> None:
    fig.suptitle(wrap_title(text, fig.get_figwidth()))


def _styles(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Line style of each table row: its method's colour (the same in every figure), and a dash
    pattern per variant where a method has several rows."""
    colours = method_colours(sorted(df["method"].unique()))
    dashes = ["-", "--", ":", "-."]
    out = {}
    for method, part in df.groupby("method"):
        for i, row in enumerate(sorted(part["row"].unique())):
            out[row] = {"color": colours[method], "linestyle": dashes[i % len(dashes)]}
    return out


def _per_epoch(df: pd.DataFrame, client: Any, metric: str, path: Path, ylabel: str, title: str,
               scale: float) -> list[Path]:
    settings = _columns(df)
    styles = _styles(df)
    plt, fig, axes = _panels(len(settings))
    for ax, (ds, setting) in zip(axes, settings, strict=False):
        part = df[(df["dataset"] == ds) & (df["setting"] == setting)]
        for row in sorted(part["row"].unique()):
            curves = [_history(client, r, metric) for r in part[part["row"] == row]["run_id"]]
            curves = [c for c in curves if len(c)]
            if not curves:
                continue
            table = pd.concat(curves, axis=1) * scale
            ax.plot(table.index, table.mean(axis=1), label=f"{row} (n={table.shape[1]})", **styles[row])
            if table.shape[1] > 1:
                ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=styles[row]["color"],
                                alpha=0.2)
        ax.set_title(f"{ds}, {setting}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _title(fig, title)
    return save_figure(fig, path)


def pareto(df: pd.DataFrame, metric: str, path: Path, experiment: str) -> list[Path]:
    plt, fig, axes = _panels(1)
    ax = axes[0]
    g = df.groupby(["row", "method", "dataset", "setting"]).agg(acc=(metric, "mean"), time=("wall_clock_s", "mean"))
    g = g.reset_index()
    styles = _styles(df)
    markers = "osD^v<>P*X"
    for i, row in enumerate(sorted(g["row"].unique())):
        part = g[g["row"] == row]
        ax.scatter(part["time"] / 60, part["acc"] * 100, marker=markers[i % len(markers)], s=50, label=row,
                   color=styles[row]["color"])
        for _, r in part.iterrows():
            ax.annotate(r["setting"], (r["time"] / 60, r["acc"] * 100), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("wall-clock time per run (minutes, mean over seeds)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(wrap_title(f"Accuracy vs time, experiment {experiment}", fig.get_figwidth(), fontsize=11))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _clean_mask(client: Any, run: pd.Series, tmp: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(wrong events, is_clean) of a wrongevent run, from its artifacts and its data set."""
    from bench.options import build_options
    from datasets.base import DATASETS

    rid = run["run_id"]
    try:
        we = np.load(client.download_artifacts(rid, "method/wrong_events.npy", str(tmp)))
        given = np.load(client.download_artifacts(rid, "noise/noisy_labels.npy", str(tmp)))
        src = np.load(client.download_artifacts(rid, "noise/train_source_index.npy", str(tmp)))
    except Exception:  # an old run without these artifacts
        return None
    params = client.get_run(rid).data.params
    cls = DATASETS.get(params["dataset"])
    opts = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("dataset.")}
    ds = cls(build_options(cls, opts, "data set"))
    raw = ds.read(params.get("data_root") or None)
    clean = raw.train_clean if ds.real_noise else raw.train_labels
    if clean is None:
        return None
    return we, clean[src] == given


def wrong_events(df: pd.DataFrame, client: Any, path: Path, experiment: str) -> list[Path]:
    import tempfile

    runs = df[df["method"] == "wrongevent"].sort_values("seed")
    panels = [(ds, setting, row) for ds, setting in _columns(df) for row in sorted(runs["row"].unique())
              if len(runs[(runs["dataset"] == ds) & (runs["setting"] == setting) & (runs["row"] == row)])]
    if not panels:
        raise UsageError(f"--kind wrong-events: experiment {experiment} has no finished wrongevent run")
    plt, fig, axes = _panels(len(panels))
    with tempfile.TemporaryDirectory() as tmp:
        for ax, (ds, setting, row) in zip(axes, panels, strict=False):
            run = runs[(runs["dataset"] == ds) & (runs["setting"] == setting) & (runs["row"] == row)].iloc[0]
            got = _clean_mask(client, run, Path(tmp) / run["run_id"])
            variant = "" if row == "wrongevent" else row[len("wrongevent"):] + ", "
            ax.set_title(wrap_title(f"{ds}, {setting}, {variant}seed {run['seed']}", 6.0, fontsize=11))
            if got is None:
                ax.text(0.5, 0.5, "no clean labels or artifacts", ha="center", transform=ax.transAxes)
                continue
            we, clean = got
            bins = np.arange(we.max() + 2) - 0.5 if we.max() < 60 else 60
            ax.hist(we[clean], bins=bins, alpha=0.6, color="tab:blue", label=f"truly clean ({clean.sum()})")
            ax.hist(we[~clean], bins=bins, alpha=0.6, color="tab:red", label=f"truly noisy ({(~clean).sum()})")
            ax.set_xlabel("wrong events at the end of training (count)")
            ax.set_ylabel("samples")
            ax.legend(fontsize=8)
    _title(fig, f"Wrong events of clean and noisy samples, experiment {experiment}")
    return save_figure(fig, path)


def cmd_plot(args: Any) -> int:
    if args.kind not in KINDS:
        raise UsageError(f"--kind {args.kind}: valid values are {', '.join(KINDS)}")
    df = load_runs(args.tracking_uri, args.experiment)
    client = _client(args.tracking_uri)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.experiment}-{args.kind}.png"
    if args.kind == "curves":
        paths = _per_epoch(df, client, "test_acc", path, "test accuracy (%)",
                           f"Test accuracy per epoch (mean over seeds, band: min-max), experiment {args.experiment}",
                           100.0)
    elif args.kind == "detection":
        det = df[df["clean_auc"].notna()]
        if det.empty:
            raise UsageError(f"--kind detection: experiment {args.experiment} has no run that logs clean_auc")
        paths = _per_epoch(det, client, "clean_auc", path, "clean AUC (noise detection)",
                           f"Noise detection per epoch (mean over seeds, band: min-max), experiment {args.experiment}",
                           1.0)
    elif args.kind == "pareto":
        paths = pareto(df, args.metric, path, args.experiment)
    else:
        paths = wrong_events(df, client, path, args.experiment)
    print("wrote " + ", ".join(map(str, paths)))
    return 0
