"""Comparison figures from what MLflow holds and nothing else (``python -m bench plot``): each a
300 dpi PNG and a PDF.

- ``curves``: test accuracy per epoch, one panel per noise setting, one line per method (mean
  over seeds) with a band from the lowest to the highest seed;
- ``pareto``: accuracy against wall-clock time, one point per method and setting (means over
  seeds);
- ``scores``: histograms of the per-sample scores methods declare (``score_artifacts``, e.g.
  wrongevent's final wrong-event counts) for truly clean and truly noisy samples, one panel per
  score, method and setting (first seed), from the run's artifacts;
- ``detection``: clean_auc per epoch per method (mean over seeds), one panel per setting;
- ``intervals``: the interquartile mean and the mean rank of ``bench table --aggregate``, a row
  per method, each a point with its 95% stratified-bootstrap interval as a horizontal bar
  (:mod:`bench.records.stats`; like rliable's ``plot_interval_estimates``, drawn here in the
  house style).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from bench.common.errors import UsageError
from bench.common.plotting import pyplot, save_figure, wrap_title
from bench.records.reports import (
    MARK,
    _colname,
    _columns,
    by_hardware,
    counted,
    families,
    load_runs,
    parse_highlight,
)
from bench.training.tracking import mlflow_client

KINDS = ("curves", "pareto", "scores", "detection", "intervals")


# The highlighted methods' colours, in --highlight's order (`wrongevent,dividemix,ce`: red, blue,
# black), and every other method's, by its place among its family's methods (alphabetical, all
# registered ones), so that each family's small multiple has no two methods alike. No family
# colour or marker is a highlight's, nor the grey of the rows under a highlight.
HIGHLIGHT_COLOURS = ("#d62728", "#1f77b4", "#000000", "#7f0000", "#00007f", "#005f00")
FAMILY_COLOURS = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#1b9e77",
                  "#e6ab02", "#e7298a", "#6a3d9a", "#b15928")  # as many as the largest family (12)
HIGHLIGHT_MARKERS = "*XPhp8"


def family_places(names: list[str]) -> dict[str, int]:
    """Each method's place among its family's methods: the registered ones and the names given
    (alphabetical), the same in every figure whatever else it shows (a name no method registers,
    family ``other``, is placed among the other such names given)."""
    from bench.training.catalogue import catalogue

    family = families(sorted(set(catalogue().methods.names()) | set(names)))
    return {n: sorted(m for m, f in family.items() if f == family[n]).index(n) for n in names}


def method_colours(names: list[str], highlight: Sequence[str] = ()) -> dict[str, str]:
    """One colour per method, the same in every figure and on the report page: a highlighted
    method's by its place in ``highlight``, any other's by its place in its family."""
    chosen = list(highlight)
    places = family_places(names)
    return {n: HIGHLIGHT_COLOURS[chosen.index(n) % len(HIGHLIGHT_COLOURS)] if n in chosen
            else FAMILY_COLOURS[places[n] % len(FAMILY_COLOURS)] for n in names}


FAMILY_MARKERS = {"paper": "o", "losses": "s", "selection": "^", "semi-supervised": "D"}  # "other": "v"


def method_markers(names: list[str], highlight: Sequence[str] = ()) -> dict[str, str]:
    """A marker per method: a highlighted method's by its place in ``highlight``, any other's by
    its family, so that two methods of different families in one colour (the same place in
    each) never look alike in a figure of all methods."""
    chosen = list(highlight)
    family = families(list(names))
    return {n: HIGHLIGHT_MARKERS[chosen.index(n) % len(HIGHLIGHT_MARKERS)] if n in chosen
            else FAMILY_MARKERS.get(family[n], "v")
            for n in names}


def _history(client: Any, run_id: str, name: str) -> pd.Series:
    h = client.get_metric_history(run_id, name)
    return pd.Series({m.step: m.value for m in h}, dtype=float).sort_index()


def _panels(n: int) -> tuple[Any, Any, np.ndarray]:
    plt = pyplot()
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return plt, fig, axes.ravel()


def _title(fig: Any, text: str) -> None:
    """The figure's title, wrapped to its width; where a legend stands at the right of the panels
    (drawn first), to the width the centred title has clear of it on both sides (a title of the
    full width ran into it)."""
    width = fig.get_figwidth()
    if fig.legends:
        fig.canvas.draw()  # the layout places the legend
        beside = fig.legends[0].get_window_extent().width / fig.dpi
        width = max(3.0, width - 2 * (beside + 0.3))
    fig.suptitle(wrap_title(text, width))


OTHERS = {"color": "0.72", "linestyle": "-", "lw": 0.8, "alpha": 0.55, "zorder": 1}  # --highlight's grey rows


def _styles(df: pd.DataFrame, highlight: Sequence[str] = (), grey: bool = True) -> dict[str, dict[str, Any]]:
    """Line style of each table row: its method's colour and marker (the same in every figure)
    and a dash pattern per variant where a method has several rows (`views=official`). The
    ``highlight`` methods are drawn thick over the rest, which are thin grey lines (``grey``) or,
    in a family's small multiple, their own colours."""
    methods = sorted(df["method"].unique())
    colours, markers = method_colours(methods, highlight), method_markers(methods, highlight)
    dashes = ["-", "--", ":", "-."]
    epochs = int(df["epochs"].max()) if df["epochs"].notna().any() else 10
    out = {}
    for method, part in df.groupby("method"):
        for i, row in enumerate(sorted(part["row"].unique())):
            if highlight and grey and method not in highlight:
                out[row] = dict(OTHERS)
                continue
            chosen = method in highlight
            out[row] = {"color": colours[method], "linestyle": dashes[i % len(dashes)], "marker": markers[method],
                        "markersize": 5 if chosen else 4, "markevery": max(1, epochs // 6),
                        "lw": 2.2 if chosen else 1.3, "zorder": 4 if chosen else 3}
    return out


def highlighted(rows: list[str], styles: dict[str, dict[str, Any]]) -> list[str]:
    """The rows drawn in their own colour (all of them without --highlight)."""
    return [r for r in rows if styles[r]["color"] != OTHERS["color"]]


LEGEND_PER_PANEL = 8  # more rows than this: one legend for the figure, beside the panels


def _per_epoch(df: pd.DataFrame, client: Any, metric: str, path: Path, ylabel: str, title: str,
               scale: float, highlight: Sequence[str] = (), grey: bool = True) -> list[Path]:
    settings = _columns(df)
    styles = _styles(df, highlight, grey)
    plt, fig, axes = _panels(len(settings))
    # many rows in colour: one legend beside the panels, not one in each; grey rows: one entry
    shared = len(highlighted(sorted(styles), styles)) > LEGEND_PER_PANEL
    handles: dict[str, Any] = {}  # every panel's rows: the figure's legend
    for ax, (ds, setting) in zip(axes, settings, strict=False):
        part = df[(df["dataset"] == ds) & (df["setting"] == setting)]
        here: dict[str, Any] = {}  # this panel's rows: its legend
        for row in sorted(part["row"].unique()):
            curves = [_history(client, r, metric) for r in part[part["row"] == row]["run_id"]]
            curves = [c for c in curves if len(c)]
            if not curves:
                continue
            table = pd.concat(curves, axis=1) * scale
            label = row if shared else f"{row} (n={table.shape[1]})"
            (here[row],) = ax.plot(table.index, table.mean(axis=1), label=label, **styles[row])
            handles.setdefault(row, here[row])
            if table.shape[1] > 1 and styles[row]["color"] != OTHERS["color"]:  # no band for a grey row
                ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=styles[row]["color"],
                                alpha=0.2 if styles[row]["lw"] > 2 else 0.12)
        ax.set_title(f"{ds}, {setting}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not shared:
            _legend(ax, here, styles, highlight, fontsize=8)
    if shared:
        _legend(fig, handles, styles, highlight, fontsize=8, loc="outside right upper")
    _title(fig, title)
    return save_figure(fig, path)


def _legend(where: Any, handles: dict[str, Any], styles: dict[str, dict[str, Any]], highlight: Sequence[str],
            **kw: Any) -> None:
    """The rows in colour, the highlighted first in --highlight's order, and the grey ones as one
    entry."""
    first = {m: i for i, m in enumerate(highlight)}
    shown = sorted(highlighted(list(handles), styles), key=lambda r: (first.get(r.split()[0], len(first)), r))
    greys = [h for r, h in handles.items() if r not in shown][:1]
    where.legend([handles[r] for r in shown] + greys,
                 [handles[r].get_label() for r in shown] + (["the other methods"] if greys else []), **kw)


def pareto(df: pd.DataFrame, metric: str, path: Path, experiment: str, highlight: Sequence[str] = (),
           grey: bool = True) -> list[Path]:
    """Accuracy against wall-clock time per run, one panel per data set and setting (with thirty
    methods one panel of labelled points is unreadable), each row's marker and colour the same in
    every panel and figure (a method's rows after its first, e.g. `views=shared` after
    `views=official`, hollow), one legend for the figure,
    and each panel's Pareto front (the runs no other run beats in both accuracy and time) as a
    grey step line."""
    settings = _columns(df)
    plt, fig, axes = _panels(len(settings))
    g = df.groupby(["row", "method", "dataset", "setting"]).agg(acc=(metric, "mean"), time=("wall_clock_s", "mean"))
    g = g.reset_index()
    styles = _styles(df, highlight, grey)
    rows = sorted(g["row"].unique())
    handles: dict[str, Any] = {}
    for ax, (ds, setting) in zip(axes, settings, strict=False):
        part = g[(g["dataset"] == ds) & (g["setting"] == setting)].sort_values("time")
        for row in rows:
            r = part[part["row"] == row]
            if len(r):
                st = styles[row]
                colour = st["color"]
                face = "none" if st["linestyle"] != "-" else colour
                handles[row] = ax.scatter(r["time"] / 60, r["acc"] * 100, s=55 if st["lw"] > 2 else 40,
                                          marker=st.get("marker", FAMILY_MARKERS["paper"]),
                                          facecolors=face, edgecolors=colour, label=row, zorder=st["zorder"])
        front = part[part["acc"] >= part["acc"].cummax()]  # by time: each run better than every faster one
        ax.step(front["time"] / 60, front["acc"] * 100, where="post", color="grey", alpha=0.6, lw=1, zorder=2)
        ax.set_title(_colname((ds, setting), len({d for d, _ in settings})), fontsize=10)
        ax.set_xlabel("wall-clock minutes per run (mean over seeds)")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
    _legend(fig, handles, styles, highlight, fontsize=8, loc="outside right upper")
    _title(fig, f"Accuracy vs time per setting (grey: the Pareto front), experiment {experiment}")
    return save_figure(fig, path)


def _score_and_truth(client: Any, run_id: str, artifact: str, tmp: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-sample score, is_clean) of a run, from its artifacts alone: the score file the
    method declared and the truth the trainer recorded (None where the truth is unknown)."""
    try:
        score = np.load(client.download_artifacts(run_id, artifact, str(tmp)))
        given = np.load(client.download_artifacts(run_id, "noise/noisy_labels.npy", str(tmp)))
        clean = np.load(client.download_artifacts(run_id, "noise/clean_labels.npy", str(tmp)))
    except Exception:  # no truth (real noise), or a run recorded before these artifacts
        return None
    return score, clean == given


def scores(df: pd.DataFrame, client: Any, path: Path, experiment: str) -> list[Path]:
    """Histograms of each per-sample score a method declares (tag ``bench.score_artifacts``,
    e.g. IDO's wrong events) for truly clean and truly noisy samples: one panel per score, row
    and setting, the first seed."""
    import json
    import tempfile

    runs = df[df["score_artifacts"].notna()].sort_values("seed")
    panels = []
    for ds, setting in _columns(df):
        for row in sorted(runs["row"].unique()):
            cell = runs[(runs["dataset"] == ds) & (runs["setting"] == setting) & (runs["row"] == row)]
            if len(cell):
                run = cell.iloc[0]
                panels += [(ds, setting, row, run, a, label) for a, label in json.loads(run["score_artifacts"]).items()]
    if not panels:
        raise UsageError(f"--kind scores: experiment {experiment} has no finished run of a method that declares "
                         "per-sample scores (e.g. wrongevent's wrong events)")
    plt, fig, axes = _panels(len(panels))
    with tempfile.TemporaryDirectory() as tmp:
        for ax, (ds, setting, row, run, artifact, label) in zip(axes, panels, strict=False):
            got = _score_and_truth(client, run["run_id"], artifact, Path(tmp) / run["run_id"])
            ax.set_title(wrap_title(f"{row}, {ds}, {setting}, seed {run['seed']}", 6.0, fontsize=11))
            if got is None:
                ax.text(0.5, 0.5, "no clean labels or artifacts", ha="center", transform=ax.transAxes)
                continue
            values, clean = got
            discrete = np.allclose(values, np.round(values)) and values.max() < 60
            bins = np.arange(values.max() + 2) - 0.5 if discrete else 60
            ax.hist(values[clean], bins=bins, alpha=0.6, color="tab:blue", label=f"truly clean ({clean.sum()})")
            ax.hist(values[~clean], bins=bins, alpha=0.6, color="tab:red", label=f"truly noisy ({(~clean).sum()})")
            ax.set_xlabel(label)
            ax.set_ylabel("samples")
            ax.legend(fontsize=8)
    _title(fig, f"Per-sample scores of clean and noisy samples, experiment {experiment}")
    return save_figure(fig, path)


def intervals(df: pd.DataFrame, metric: str, path: Path, experiment: str, reps: int | None = None,
              highlight: Sequence[str] = ()) -> list[Path]:
    """IQM and mean rank per row with their 95% stratified-bootstrap intervals, two panels side
    by side, rows in the order of ``bench table --aggregate`` (highest IQM on top)."""
    from bench.records.stats import CONFIDENCE, REPS, SEED, aggregate

    reps = REPS if reps is None else reps
    a = aggregate(df, metric, reps, order=_columns(df))
    rows = list(a.index)
    styles = _styles(df, highlight, grey=False)  # every row a bar in its colour; the highlighted in theirs
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 1.6 + 0.38 * len(rows)), sharey=True, layout="constrained")
    y = np.arange(len(rows))[::-1]  # the first row on top
    for ax, (key, label) in zip(axes, (("iqm", f"IQM of {metric.replace('_', ' ')} (%)"),
                                       ("rank", "mean rank (1 = best)")), strict=True):
        for yi, row in zip(y, rows, strict=True):
            colour = styles[row]["color"]
            hatch = None if styles[row]["linestyle"] == "-" else "//"  # a method's other variants, as dashes elsewhere
            lo, hi = a.loc[row, f"{key}_low"], a.loc[row, f"{key}_high"]
            ax.barh(yi, hi - lo, left=lo, height=0.6, color=colour, alpha=0.75, hatch=hatch, edgecolor=colour)
            ax.plot([a.loc[row, key]] * 2, [yi - 0.3, yi + 0.3], color="black", lw=1.5)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        if key == "rank":  # every possible rank in view, better to the right as in the IQM panel
            ax.set_xlim(len(rows) + 0.25, 0.75)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            lo, hi = a["iqm_low"].min(), a["iqm_high"].max()
            pad = 0.05 * (hi - lo) or 0.5
            ax.set_xlim(lo - pad, hi + pad)
    axes[0].set_yticks(y, rows, fontsize=9)
    cells = a.attrs["cells"]
    _title(fig, f"{metric}: IQM and mean rank with {CONFIDENCE:.0%} stratified-bootstrap intervals (bars; black: "
                f"the point estimate; rliable, {reps} resamples, seed {SEED}) over {len(cells)} "
                f"setting{'s' if len(cells) > 1 else ''} and seeds "
                f"{', '.join(map(str, a.attrs['seeds']))}, experiment {experiment}")
    return save_figure(fig, path)


def cmd_plot(args: Any) -> int:
    if args.kind not in KINDS:
        raise UsageError(f"--kind {args.kind}: valid values are {', '.join(KINDS)}")
    every = load_runs(args.tracking_uri, args.experiment, getattr(args, "methods", None), diverged=True)
    # a method with a diverged or collapsed run is marked in the legend (`bench table --health`
    # lists the runs); diverged runs are drawn nowhere
    unhealthy = set(every.loc[every["health"] != "", "row"])
    df = counted(every, args.experiment).copy()
    df["row"] = [f"{r} {MARK}" if r in unhealthy else r for r in df["row"]]
    if args.kind == "pareto":  # a time axis: runs on different hardware never share a point
        df = by_hardware(df)
    highlight = parse_highlight(getattr(args, "highlight", None), df, args.experiment)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "by_family", False):  # small multiples: a figure per family, the highlighted in each
        family = families(sorted(df["method"].unique()))
        paths = []
        for fam in sorted(set(family.values())):
            part = df[(df["method"].map(family) == fam) | df["method"].isin(highlight)]
            refs = ", ".join(m for m in highlight if family[m] != fam)
            paths += _plot(args, part, out / f"{args.experiment}-{args.kind}-{fam}.png", highlight,
                           f" ({fam} methods{', with ' + refs if refs else ''})", grey=False)
    else:
        paths = _plot(args, df, out / f"{args.experiment}-{args.kind}.png", highlight, "")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _plot(args: Any, df: pd.DataFrame, path: Path, highlight: list[str], which: str,
          grey: bool = True) -> list[Path]:
    client = mlflow_client(args.tracking_uri)
    experiment = args.experiment + which
    if args.kind == "curves":
        paths = _per_epoch(df, client, "test_acc", path, "test accuracy (%)",
                           f"Test accuracy per epoch (mean over seeds, band: min-max), experiment {experiment}",
                           100.0, highlight, grey)
    elif args.kind == "detection":
        det = df[df["clean_auc"].notna()]
        if det.empty:
            raise UsageError(f"--kind detection: experiment {args.experiment} has no run that logs clean_auc")
        paths = _per_epoch(det, client, "clean_auc", path, "clean AUC (noise detection)",
                           f"Noise detection per epoch (mean over seeds, band: min-max), experiment {experiment}",
                           1.0, highlight, grey)
    elif args.kind == "pareto":
        paths = pareto(df, args.metric, path, experiment, highlight, grey)
    elif args.kind == "intervals":
        paths = intervals(df, args.metric, path, experiment, getattr(args, "reps", None), highlight)
    else:
        paths = scores(df, client, path, experiment)
    return paths
