"""Comparison tables from what MLflow holds (``python -m bench table``), and nothing else.

One row per finished run is read from the experiment (method, data set, noise setting, seed,
best and last test accuracy, wall-clock, epochs, final clean_auc, parameters, and the tags in
which methods declare themselves); tables are pandas pivots with methods as rows and settings
as columns, mean +- std over seeds, the best mean per column marked. ``--time`` gives the
wall-clock table with each method's per-epoch ratio to every method that declares itself a time
reference (CE, DivideMix), on the same setting and protocol; ``--detection`` the clean_auc
table; ``--paper`` sets beside each cell the published numbers (:mod:`bench.records.published`,
refdata/published.csv) of the same protocol (data set, noise model and rate, backbone, best or
last), ``--gap`` adds ours minus published, and notes under the table say why a cell with
published numbers of its setting shows none.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common.errors import UsageError
from bench.records.published import ReferenceColumn
from bench.training.config import params_key, result_params
from bench.training.environment import NOT_RECORDED, PREFIX, TAG_HARDWARE
from bench.training.health import COLLAPSED, DIVERGED, RECOVERED, TAG_DETAIL, TAG_HEALTH
from bench.training.runrecord import TAG_SCORE_ARTIFACTS, TAG_TIME_REFERENCE

METRICS = ("best_test_acc", "last_test_acc")
FORMATS = ("md", "latex", "csv")


def load_runs(uri: str | None, experiment: str, methods: str | None = None, diverged: bool = False) -> pd.DataFrame:
    """One row per FINISHED run of ``experiment`` (of the comma-separated ``methods`` only, when
    given), labelled by :func:`label_rows`; with ``diverged``, also the runs stopped by a
    non-finite loss (FAILED, tag ``health=diverged``), which tables count but never average."""
    from bench.training.tracking import mlflow_client

    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "(none)"
        raise UsageError(f"--experiment {experiment}: no such experiment in the store; valid: {names}")
    rows = _rows(client, exp.experiment_id, "attributes.status = 'FINISHED'")
    if diverged:
        rows += _rows(client, exp.experiment_id, f"attributes.status = 'FAILED' and tags.{TAG_HEALTH} = '{DIVERGED}'")
    if not rows:
        raise UsageError(f"--experiment {experiment}: no finished runs yet")
    df = pd.DataFrame(rows)
    if methods:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        have = sorted(df["method"].dropna().unique())
        missing = [m for m in wanted if m not in have]
        if missing:
            raise UsageError(f"--methods: no finished run of {', '.join(missing)} in experiment {experiment}; "
                             f"its methods: {', '.join(have)}")
        df = df[df["method"].isin(wanted)]
    return label_rows(df)


def _rows(client: Any, experiment_id: str, filter_string: str) -> list[dict[str, Any]]:
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        for r in page:
            m, p, t = r.data.metrics, r.data.params, r.data.tags
            epochs = float(p.get("epochs", "nan"))
            rows.append({
                "run_id": r.info.run_id, "method": p.get("method"), "dataset": p.get("dataset"),
                "setting": _setting(t.get("noise", "none"), p), "seed": int(p.get("seed", 0)),
                "best_test_acc": m.get("best_test_acc"), "last_test_acc": m.get("last_test_acc"),
                "wall_clock_s": m.get("wall_clock_s"), "epochs": epochs,
                "epoch_s": m.get("wall_clock_s", math.nan) / epochs if epochs else math.nan,
                "clean_auc": m.get("clean_auc", math.nan), "t_error": m.get("t_error", math.nan), "params": dict(p),
                "time_reference": t.get(TAG_TIME_REFERENCE), "score_artifacts": t.get(TAG_SCORE_ARTIFACTS),
                "hardware": t.get(TAG_HARDWARE) or NOT_RECORDED,
                "env": {k.removeprefix(PREFIX): v for k, v in t.items() if k.startswith(PREFIX)},
                "health": t.get(TAG_HEALTH) or "", "health_detail": t.get(TAG_DETAIL) or "",
            })
        token = page.token
        if not token:
            return rows


def _setting(noise: str, params: Any) -> str:
    """A table's column: the injected noise (``sym:0.4``), or on a data set that ships several
    label sets (CIFAR-N), the run's (``label=aggre``, its default where it gave none), so that
    each label set is a column as the leaderboard's, not a row suffix."""
    if noise != "none":
        return noise
    from bench.records.published import run_labels

    labels = run_labels(params.get("dataset", ""), dict(params))
    return f"label={labels}" if labels else noise


def label_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Add the keys runs are grouped by, so that runs differing in anything but the seed are
    never averaged together.

    - ``group``: everything that decides the result except the seed (the configuration hash
      without the seed): runs of one group are the seeds of one cell;
    - ``protocol``: the same without the method and its options: the like-for-like baseline of a
      time ratio is the CE (or DivideMix) run with the same protocol;
    - ``row``: the table row, the method's name, followed where one method has several groups in
      one setting by the parameters that set them apart, e.g. ``ce [epochs=3, subset=2000]``.
    """
    df = df.copy()
    seedless = [result_params(p, drop=frozenset({"seed"})) for p in df["params"]]
    for p, setting in zip(seedless, df["setting"], strict=True):  # a label set named or taken by default: one
        if setting.startswith("label="):
            p["dataset.label"] = setting.removeprefix("label=")
    df["group"] = [params_key(p) for p in seedless]
    df["protocol"] = [params_key({k: v for k, v in p.items() if k != "method" and not k.startswith("method.")})
                      for p in seedless]
    by_group = dict(zip(df["group"], seedless, strict=True))
    rows = pd.Series(df["method"], index=df.index, dtype=object)
    for method, part in df.groupby("method"):
        differ: set[str] = set()
        for _, cell in part.groupby(["dataset", "setting"]):
            variants = [by_group[g] for g in cell["group"].unique()]
            if len(variants) > 1:
                keys = set().union(*variants)
                differ |= {k for k in keys if len({v.get(k) for v in variants}) > 1}
        if differ:
            for i, g in zip(part.index, part["group"], strict=True):
                rows[i] = f"{method} [" + ", ".join(f"{k}={by_group[g].get(k) or '-'}" for k in sorted(differ)) + "]"
    df["row"] = rows
    return df


def by_hardware(df: pd.DataFrame) -> pd.DataFrame:
    """Runs on different hardware (GPU model, or CPU model and threads: the ``env.hardware``
    tag) split into rows of their own, ``METHOD @ HARDWARE``, and into groups and protocols of
    their own, so that they are never averaged together nor a time ratio taken across them.
    Unchanged where the experiment ran on one kind of hardware."""
    if df["hardware"].nunique() <= 1:
        return df
    df = df.copy()
    df["row"] = [f"{r} @ {h}" for r, h in zip(df["row"], df["hardware"], strict=True)]
    df["group"] = [f"{g}|{h}" for g, h in zip(df["group"], df["hardware"], strict=True)]
    df["protocol"] = [f"{p}|{h}" for p, h in zip(df["protocol"], df["hardware"], strict=True)]
    return df


ENV_COLUMNS = ("torch", "torchvision", "timm", "cuda", "cudnn", "python", "deterministic")


def env_table(df: pd.DataFrame) -> pd.DataFrame:
    """``--env``: the experiment's environments, one row per hardware and software versions, with
    the count of runs, of methods, and the hosts."""
    env = pd.DataFrame([{"hardware": h, **{k: e.get(k, "-") for k in ENV_COLUMNS}, "host": e.get("host", "-")}
                        for h, e in zip(df["hardware"], df["env"], strict=True)])
    env["method"] = df["method"].to_numpy()
    keys = ["hardware", *ENV_COLUMNS]
    rows = []
    for key, part in env.groupby(keys, sort=True):
        rows.append({**dict(zip(keys, key, strict=True)), "runs": len(part), "methods": part["method"].nunique(),
                     "hosts": ", ".join(sorted(part["host"].unique()))})
    out = pd.DataFrame(rows).set_index("hardware")
    return out[["runs", "methods", *ENV_COLUMNS, "hosts"]]


MARK = "†"


def families(methods: list[str]) -> dict[str, str]:
    """{method: family} from the catalogue (``Method.family``; ``other`` for a name it lacks)."""
    from bench.training.catalogue import catalogue

    reg = catalogue().methods
    return {m: (reg.get(m).family or "other") if m in reg.names() else "other" for m in methods}


def counted(every: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The runs that enter means and figures: all of :func:`load_runs` ``(diverged=True)`` but
    the diverged ones (which only count, and mark their cells); one line where none is left."""
    df = every[every["health"] != DIVERGED]
    if df.empty:
        raise UsageError(f"--experiment {experiment}: every run diverged; `bench table --health` lists them")
    return df


def parse_highlight(text: str | None, df: pd.DataFrame, experiment: str) -> list[str]:
    """``--highlight a,b``: the methods, each one that ran in the experiment (else one line)."""
    chosen = [m.strip() for m in (text or "").split(",") if m.strip()]
    unknown = [m for m in chosen if m not in set(df["method"])]
    if unknown:
        raise UsageError(f"--highlight {','.join(unknown)}: no run of it in experiment {experiment}; its methods: "
                         f"{', '.join(sorted(df['method'].unique()))}")
    return chosen


def health_table(df: pd.DataFrame) -> pd.DataFrame:
    """``--health``: the experiment's runs that diverged or collapsed, with where and when."""
    bad = df[df["health"] != ""].sort_values(["method", "dataset", "setting", "seed"])
    if bad.empty:
        return pd.DataFrame(columns=["dataset", "setting", "seed", "health", "detail", "run_id"])
    return pd.DataFrame({"dataset": bad["dataset"].to_numpy(), "setting": bad["setting"].to_numpy(),
                         "seed": bad["seed"].to_numpy(), "health": bad["health"].to_numpy(),
                         "detail": bad["health_detail"].to_numpy(), "run_id": bad["run_id"].to_numpy()},
                        index=pd.Index(bad["row"].to_numpy(), name="method"))


def mark_health(table: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """A dagger on each cell of ``table`` (an accuracy-like pivot of ``df``) with a diverged or
    collapsed run, and a note under the table counting them per cell; the diverged runs are
    not in the cell's mean (the caller leaves them out)."""
    cols = _columns(df)
    nd = len({d for d, _ in cols})
    notes = []
    for (row, dataset, setting), part in df[df["health"] != ""].groupby(["row", "dataset", "setting"]):
        name = _colname((dataset, setting), nd)
        counts = part["health"].value_counts()
        total = int(((df["row"] == row) & (df["dataset"] == dataset) & (df["setting"] == setting)).sum())
        if row not in table.index or name not in table.columns or table.loc[row, name] == "-":
            if counts.get(DIVERGED, 0) == total:  # else the row has no such cell at all (it logs no t_error...)
                notes.append(f"{MARK} {row}, {name}: all {total} runs diverged (no cell)")
            continue
        what = [f"{counts[k]} {label}" for k, label in ((DIVERGED, "diverged (not in the mean)"),
                                                       (COLLAPSED, "collapsed"),
                                                       (RECOVERED, "collapsed and recovered")) if k in counts]
        table.loc[row, name] = f"{table.loc[row, name]} {MARK}"
        notes.append(f"{MARK} {row}, {name}: of {total} runs, " + ", ".join(what))
    if notes:
        table.attrs["notes"] = [*table.attrs.get("notes", []), *notes,
                                f"{MARK}: `bench table --health` lists these runs; collapse: two evaluations in a row "
                                "with one class predicted for at least halfway between the test set's largest class "
                                "share and all of it"]
    return table


def _setting_order(settings: list[str]) -> list[str]:
    def key(s: str) -> tuple[int, str, float]:
        model, _, rate = s.partition(":")
        order = ["none", "sym", "sym-biased", "pairflip", "asym", "instance"]
        return (order.index(model) if model in order else 99, model, float(rate or 0))

    return sorted(settings, key=key)


def _columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(data set, setting) pairs, data sets in name order, settings in noise order."""
    out = []
    for ds in sorted(df["dataset"].unique()):
        out += [(ds, s) for s in _setting_order(list(df[df["dataset"] == ds]["setting"].unique()))]
    return out


def summary(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """mean, std and n of ``value`` per (row, data set, setting): over the seeds of one group."""
    g = df.groupby(["row", "dataset", "setting"])[value]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count(), "min": g.min(),
                         "max": g.max()}).reset_index()


def _cell(mean: float, std: float, n: int, scale: float, digits: int) -> str:
    if mean != mean:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    if n > 1 and std == std:
        text += f" ± {std * scale:.{digits}f}"
    return text


def pivot(df: pd.DataFrame, value: str, scale: float = 100.0, digits: int = 2, higher_is_better: bool = True,
          mark_best: bool = True, paper: bool = False, show_range: bool = False,
          gap: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """Methods x settings of 'mean ± std' (with ``show_range``: and '[min, max]' over seeds);
    also returns the best method per column. With ``paper`` (or ``gap``) the published numbers
    of each cell's protocol follow it, and ``table.attrs["notes"]`` holds the lines under the
    table (:class:`bench.records.published.ReferenceColumn`)."""
    s = summary(df, value)
    cols = _columns(df)
    rows = sorted(df["row"].unique())
    table = pd.DataFrame(index=rows, columns=[_colname(c, len({d for d, _ in cols})) for c in cols], dtype=object)
    best: dict[str, str] = {}  # column name -> best row
    ref = ReferenceColumn(df, value, gap=gap, digits=digits) if paper or gap else None
    for col, name in zip(cols, table.columns, strict=True):
        part = s[(s["dataset"] == col[0]) & (s["setting"] == col[1])].set_index("row")
        means = part["mean"].dropna()
        if mark_best and len(means):
            best[name] = str(means.idxmax() if higher_is_better else means.idxmin())
        for method in rows:
            if method not in part.index:
                table.loc[method, name] = "-"
                continue
            row = part.loc[method]
            text = _cell(row["mean"], row["std"], int(row["n"]), scale, digits)
            if show_range and int(row["n"]) > 1:
                text += f" [{row['min'] * scale:.{digits}f}, {row['max'] * scale:.{digits}f}]"
            if ref is not None:
                text += ref.cell(method, col[0], col[1], row["mean"] * scale)
            table.loc[method, name] = text
    if ref is not None:
        table.attrs["notes"] = ref.notes()
    return table, best


def _colname(col: tuple[str, str], n_datasets: int) -> str:
    return col[1] if n_datasets == 1 else f"{col[0]} {col[1]}"


def time_references(df: pd.DataFrame) -> dict[str, str]:
    """The methods whose runs declare themselves a time reference (tag ``bench.time_reference``):
    {method: label of its ratio column}, ordered by label."""
    refs = df[df["time_reference"].notna()].drop_duplicates("method")
    return dict(sorted(zip(refs["method"], refs["time_reference"], strict=True), key=lambda kv: kv[1]))


def time_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per row and setting: total wall-clock and seconds per epoch (means over seeds), and the
    per-epoch ratio to each time-reference method (`time_references`) run under the same
    protocol (every parameter but the method's own equal) on the same setting; NaN where there
    is no such run, or more than one."""
    keys = ["row", "method", "protocol", "dataset", "setting"]
    s = df.groupby(keys)[["wall_clock_s", "epoch_s"]].mean().reset_index()

    def ratio(r: pd.Series, baseline: str) -> float:
        same = s[(s["method"] == baseline) & (s["protocol"] == r["protocol"]) & (s["dataset"] == r["dataset"])
                 & (s["setting"] == r["setting"])]["epoch_s"]
        return r["epoch_s"] / same.iloc[0] if len(same) == 1 else np.nan

    refs = time_references(df)
    return pd.DataFrame([{"row": r["row"], "dataset": r["dataset"], "setting": r["setting"],
                          "total_s": r["wall_clock_s"], "s_per_epoch": r["epoch_s"],
                          **{f"/ {label}": ratio(r, method) for method, label in refs.items()}}
                         for _, r in s.iterrows()])


def time_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Rows as in the accuracy table: mean over settings of total and per-epoch time and of the
    ratios, and per setting the seconds per epoch."""
    t = time_table(df)
    cols = _columns(df)
    rows = sorted(t["row"].unique())
    out = pd.DataFrame(index=rows)
    nd = len({d for d, _ in cols})
    for col in cols:
        part = t[(t["dataset"] == col[0]) & (t["setting"] == col[1])].set_index("row")
        out[f"s/epoch {_colname(col, nd)}"] = [f"{part.loc[m, 's_per_epoch']:.2f}" if m in part.index else "-"
                                              for m in rows]
    ratios = [c for c in t.columns if c.startswith("/ ")]
    agg = t.groupby("row")[["total_s", "s_per_epoch", *ratios]].mean()
    out["total s (mean)"] = [f"{agg.loc[m, 'total_s']:.0f}" for m in rows]
    out["s/epoch (mean)"] = [f"{agg.loc[m, 's_per_epoch']:.2f}" for m in rows]
    for col in ratios:
        out[col] = [_ratio(agg.loc[m, col]) for m in rows]
    return out


def _ratio(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"


def render(table: pd.DataFrame, fmt: str, best: dict[str, str] | None = None, title: str = "",
           index_name: str = "method") -> str:
    """Markdown (best in bold), LaTeX (best in \\textbf) or CSV (best marked with *); the notes
    in ``table.attrs["notes"]`` follow the table (markdown: a list; LaTeX: a footnotesize
    paragraph; CSV: lines starting with ``#``, which ``pandas.read_csv(comment="#")`` skips)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: valid values are {', '.join(FORMATS)}")
    notes = list(table.attrs.get("notes", []))
    if notes:
        bare = table.copy()
        bare.attrs = {}
        return render(bare, fmt, best, title, index_name) + _notes(notes, fmt)
    t = table.copy()
    for name, method in (best or {}).items():
        v = t.loc[method, name]
        t.loc[method, name] = {"md": f"**{v}**", "latex": f"\\textbf{{{v}}}", "csv": f"{v} *"}[fmt]
    t.index.name = index_name
    if fmt == "md":
        head = [index_name, *map(str, t.columns)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(t.index, t.values, strict=True)]
        return (f"{title}\n\n" if title else "") + "\n".join(lines) + "\n"
    if fmt == "latex":
        return t.to_latex(escape=False).replace("±", "$\\pm$")
    return t.to_csv()


_LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                  "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "±": "$\\pm$",
                  "—": "---", "…": "\\ldots{}", "`": ""}


def _notes(notes: list[str], fmt: str) -> str:
    """The lines under a table, in ``fmt``."""
    if fmt == "md":
        return "\n" + "".join(f"- {n}\n" for n in notes)
    if fmt == "latex":
        esc = ["".join(_LATEX_SPECIAL.get(ch, ch) for ch in n) for n in notes]
        return "\\par\\smallskip\n{\\footnotesize\n" + "\\\\\n".join(esc) + "\\par}\n"
    return "".join(f"# {n}\n" for n in notes)


def _check_paper(args: Any) -> None:
    """``--paper``/``--gap`` set published accuracies beside an accuracy table's cells: with any
    other kind of table, one line (they were ignored before)."""
    asked = [f for f, on in (("--paper", getattr(args, "paper", False)), ("--gap", getattr(args, "gap", False))) if on]
    other = [f"--{k.replace('_', '-')}" for k in ("time", "detection", "transition", "compare", "aggregate", "env",
                                                  "health") if getattr(args, k, None)]
    if asked and other:
        raise UsageError(f"{' and '.join(asked)} set published accuracies beside the accuracy table (--metric "
                         f"best_test_acc or last_test_acc); not with {', '.join(other)}")


def cmd_table(args: Any) -> int:
    _check_paper(args)
    every = load_runs(args.tracking_uri, args.experiment, getattr(args, "methods", None), diverged=True)
    if getattr(args, "health", False):
        title = (f"Runs of experiment {args.experiment} that diverged (a non-finite loss or logits stopped them) or "
                 "collapsed (their test predictions sat in one class two evaluations in a row)")
        return _write(render(health_table(every), args.format, None, title), args.out)
    df = counted(every, args.experiment)  # the diverged runs: in the counts and the marks, never in a mean
    variants = bool((df["row"] != df["method"]).any())  # rows named by their settings (before any hardware split)
    if args.time or getattr(args, "by_hardware", False):  # times are never averaged across machines
        df, every = by_hardware(df), by_hardware(every)
    if getattr(args, "env", False):
        table, best = env_table(df), None
        title = (f"Environments of experiment {args.experiment}: finished runs per hardware and software versions"
                 + ("; runs logged before environments were recorded: 'not recorded'"
                    if (df["hardware"] == NOT_RECORDED).any() else ""))
        return _write(render(table, args.format, best, title, index_name="hardware"), args.out)
    cells = not (args.time or getattr(args, "compare", None) or getattr(args, "aggregate", False))
    if args.time:
        table, best, title = time_pivot(df), None, f"Wall-clock time, experiment {args.experiment}"
        if df["hardware"].nunique() > 1:
            title += ("; runs on different hardware are rows of their own (METHOD @ HARDWARE), ratios only between "
                      "runs on the same hardware")
    elif args.detection:
        table, best = pivot(df[df["clean_auc"].notna()], "clean_auc", scale=1.0, digits=3)
        title = f"Noise detection: final clean_auc (mean ± std over seeds), experiment {args.experiment}"
    elif getattr(args, "transition", False):
        has = df[df["t_error"].notna()]
        if has.empty:
            raise UsageError(f"--transition: no run of experiment {args.experiment} logged t_error (forward, "
                             "backward and trevision do, where the true T is known)")
        table, best = pivot(has, "t_error", scale=1.0, digits=3, higher_is_better=False)
        title = ("Transition-matrix estimates: final t_error = sum |T_est - T| / sum |T| against the training set's "
                 f"realised T (mean ± std over seeds; lowest in bold), experiment {args.experiment}")
    elif getattr(args, "compare", None) or getattr(args, "aggregate", False):  # bench/records/stats.py
        from bench.records import stats

        reps = stats.REPS if getattr(args, "reps", None) is None else args.reps
        if args.compare:
            (table, title), best = stats.compare_table(df, args.metric, args.compare, args.experiment, reps,
                                                       _columns(df)), None
        else:
            table, best, title = stats.aggregate_table(df, args.metric, args.experiment, reps, _columns(df))
    else:
        if args.metric not in METRICS:
            raise UsageError(f"--metric {args.metric}: valid values are {', '.join(METRICS)}")
        gap = getattr(args, "gap", False)
        table, best = pivot(df, args.metric, paper=args.paper or gap, show_range=args.range, gap=gap)
        span = "; [min, max] over seeds" if args.range else ""
        title = (f"{args.metric} in % (mean ± std over seeds{span}; best mean in bold), experiment {args.experiment}")
        if table.attrs.get("notes"):
            title += "; beside a cell, published numbers of its protocol (notes under the table)"
    if variants:
        title += ("; a method run with different settings in one column has one row per setting, named by the "
                  "parameters that differ (runs are averaged over seeds only)")
    if cells:  # methods x settings: a dagger where a cell has unhealthy runs
        table = mark_health(table, every)
    if getattr(args, "by_hardware", False) and not args.time and df["hardware"].nunique() > 1:
        title += "; runs on different hardware in rows of their own (METHOD @ HARDWARE)"
    return _write(render(table, args.format, best, title), args.out)


def _write(text: str, out: str | None) -> int:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")
    else:
        print(text, end="")
    return 0
