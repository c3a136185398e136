"""Comparisons with confidence (``bench table --compare`` / ``--aggregate``, ``bench plot --kind
intervals``): pure functions on the DataFrame :func:`bench.records.reports.load_runs` returns.

The statistics follow Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (NeurIPS 2021) and their library rliable: with three seeds a mean ± std per setting
says little, so results are aggregated over seeds *and* settings and reported with bootstrap
confidence intervals. A score is a run's ``--metric`` (best_test_acc or last_test_acc) in
percentage points; a setting (rliable's "task") is one (data set, noise setting) column of the
accuracy table; a row is a table row (a method, or one variant of it, as :func:`label_rows`
names them); runs of one row, setting and seed that occur twice are averaged.

- :func:`compare` (``--compare METHOD``): each other row's paired difference to METHOD. A pair is
  two runs of the same data set, setting and seed; per setting the differences are averaged over
  the paired seeds, then over settings (every setting weighs the same). The 95% interval is a
  percentile interval of a two-level (hierarchical) bootstrap, :func:`hierarchical_bootstrap`:
  draw the settings with replacement, then within each drawn setting its paired seeds with
  replacement (rliable's ``StratifiedBootstrap(task_bootstrap=True)``, written here for unequal
  seed counts per setting), :data:`REPS` resamples from a fixed seed (:data:`SEED`), so the same
  runs give the same digits. It is the range of mean differences the experiment is compatible
  with if both its seeds and its settings were drawn again from the same populations; an
  interval that excludes 0 is a difference these seeds and settings resolve. ``wins``: the
  settings where the row's mean over the paired seeds is above METHOD's (ties are not wins).
- :func:`aggregate` (``--aggregate``): per row, the interquartile mean (IQM: the mean of the
  middle 50% of all seed x setting scores, ``rliable.metrics.aggregate_iqm``) and the mean rank
  (:func:`mean_rank`: per setting, rows ranked by their mean over seeds, 1 = best, ties share
  their average rank; then averaged over settings), each with a 95% stratified-bootstrap
  interval from ``rliable.library.get_interval_estimates``: scores arranged (runs = seeds) x
  (tasks = settings), seeds resampled with replacement within each setting, the settings fixed.
  That interval is the uncertainty due to the seeds on *these* settings. Only the settings every
  row ran and the seeds every row ran in all of them enter (the others are dropped for all rows,
  and the caller says which).

rliable (and through it arch and statsmodels, about 1.5 s) is imported only by :func:`aggregate`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from bench.common.errors import UsageError

METRICS = ("best_test_acc", "last_test_acc")
REPS = 5000  # bootstrap resamples
SEED = 0  # of the resampling: the same runs, the same intervals
CONFIDENCE = 0.95

Cell = tuple[str, str]  # (data set, setting)


def _check_reps(reps: int) -> None:
    if reps < 1:
        raise UsageError(f"--reps {reps}: the bootstrap needs at least 1 resample (default {REPS})")


def scores(df: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` in points per (row, data set, setting, seed); runs of one such key averaged."""
    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: valid values are {', '.join(METRICS)}")
    have = df[df[metric].notna()]
    return have.groupby(["row", "dataset", "setting", "seed"])[metric].mean() * 100.0


def _cells(s: pd.Series, row: str) -> dict[Cell, pd.Series]:
    """A row's scores per setting, indexed by seed."""
    part = s.xs(row, level="row")
    return {(ds, st): g.droplevel([0, 1]) for (ds, st), g in part.groupby(level=["dataset", "setting"])}


def _order(cells: list[Cell], order: list[Cell] | None) -> list[Cell]:
    """``cells`` in the table's column order (``order``) where given, else sorted."""
    if order is None:
        return sorted(cells)
    return sorted(cells, key=lambda c: order.index(c) if c in order else len(order))


def reference_rows(df: pd.DataFrame, name: str, experiment: str = "") -> list[str]:
    """The rows ``--compare NAME`` compares against: the row so named, or every row of the method
    so named (a method run with several variants, e.g. both view policies, has one each)."""
    rows = sorted(df["row"].unique())
    if name in rows:
        return [name]
    own = sorted(df.loc[df["method"] == name, "row"].unique())
    if own:
        return own
    where = f" in experiment {experiment}" if experiment else ""
    raise UsageError(f"--compare {name}: no finished run of {name}{where}; its methods: "
                     + ", ".join(sorted(df["method"].dropna().unique())))


def hierarchical_bootstrap(groups: list[np.ndarray], reps: int = REPS, seed: int = SEED) -> np.ndarray:
    """``reps`` bootstrap replicates of the mean over groups of each group's mean: draw the groups
    (settings) with replacement, then within each drawn group its values (seeds) with replacement,
    independently each time a group is drawn. Groups may hold different numbers of values."""
    rng = np.random.default_rng(seed)
    k = len(groups)
    picks = rng.integers(0, k, size=(reps, k))
    total = np.zeros(reps)
    for g, values in enumerate(groups):
        values = np.asarray(values, dtype=np.float64)
        count = (picks == g).sum(axis=1)  # how often each replicate drew this group
        most = int(count.max())
        if most == 0:
            continue
        draws = values[rng.integers(0, len(values), size=(reps, most, len(values)))].mean(axis=2)
        total += np.where(np.arange(most)[None, :] < count[:, None], draws, 0.0).sum(axis=1)
    return total / k


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def compare(df: pd.DataFrame, metric: str, reference: str, experiment: str = "", reps: int = REPS,
            seed: int = SEED) -> pd.DataFrame:
    """Each other row's paired difference (row minus reference, points) to every row of
    ``reference`` (see the module's docstring). One line per (row, reference row) with
    ``mean_diff``, ``ci_low``, ``ci_high``, ``wins``, ``settings``, ``pairs``, and ``short``: the
    settings left out of that line for having fewer than 2 paired seeds. Rows sharing no setting
    with 2 or more paired seeds are absent; ``attrs["uncompared"]`` names them."""
    _check_reps(reps)
    s = scores(df, metric)
    refs = reference_rows(df, reference, experiment)
    rows = sorted(s.index.get_level_values("row").unique())
    lines: list[dict[str, Any]] = []
    uncompared: list[str] = []
    cells_of = {ref: _cells(s, ref) if ref in rows else {} for ref in refs}
    thin = [ref for ref in refs if not cells_of[ref] or max(len(v) for v in cells_of[ref].values()) < 2]
    if len(thin) == len(refs):
        raise UsageError(f"--compare {reference}: {', '.join(thin)} has fewer than 2 seeds in every setting; a "
                         "bootstrap over seeds needs at least 2")
    for ref in refs:
        ref_cells = cells_of[ref]
        if ref in thin:
            continue
        for row in rows:
            if row == ref:
                continue
            groups, short, pairs = {}, [], 0
            for cell, other in _cells(s, row).items():
                if cell not in ref_cells:
                    continue
                d = (other - ref_cells[cell]).dropna()  # aligned on the seed: the pairs
                if len(d) >= 2:
                    groups[cell] = d.to_numpy()
                    pairs += len(d)
                elif len(d) == 1:
                    short.append(cell)
            if not groups:
                uncompared.append(row)
                continue
            means = np.array([v.mean() for v in groups.values()])
            lo, hi = _interval(hierarchical_bootstrap(list(groups.values()), reps, seed))
            lines.append({"row": row, "vs": ref, "mean_diff": float(means.mean()), "ci_low": lo, "ci_high": hi,
                          "wins": int((means > 0).sum()), "settings": len(groups), "pairs": pairs,
                          "short": short})
    if not lines:
        others = sorted(set(rows) - set(refs))
        why = "no other method in the selection" if not others else (
            "no other method shares a setting with it in 2 or more seeds (pairs: same data set, setting and seed)")
        raise UsageError(f"--compare {reference}: nothing to compare: {why}")
    out = pd.DataFrame(lines).sort_values(["vs", "mean_diff"], ascending=[True, False]).reset_index(drop=True)
    out.attrs["uncompared"] = sorted(set(uncompared) - {r["row"] for r in lines})
    out.attrs["thin"] = thin  # reference rows with fewer than 2 seeds everywhere: nothing compared to them
    out.attrs.update(reps=reps, seed=seed, metric=metric, reference=reference)
    return out


def score_matrices(df: pd.DataFrame, metric: str,
                   order: list[Cell] | None = None) -> tuple[dict[str, np.ndarray], list[Cell], list[int], list[Cell]]:
    """Each row's scores as rliable arranges them, (runs = seeds) x (tasks = settings), over the
    settings every row ran and the seeds every row ran in each of them; also those settings, those
    seeds and the settings dropped because some row lacks them."""
    s = scores(df, metric)
    rows = sorted(s.index.get_level_values("row").unique())
    if not rows:
        raise UsageError(f"--aggregate: no run has {metric}")
    per_row = {r: _cells(s, r) for r in rows}
    every = set.union(*(set(c) for c in per_row.values()))
    common = set.intersection(*(set(c) for c in per_row.values()))
    if not common:
        raise UsageError("--aggregate: no setting that every method ran (pick methods that share one with --methods)")
    cells = _order(list(common), order)
    seeds = sorted(set.intersection(*(set(per_row[r][c].index) for r in rows for c in cells)))
    if len(seeds) < 2:
        raise UsageError(f"--aggregate: {len(seeds)} seed common to every method in every shared setting "
                         f"({', '.join(f'{d} {st}' for d, st in cells)}); a bootstrap over seeds needs at least 2")
    mats = {r: np.array([[per_row[r][c][seed] for c in cells] for seed in seeds]) for r in rows}
    return mats, cells, seeds, _order(list(every - common), order)


def mean_rank(x: np.ndarray) -> np.ndarray:
    """Mean rank of each method over settings, from scores shaped (seeds, settings, methods): per
    setting the methods are ranked by their mean over seeds (1 = highest; ties get the average of
    their ranks), then the ranks are averaged over settings. An aggregate function for
    ``rliable.library.get_interval_estimates``."""
    from scipy.stats import rankdata

    return rankdata(-x.mean(axis=0), axis=1).mean(axis=0)


def _rliable() -> tuple[Any, Any]:
    """rliable's ``library`` and ``metrics`` modules, imported on first use (with arch and
    statsmodels: about 1.5 s). rliable 1.2, the latest, requires arch < 8, whose 7.x releases
    call pandas' private ``deprecate_kwarg`` with the arguments pandas < 3 took; under pandas 3,
    which takes the warning class first, that import fails. Only while arch is imported, the call
    gets the class it lacks (FutureWarning); nothing else changes, and pandas < 3 is left alone."""
    import inspect
    import sys

    if "arch" not in sys.modules:
        import pandas.util._decorators as decorators

        original = decorators.deprecate_kwarg
        if list(inspect.signature(original).parameters)[:1] == ["klass"]:  # pandas >= 3
            def compatible(*args: Any, **kwargs: Any) -> Any:
                if args and isinstance(args[0], str):  # the pandas < 3 form: (old_arg_name, new_arg_name)
                    return original(FutureWarning, *args, **kwargs)
                return original(*args, **kwargs)

            decorators.deprecate_kwarg = compatible
            try:
                import arch.bootstrap  # noqa: F401
            finally:
                decorators.deprecate_kwarg = original
    from rliable import library, metrics

    return library, metrics


def _intervals(library: Any, scores_by_key: dict[str, np.ndarray], func: Callable[[np.ndarray], np.ndarray],
               reps: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``get_interval_estimates`` one key at a time, each from ``seed``: rliable draws from numpy's
    global generator (its ``random_state`` is not used by the draws), which is seeded here and
    put back afterwards, so a row's interval depends neither on the rows beside it nor on the
    caller's random state."""
    points, intervals = {}, {}
    state = np.random.get_state()
    try:
        for key, x in scores_by_key.items():
            np.random.seed(seed)
            p, i = library.get_interval_estimates({key: x}, func, reps=reps, confidence_interval_size=CONFIDENCE)
            points[key], intervals[key] = p[key], i[key]
    finally:
        np.random.set_state(state)
    return points, intervals


def aggregate(df: pd.DataFrame, metric: str, reps: int = REPS, seed: int = SEED,
              order: list[Cell] | None = None) -> pd.DataFrame:
    """Per row: ``iqm`` and ``rank`` (mean rank) with their 95% stratified-bootstrap intervals
    (``iqm_low``, ``iqm_high``, ``rank_low``, ``rank_high``), sorted by IQM, best first; ``attrs``
    holds the settings and seeds used and the settings dropped (see the module's docstring)."""
    _check_reps(reps)
    mats, cells, seeds, dropped = score_matrices(df, metric, order)
    library, metrics = _rliable()
    rows = list(mats)
    iqm, iqm_ci = _intervals(library, mats, lambda x: np.array([metrics.aggregate_iqm(x)]), reps, seed)
    joint = np.stack([mats[r] for r in rows], axis=2)  # seeds x settings x rows: ranks need every row at once
    rank, rank_ci = _intervals(library, {"mean rank": joint}, mean_rank, reps, seed)
    out = pd.DataFrame({
        "iqm": [float(iqm[r][0]) for r in rows],
        "iqm_low": [float(iqm_ci[r][0, 0]) for r in rows], "iqm_high": [float(iqm_ci[r][1, 0]) for r in rows],
        "rank": rank["mean rank"], "rank_low": rank_ci["mean rank"][0], "rank_high": rank_ci["mean rank"][1],
    }, index=pd.Index(rows, name="row"))
    out = out.sort_values(["iqm", "rank"], ascending=[False, True])
    out.attrs.update(cells=cells, seeds=seeds, dropped=dropped, reps=reps, seed=seed, metric=metric)
    return out


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _cell_names(cells: list[Cell]) -> str:
    one = len({d for d, _ in cells}) == 1
    return ", ".join(st if one else f"{d} {st}" for d, st in cells)


def compare_table(df: pd.DataFrame, metric: str, reference: str, experiment: str, reps: int = REPS,
                  order: list[Cell] | None = None) -> tuple[pd.DataFrame, str]:
    """:func:`compare` as a table for ``render`` (rows: the compared rows) and its title."""
    c = compare(df, metric, reference, experiment, reps)
    table = pd.DataFrame({
        "vs": c["vs"].to_list(),
        "mean diff": [_signed(x) for x in c["mean_diff"]],
        f"{CONFIDENCE:.0%} CI": [f"[{_signed(lo)}, {_signed(hi)}]" for lo, hi in zip(c["ci_low"], c["ci_high"],
                                                                                      strict=True)],
        "wins": [f"{w}/{n}" for w, n in zip(c["wins"], c["settings"], strict=True)],
        "settings": c["settings"].to_list(), "pairs": c["pairs"].to_list(),
    }, index=c["row"].to_list())
    title = (f"{metric}: paired difference to {reference} in points (row minus `vs`; a pair: two runs of the same "
             "data set, setting and seed; mean over settings of the mean over the paired seeds), with a "
             f"{CONFIDENCE:.0%} percentile interval from a two-level bootstrap (settings resampled with replacement, "
             f"then the seeds within each drawn setting; {reps} resamples, seed {SEED}); wins: settings where the "
             f"row's mean over the paired seeds is above; experiment {experiment}")
    short = [f"{r} at {_cell_names(cells)}" for r, cells in zip(c["row"], c["short"], strict=True) if cells]
    if short:
        title += "; left out for having 1 paired seed: " + "; ".join(short)
    if c.attrs["thin"]:
        title += "; no comparison with " + ", ".join(c.attrs["thin"]) + " (fewer than 2 seeds in every setting)"
    if c.attrs["uncompared"]:
        title += ("; not compared (no shared setting with 2 or more paired seeds): "
                  + ", ".join(c.attrs["uncompared"]))
    return table, title


def aggregate_table(df: pd.DataFrame, metric: str, experiment: str, reps: int = REPS,
                    order: list[Cell] | None = None) -> tuple[pd.DataFrame, dict[str, str], str]:
    """:func:`aggregate` as a table for ``render``, the best IQM and mean rank marked, and its title."""
    a = aggregate(df, metric, reps, order=order)
    ci = f"{CONFIDENCE:.0%} CI"
    table = pd.DataFrame({
        "IQM": [f"{x:.2f}" for x in a["iqm"]],
        f"IQM {ci}": [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(a["iqm_low"], a["iqm_high"], strict=True)],
        "mean rank": [f"{x:.2f}" for x in a["rank"]],
        f"mean rank {ci}": [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(a["rank_low"], a["rank_high"], strict=True)],
    }, index=a.index.to_list())
    best = {"IQM": str(a["iqm"].idxmax()), "mean rank": str(a["rank"].idxmin())}
    cells, seeds, dropped = a.attrs["cells"], a.attrs["seeds"], a.attrs["dropped"]
    title = (f"{metric} in %: interquartile mean (IQM, the mean of the middle 50% of the seed x setting scores) and "
             "mean rank (per setting, rows ranked by their mean over seeds, 1 = best; averaged over settings) over "
             f"the {len(cells)} setting{'s' if len(cells) > 1 else ''} every row ran ({_cell_names(cells)}) and seeds "
             f"{', '.join(map(str, seeds))}, "
             f"with {CONFIDENCE:.0%} stratified-bootstrap intervals (rliable: seeds resampled with replacement within "
             f"each setting, the settings fixed; {reps} resamples, seed {SEED}); best in bold; experiment {experiment}")
    if dropped:
        title += f"; settings left out because some row lacks them: {_cell_names(dropped)}"
    return table, best, title
