"""Comparisons with confidence (bench/records/stats.py): paired differences to one method with a
two-level bootstrap interval and the settings won, and rliable's IQM and a mean rank with
stratified-bootstrap intervals; hand-checkable data, then `bench table --compare / --aggregate`
and `bench plot --kind intervals` on a small store."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean

from bench.cli import main
from bench.common.errors import UsageError
from bench.records import stats
from tests.helpers import tracking_uri

# reference "a"; "b" = a + these differences (points) per setting and seed 1-3
BASE = {"sym:0.2": [80.0, 81.0, 82.0], "sym:0.4": [70.0, 71.5, 69.0], "pairflip:0.4": [60.0, 62.0, 61.0]}
DIFF = {"sym:0.2": [1.0, 2.0, 3.0], "sym:0.4": [-1.0, -1.0, -1.0], "pairflip:0.4": [0.5, 0.5, 0.5]}


def frame(values: dict[str, dict[str, list[float]]], metric: str = "best_test_acc") -> pd.DataFrame:
    """Runs as load_runs returns them (the columns stats reads): {row: {setting: [score per seed]}},
    scores in points, NaN for a seed not run."""
    rows = [{"row": row, "method": row.split(" ")[0], "dataset": "fashion-mnist", "setting": setting, "seed": seed,
             metric: v / 100.0}
            for row, settings in values.items() for setting, seeds in settings.items()
            for seed, v in enumerate(seeds, 1) if v == v]
    return pd.DataFrame(rows)


def paired() -> pd.DataFrame:
    b = {s: [x + d for x, d in zip(BASE[s], DIFF[s], strict=True)] for s in BASE}
    return frame({"a": BASE, "b": b})


def test_paired_difference_and_wins_are_exact():
    c = stats.compare(paired(), "best_test_acc", "a", reps=2000)
    assert list(c["row"]) == ["b"] and list(c["vs"]) == ["a"]
    line = c.iloc[0]
    assert line["mean_diff"] == pytest.approx((2.0 - 1.0 + 0.5) / 3)  # mean over settings of the mean over seeds
    assert (line["wins"], line["settings"], line["pairs"]) == (2, 3, 9)  # won at sym:0.2 and pairflip:0.4
    assert line["ci_low"] < line["mean_diff"] < line["ci_high"]
    # every resample is a mean of setting means, each within that setting's [min, max] difference
    assert -1.0 <= line["ci_low"] and line["ci_high"] <= 3.0
    again = stats.compare(paired(), "best_test_acc", "a", reps=2000)
    assert (again["ci_low"].iloc[0], again["ci_high"].iloc[0]) == (line["ci_low"], line["ci_high"])  # fixed seed
    other = stats.compare(paired(), "best_test_acc", "a", reps=2000, seed=1)
    assert (other["ci_low"].iloc[0], other["ci_high"].iloc[0]) != (line["ci_low"], line["ci_high"])
    reverse = stats.compare(paired(), "best_test_acc", "b", reps=2000).iloc[0]
    assert reverse["mean_diff"] == pytest.approx(-line["mean_diff"]) and reverse["wins"] == 1


def test_pairs_are_the_shared_seeds_and_a_single_pair_is_left_out():
    b = {"sym:0.2": [81.0, 83.0, 85.0, 99.0],  # seed 4: the reference has none, so no pair
         "sym:0.4": [71.0, float("nan"), float("nan")]}  # one paired seed: no bootstrap over seeds there
    c = stats.compare(frame({"a": BASE, "b": b}), "best_test_acc", "a", reps=500).iloc[0]
    assert c["mean_diff"] == pytest.approx(2.0) and (c["settings"], c["pairs"]) == (1, 3)
    assert c["short"] == [("fashion-mnist", "sym:0.4")]
    # a method with two rows (variants) is compared against each; one with a single seed against none
    two = frame({"a [v=1]": BASE, "a [v=2]": {"sym:0.2": [79.0]}, "b": {"sym:0.2": [81.0, 83.0, 85.0]}})
    c = stats.compare(two, "best_test_acc", "a", reps=200)
    assert list(c["vs"]) == ["a [v=1]"] and list(c["row"]) == ["b"] and c.attrs["thin"] == ["a [v=2]"]
    assert c.attrs["uncompared"] == ["a [v=2]"]  # its one seed pairs with one of a [v=1]'s
    table, title = stats.compare_table(two, "best_test_acc", "a [v=1]", "x", reps=200)
    assert list(table.index) == ["b"]
    assert "not compared (no shared setting with 2 or more paired seeds): a [v=2]" in title


def test_hierarchical_bootstrap():
    same = stats.hierarchical_bootstrap([np.full(3, 2.0), np.full(2, -1.0)], reps=1000)
    # settings are resampled: with two constant settings every replicate is 2, 0.5 or -1
    assert set(np.round(same, 9)) <= {2.0, 0.5, -1.0} and abs(same.mean() - 0.5) < 0.1
    one = stats.hierarchical_bootstrap([np.array([1.0, 2.0, 6.0])], reps=4000, seed=3)
    assert one.min() >= 1.0 and one.max() <= 6.0 and abs(one.mean() - 3.0) < 0.1  # a plain bootstrap of the mean
    assert np.array_equal(one, stats.hierarchical_bootstrap([np.array([1.0, 2.0, 6.0])], reps=4000, seed=3))


def test_two_level_bootstrap_agrees_with_rliables_task_bootstrap():
    """On equal seed counts the two-level bootstrap is rliable's StratifiedBootstrap with
    task_bootstrap=True (settings, then seeds within each drawn setting): the same interval up to
    Monte Carlo error."""
    library, _ = stats._rliable()
    d = np.random.default_rng(1).normal(0.5, 1.0, (3, 4)) + np.array([1.0, -1.0, 0.5, 2.0])  # seeds x settings
    ours = stats._interval(stats.hierarchical_bootstrap([d[:, j] for j in range(4)], reps=10000))
    state = np.random.get_state()
    np.random.seed(0)
    _, theirs = library.get_interval_estimates({"d": d}, lambda x: np.array([x.mean()]), task_bootstrap=True,
                                               reps=10000)
    np.random.set_state(state)
    assert np.allclose(ours, theirs["d"].ravel(), atol=0.1)


def test_iqm_is_the_trimmed_mean_of_all_seed_x_setting_scores():
    rng = np.random.default_rng(5)
    values = {r: {s: list(rng.normal(80, 3, 4)) for s in ("sym:0.2", "sym:0.4", "pairflip:0.4")} for r in "xyz"}
    df = frame(values)
    state = np.random.get_state()
    a = stats.aggregate(df, "best_test_acc", reps=300)
    after = np.random.get_state()
    assert all(np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v for u, v in zip(state, after,
                                                                                          strict=True))
    mats, cells, seeds, dropped = stats.score_matrices(df, "best_test_acc")
    assert mats["x"].shape == (4, 3) and seeds == [1, 2, 3, 4] and dropped == []
    for r in "xyz":
        flat = np.concatenate([values[r][s] for s in values[r]])
        assert a.loc[r, "iqm"] == pytest.approx(trim_mean(flat, 0.25))
        assert a.loc[r, "iqm_low"] <= a.loc[r, "iqm"] <= a.loc[r, "iqm_high"]
    b = stats.aggregate(df, "best_test_acc", reps=300)
    pd.testing.assert_frame_equal(a, b)  # fixed seed: the same intervals


def test_mean_rank_of_a_dominating_method_is_one():
    x = np.array([[[90.0, 80.0, 70.0], [60.0, 65.0, 50.0]],
                  [[91.0, 79.0, 72.0], [61.0, 64.0, 52.0]]])  # seeds x settings x methods
    # setting 1: 0 > 1 > 2; setting 2: 1 > 0 > 2
    assert list(stats.mean_rank(x)) == [1.5, 1.5, 3.0]
    assert list(stats.mean_rank(np.zeros((2, 3, 2)))) == [1.5, 1.5]  # ties share their average rank
    values = {"best": {s: [95.0, 96.0, 94.0] for s in BASE}, **{r: {s: list(BASE[s]) for s in BASE} for r in "pq"}}
    values["q"] = {s: [v - 5 for v in BASE[s]] for s in BASE}
    a = stats.aggregate(frame(values), "best_test_acc", reps=300)
    assert list(a.index) == ["best", "p", "q"]
    assert (a.loc["best", "rank"], a.loc["best", "rank_low"], a.loc["best", "rank_high"]) == (1.0, 1.0, 1.0)
    assert a.loc["q", "rank"] == 3.0


def test_aggregate_keeps_the_settings_every_method_ran():
    values = {"a": BASE, "b": {"sym:0.2": BASE["sym:0.2"], "sym:0.4": BASE["sym:0.4"]}}
    mats, cells, seeds, dropped = stats.score_matrices(frame(values), "best_test_acc")
    assert cells == [("fashion-mnist", "sym:0.2"), ("fashion-mnist", "sym:0.4")]
    assert dropped == [("fashion-mnist", "pairflip:0.4")] and mats["a"].shape == (3, 2)
    with pytest.raises(UsageError, match="no setting that every method ran"):
        stats.score_matrices(frame({"a": {"sym:0.2": [1.0, 2.0]}, "b": {"sym:0.4": [1.0, 2.0]}}), "best_test_acc")
    with pytest.raises(UsageError, match="a bootstrap over seeds needs at least 2"):
        stats.score_matrices(frame({"a": {"sym:0.2": [1.0]}, "b": {"sym:0.2": [1.0]}}), "best_test_acc")


def test_bad_input_is_one_clear_error():
    with pytest.raises(UsageError, match="no finished run of jocor"):
        stats.compare(paired(), "best_test_acc", "jocor")
    with pytest.raises(UsageError, match="fewer than 2 seeds"):
        stats.compare(frame({"a": {"sym:0.2": [80.0]}, "b": {"sym:0.2": [81.0]}}), "best_test_acc", "a")
    with pytest.raises(UsageError, match="nothing to compare"):
        stats.compare(frame({"a": {"sym:0.2": [80.0, 81.0]}, "b": {"sym:0.4": [81.0, 82.0]}}), "best_test_acc", "a")
    with pytest.raises(UsageError, match="--metric"):
        stats.compare(paired(), "clean_auc", "a")


# a small store: ce < wrongevent < dividemix at every setting and seed, wrongevent by known amounts
STORE = {
    "ce": {"sym:0.4": [60.0, 61.0, 62.0], "pairflip:0.4": [50.0, 52.0, 51.0]},
    "wrongevent": {"sym:0.4": [80.0, 81.0, 82.0], "pairflip:0.4": [78.0, 79.0, 77.0]},
    "dividemix": {"sym:0.4": [82.0, 82.0, 83.0], "pairflip:0.4": [80.0, 79.5, 80.0]},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("stats")
    client = MlflowClient(tracking_uri(tmp))
    exp = client.create_experiment("tiny", artifact_location=(tmp / "art").as_uri())
    for method, settings in STORE.items():
        for setting, seeds in settings.items():
            for seed, acc in enumerate(seeds, 1):
                rid = client.create_run(exp, tags={"noise": setting}).info.run_id
                params = {"method": method, "dataset": "fashion-mnist", "seed": str(seed), "epochs": "10"}
                metrics = {"best_test_acc": acc / 100, "last_test_acc": acc / 100 - 0.01, "wall_clock_s": 10.0}
                client.log_batch(rid, metrics=[Metric(k, v, 0, 10) for k, v in metrics.items()],
                                 params=[Param(k, v) for k, v in params.items()])
                client.set_terminated(rid, "FINISHED")
    return tmp


def cli(tmp, *argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([argv[0], "--experiment", "tiny", "--tracking-uri", tracking_uri(tmp), *argv[1:]])
    return code, buf.getvalue()


def md_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if cells[0] != "method"}


def test_table_compare(store):
    code, out = cli(store, "table", "--compare", "wrongevent", "--reps", "500")
    assert code == 0
    rows = md_rows(out)
    assert list(rows) == ["dividemix", "ce"]  # by mean difference, highest first
    # dividemix - wrongevent: sym 2, 1, 1 (mean 4/3); pair-flip 2, 0.5, 3 (mean 11/6)
    assert rows["dividemix"][0] == "wrongevent" and rows["dividemix"][1] == f"{(4 / 3 + 11 / 6) / 2:+.2f}"
    assert rows["dividemix"][3:] == ["2/2", "2", "6"]
    assert rows["ce"][1] == f"{(-20 + -27) / 2:+.2f}" and rows["ce"][3] == "0/2"
    assert "two-level bootstrap" in out and "500 resamples, seed 0" in out
    code, csv = cli(store, "table", "--compare", "wrongevent", "--reps", "500", "--format", "csv")
    t = pd.read_csv(io.StringIO(csv), index_col=0)
    assert list(t.columns) == ["vs", "mean diff", "95% CI", "wins", "settings", "pairs"]


def test_table_aggregate(store):
    code, out = cli(store, "table", "--aggregate", "--reps", "300")
    assert code == 0
    rows = md_rows(out)
    assert list(rows) == ["dividemix", "wrongevent", "ce"]
    iqm = trim_mean(STORE["dividemix"]["sym:0.4"] + STORE["dividemix"]["pairflip:0.4"], 0.25)
    assert rows["dividemix"][0] == f"**{iqm:.2f}**"
    assert rows["dividemix"][2:] == ["**1.00**", "[1.00, 1.00]"] and rows["ce"][2] == "3.00"
    assert "stratified-bootstrap" in out and "rliable" in out
    code, tex = cli(store, "table", "--aggregate", "--reps", "300", "--format", "latex")
    assert "\\textbf{1.00}" in tex


def test_bad_method_exits_2_with_one_line(store, capsys):
    code, _ = cli(store, "table", "--compare", "jocor")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no finished run of jocor in experiment tiny; its methods: ce, dividemix, wrongevent" in err
    code, _ = cli(store, "table", "--compare", "ce", "--time")
    assert code == 2 and "not allowed with argument" in capsys.readouterr().err
    code, _ = cli(store, "table", "--aggregate", "--methods", "ce", "--reps", "0")
    assert code == 2 and "--reps 0" in capsys.readouterr().err


def test_plot_intervals_writes_a_figure(store, tmp_path):
    code, out = cli(store, "plot", "--kind", "intervals", "--out", str(tmp_path), "--reps", "200")
    assert code == 0
    png = tmp_path / "tiny-intervals.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert (tmp_path / "tiny-intervals.pdf").exists() and "tiny-intervals.png" in out


def test_rliable_is_imported_by_aggregate_only(store):
    """rliable brings arch and statsmodels (seconds): the other tables, --compare included, go without."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def imported(*argv: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "table", "--experiment", "tiny",
                               "--tracking-uri", tracking_uri(store), "--reps", "50", *argv], cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}

    assert not imported("--compare", "ce") & {"rliable", "arch", "statsmodels", "seaborn", "torch"}  # nor torch
    assert {"rliable", "arch"} <= imported("--aggregate")
