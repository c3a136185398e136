"""``python -m bench study-report``: what a sensitivity study found, as tables and plots.

Written to ``--out`` (default ``results/studies/NAME/report``) and logged to the study's
MLflow parent run under ``report/``:

- ``trials.csv`` / ``trials.md``: every trial, its parameters, its objective (last-epoch
  validation accuracy on the noisy held-out split), its test accuracy (last and best epoch);
- ``default_vs_best.md``: the defaults trial beside the trial best on validation (the one a
  user would pick) and its test accuracy, with the gaps; plus, for context only, the trial
  with the best TEST accuracy (an oracle no user has);
- ``spread.md``: mean, std, min, max and range of test and validation accuracy over the
  complete trials: how much the method's accuracy moves with its hyperparameters;
- ``importances.md``: fANOVA parameter importances (Optuna's evaluator, fixed seed);
- ``slice.png`` and, with two or more parameters, ``contour.png``;
- ``summary.json``: the numbers above, for scripts.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common.errors import UsageError
from bench.records.reports import render


def load_study(name: str, url: str) -> Any:
    import optuna

    from bench.drivers.study import check_storage_url, open_storage, redact

    check_storage_url(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat=30)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "(none)"
        raise UsageError(f"--study-name {name}: no such study in {redact(url)}; studies there: {names}") from None


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per trial, parameters as columns (accuracies as fractions)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        last_val = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                        if t.intermediate_values else math.nan)
        rows.append({"trial": t.number, "state": t.state.name, "role": a.get("role", "search"), **t.params,
                     "val_acc": last_val, "last_test_acc": a.get("last_test_acc", math.nan),
                     "best_test_acc": a.get("best_test_acc", math.nan),
                     "val_acc_clean": a.get("last_val_acc_clean", math.nan),
                     "epochs": len(t.intermediate_values),
                     "duration_s": t.duration.total_seconds() if t.duration else math.nan})
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def default_vs_best(df: pd.DataFrame, params: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    done = df[df["state"] == "COMPLETE"]
    if done.empty:
        raise UsageError("the study has no complete trial yet; run `bench study` until one finishes")
    rows: dict[str, pd.Series] = {}
    defaults = done[done["role"] == "defaults"]
    if not defaults.empty:
        rows["defaults"] = defaults.iloc[0]
    rows["best on validation"] = done.loc[done["val_acc"].idxmax()]
    rows["best on test (oracle)"] = done.loc[done["last_test_acc"].idxmax()]
    table = pd.DataFrame({name: {"trial": str(r.name), **{p: _fmt(r.get(p)) for p in params},
                                 "val acc %": _pct(r["val_acc"]), "test acc % (last)": _pct(r["last_test_acc"]),
                                 "test acc % (best epoch)": _pct(r["best_test_acc"])}
                          for name, r in rows.items()}).T
    numbers: dict[str, Any] = {k: {"trial": int(r.name), "val_acc": float(r["val_acc"]),
                                   "last_test_acc": float(r["last_test_acc"])} for k, r in rows.items()}
    if "defaults" in rows:
        d, b = rows["defaults"], rows["best on validation"]
        numbers["gap_val"] = float(b["val_acc"] - d["val_acc"])
        numbers["gap_test"] = float(b["last_test_acc"] - d["last_test_acc"])
        numbers["gap_test_oracle"] = float(rows["best on test (oracle)"]["last_test_acc"] - d["last_test_acc"])
        gap = {c: "" for c in table.columns}
        gap.update({"val acc %": f"{100 * numbers['gap_val']:+.2f}",
                    "test acc % (last)": f"{100 * numbers['gap_test']:+.2f}"})
        table.loc["gap: best on validation - defaults"] = pd.Series(gap)
    return table, numbers


def spread(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    done = df[df["state"] == "COMPLETE"]
    out, numbers = {}, {}
    for col, label in (("last_test_acc", "test acc % (last epoch)"), ("val_acc", "val acc % (noisy labels)"),
                       ("val_acc_clean", "val acc % (clean labels)")):
        v = done[col].dropna().astype(float)
        if v.empty:
            continue
        stats = {"trials": len(v), "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else 0.0,
                 "min": v.min(), "max": v.max(), "range": v.max() - v.min()}
        numbers[col] = {k: float(x) for k, x in stats.items()}
        out[label] = {k: (str(x) if k == "trials" else f"{100 * x:.2f}") for k, x in stats.items()}
    return pd.DataFrame(out).T, numbers


def importances(study: Any) -> tuple[dict[str, float], str]:
    """fANOVA importances over the complete trials, or an empty dict and the reason."""
    import optuna

    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as exc:  # too few trials, or a parameter that never varied
        return {}, str(exc).splitlines()[0]
    return {k: float(v) for k, v in imp.items()}, ""


def plots(study: Any, params: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    from bench.common.plotting import save_figure, wrap_title

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        kinds = [("slice", ovm.plot_slice)] + ([("contour", ovm.plot_contour)] if len(params) > 1 else [])
        for kind, fn in kinds:
            fn(study, params=params, target_name="validation accuracy (last epoch)")
            fig = plt.gcf()
            width = max(6, 4 * len(params))
            fig.set_size_inches(width, 4.5 if kind == "slice" else 4 * len(params))
            fig.suptitle(wrap_title(f"{study.study_name}: {kind} of validation accuracy over {', '.join(params)}",
                                    width))
            written += save_figure(fig, out / f"{kind}.png")
            plt.close("all")
    return written


def write_report(study: Any, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    if df.empty:
        raise UsageError(f"study {study.study_name} has no trials yet")
    params = [c for c in df.columns if c not in ("state", "role", "val_acc", "last_test_acc", "best_test_acc",
                                                  "val_acc_clean", "epochs", "duration_s")]
    df.to_csv(out / "trials.csv")
    shown = df.copy()
    for c in ("val_acc", "last_test_acc", "best_test_acc", "val_acc_clean"):
        shown[c] = shown[c].map(_pct)
    for c in [*params, "duration_s"]:
        shown[c] = shown[c].map(_fmt)
    (out / "trials.md").write_text(render(shown, "md", title=f"Trials of study {study.study_name} "
                                                             "(accuracies in %)", index_name="trial"))
    dvb, dvb_numbers = default_vs_best(df, params)
    (out / "default_vs_best.md").write_text(render(dvb, "md", title="Defaults vs the best trial", index_name="row"))
    spr, spr_numbers = spread(df)
    (out / "spread.md").write_text(render(spr, "md", title="Spread over the complete trials", index_name="accuracy"))
    imp, why = importances(study)
    imp_table = pd.DataFrame({"importance": {k: f"{v:.3f}" for k, v in imp.items()}})
    (out / "importances.md").write_text(
        render(imp_table, "md", title="fANOVA importance (share of the validation-accuracy variance)",
               index_name="parameter") if imp else f"fANOVA importances not available: {why}\n")
    files = [out / n for n in ("trials.csv", "trials.md", "default_vs_best.md", "spread.md", "importances.md")]
    files += plots(study, params, out) if (df["state"] == "COMPLETE").sum() >= 2 else []
    counts = df["state"].value_counts().to_dict()
    summary = {"study": study.study_name, "trials": {k: int(v) for k, v in counts.items()},
               "default_vs_best": dvb_numbers, "spread": spr_numbers, "importances": imp}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files.append(out / "summary.json")
    return files


def log_to_parent(study: Any, files: list[Path]) -> bool:
    from bench.training.tracking import Tracker

    attrs = study.user_attrs
    run_id = attrs.get("mlflow_parent_run_id")
    if not run_id:
        return False
    tracker = Tracker(attrs.get("tracking_uri"), attrs.get("experiment", f"study-{study.study_name}"))
    try:
        tracker.client.get_run(run_id)
    except Exception:  # the store the study logged to is not reachable from here
        print(f"bench: note: the study's MLflow run {run_id} is not in {tracker.uri}; report not logged there",
              file=sys.stderr)
        return False
    tracker.run_id = run_id
    for f in files:
        tracker.log_artifact(f, "report")
    return True


def cmd_study_report(args: Any) -> int:
    from bench.drivers.study import default_storage

    study = load_study(args.study_name, args.storage or default_storage())
    out = Path(args.out) if args.out else Path("results") / "studies" / args.study_name / "report"
    files = write_report(study, out)
    logged = log_to_parent(study, files)
    for f in files:
        print(f"wrote {f}")
    print((out / "default_vs_best.md").read_text(), end="")
    print(f"report files {'logged to the study run in MLflow' if logged else 'not logged (no MLflow parent run)'}")
    return 0
