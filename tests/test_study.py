"""Sensitivity studies: search spaces, the validation split, the objective, SQLite studies with
nested MLflow runs, the report, and continuing a study whose worker was killed."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.common.search import PROTOCOL_NAMES, Setting, choose_params, full_space, trial_overrides
from datasets.base import validation_split
from methods.base import METHODS
from tests.helpers import make_trainer, spec_of

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
SMALL = ("--dataset", "fashion-mnist", "--noise", "sym", "--noise-rate", "0.4", "--subset", "300",
         "--batch-size", "64", "--eval-batch-size", "2048", "--augment", "none")


def storage(tmp: Path) -> str:
    return f"sqlite:///{tmp}/optuna.db"


def mlflow_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def study_cli(tmp: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", *SMALL, "--storage", storage(tmp), "--tracking-uri", mlflow_uri(tmp),
                     "--out", str(tmp / "runs"), *extra])
    return code, out.getvalue()


# --- search spaces ----------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", [Setting(0.4, 15), Setting(0.2, 3), Setting(None, 2)])
@pytest.mark.parametrize("method", ["ce", "coteaching", "dividemix", "elr", "wrongevent"])
def test_every_search_space_samples_valid_options(method, setting):
    cls = METHODS.get(method)
    space = full_space(cls, setting)
    assert set(PROTOCOL_NAMES) <= set(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        values = {name: p.suggest(trial, name) for name, p in space.items()}
        protocol, options = trial_overrides(values)
        opts = build_options(cls, options)  # typed and validated as `--set` would be
        for name, value in options.items():
            assert getattr(opts, name) == type(getattr(opts, name))(value)
        assert protocol["lr"] > 0 and protocol["weight_decay"] >= 0 and protocol["batch_size"] >= 1
        study.tell(trial, 0.0)
    for name, p in space.items():  # the grid the grid sampler visits lies inside the range
        assert all(p.contains(v) for v in p.grid_values()), name


def test_defaults_lie_inside_the_spaces():
    """The official default of each tuned option is a point of its range (so trial 0 = defaults)."""
    assert METHODS.get("coteaching").search_space(Setting(0.4, 30))["forget_rate"].contains(0.4)  # = noise rate
    dm = METHODS.get("dividemix").search_space(Setting(0.4, 30))
    assert dm["lambda_u"].contains(25.0) and dm["p_threshold"].contains(0.5) and dm["alpha"].contains(4.0)
    assert dm["temperature"].contains(0.5)
    elr = METHODS.get("elr").search_space(Setting(0.4, 30))
    assert elr["beta"].contains(0.7) and elr["lam"].contains(3.0)
    assert METHODS.get("wrongevent").search_space(Setting(0.4, 30))["stage1_epochs"].contains(9)


def test_a_method_without_hyperparameters_says_so():
    with pytest.raises(UsageError, match="no tunable options.*--params lr,weight_decay,batch_size"):
        choose_params(METHODS.get("ce"), Setting(0.4, 10), None)
    with pytest.raises(UsageError, match="cannot tune 'forget_rate'; valid: lr"):
        choose_params(METHODS.get("ce"), Setting(0.4, 10), ["forget_rate"])
    assert list(choose_params(METHODS.get("ce"), Setting(0.4, 10), ["lr"])) == ["lr"]


def test_fields_added_later_leave_the_hashes_of_earlier_runs_alone():
    """val_fraction, test_subset, compile, fused, decode, fidelity and on_nonfinite at their
    defaults hash as runs from before them did."""
    import hashlib

    from bench.training.config import RunConfig

    cfg = RunConfig(method="ce", noise="sym", noise_rate=0.4)
    later = ("val_fraction", "test_subset", "compile", "fused", "decode", "fidelity", "on_nonfinite")
    old = {k: v for k, v in cfg.to_dict().items() if k not in later}
    assert cfg.hash() == hashlib.sha1(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    for changed in ({"val_fraction": 0.1}, {"compile": "default"}, {"fused": "on"}, {"decode": "gpu"},
                    {"fidelity": "official"}, {"on_nonfinite": "skip-step"}):
        assert RunConfig(method="ce", noise="sym", noise_rate=0.4, **changed).hash() != cfg.hash()
    assert RunConfig(method="ce", noise="sym", noise_rate=0.4, test_subset=500).hash() != cfg.hash()


# --- the validation split --------------------------------------------------------------------------
def test_validation_split_is_stratified_by_given_labels_and_fixed_by_the_seed():
    given = np.repeat(np.arange(10), [100, 80, 60, 50, 50, 50, 50, 50, 50, 40])
    a, b = validation_split(given, 0.1, 3), validation_split(given, 0.1, 3)
    assert np.array_equal(a, b) and len(a) == 58
    assert not np.array_equal(a, validation_split(given, 0.1, 4))
    counts = np.bincount(given[a], minlength=10)
    assert np.all(np.abs(counts - np.bincount(given) * 0.1) <= 1)


def test_trainer_holds_out_the_validation_split_and_logs_val_acc(tmp_path):
    t = make_trainer(tmp_path, method="ce", dataset="fashion-mnist", noise="sym", noise_rate=0.4, subset=500,
                     val_fraction=0.2, epochs=1, augment="none")
    train, val = t.train_set, t.train_set.validation
    assert len(train) == 400 and len(val) == 100
    assert not set(train.source_index) & set(val.source_index)  # no sample in both
    assert len(t.train_loader) == 400 and t.method.ctx.num_train == 400
    assert (val.given != val.clean).any()  # the split keeps its noisy labels
    m = t.evaluate()
    assert 0 <= m["val_acc"] <= 1 and 0 <= m["val_acc_clean"] <= 1


@pytest.mark.slow
def test_an_epoch_callback_that_says_stop_ends_the_run_as_pruned(tmp_path):
    from bench.training.trainer import Trainer

    spec = spec_of(method="ce", noise="sym", noise_rate=0.4, subset=200, epochs=3, val_fraction=0.1,
                   augment="none", out=str(tmp_path / "runs"), tracking_uri=mlflow_uri(tmp_path))
    seen = []
    (tmp_path / "r").mkdir()
    summary = Trainer(spec, tmp_path / "r", tags={"study": "x"},
                      epoch_callback=lambda e, m: seen.append((e, m["val_acc"])) or True).run()
    assert summary["status"] == "pruned" and summary["epochs_done"] == 1 and len(seen) == 1
    run = MlflowClient(mlflow_uri(tmp_path)).get_run(summary["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["stopped"] == "pruned" and run.data.tags["study"] == "x"


def test_grid_studies_default_to_the_grid_size_plus_the_defaults():
    from bench.cli import build_parser, request_from_args
    from bench.drivers.study import spec_from_args

    args = build_parser().parse_args(["study", "--method", "dividemix", "--params", "lambda_u,alpha", "--sampler",
                                      "grid", "--noise", "sym", "--noise-rate", "0.4", "--epochs", "12"])
    spec, url = spec_from_args(args, request_from_args(args))
    assert spec.trials == 4 * 4 + 1 and url.startswith("sqlite:///") and spec.base.config.val_fraction == 0.1
    assert spec.name == "dividemix-fashion-mnist-sym0.4" and spec.base.place.experiment == "study-" + spec.name


# --- studies on SQLite -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.slow
def test_study_workers_start_that_many_local_workers_on_one_study(tmp_path, monkeypatch):
    """``--study-workers 2`` (local launcher): two `bench study` processes share the study and it
    ends with exactly its trials."""
    monkeypatch.chdir(tmp_path)  # the workers start in the command's folder
    code, out = study_cli(tmp_path, "--method", "ce", "--params", "lr", "--epochs", "1", "--trials", "3",
                          "--study-name", "w", "--pruner", "none", "--heartbeat", "5", "--study-workers", "2")
    assert code == 0, out
    assert "study w: 2 workers done" in out
    trials = optuna.load_study(study_name="w", storage=storage(tmp_path)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.user_attrs["worker"] for t in trials}) <= 2


def test_three_trial_study_writes_trials_nested_runs_and_a_report(tmp_path):
    code, out = study_cli(tmp_path, "--method", "coteaching", "--params", "forget_rate,tk", "--epochs", "1",
                          "--trials", "3", "--sampler-seed", "0", "--study-name", "s")
    assert code == 0, out
    study = optuna.load_study(study_name="s", storage=storage(tmp_path))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    first = trials[0]
    assert first.user_attrs["role"] == "defaults" and first.params["tk"] == 10
    # the default forget rate is the nominal noise rate (main.py), as the defaults trial's run used it
    used = json.loads((Path(first.user_attrs["run_dir"]) / "config.json").read_text())["config"]["method_options"]
    assert first.params["forget_rate"] == pytest.approx(used["forget_rate"]) == pytest.approx(0.4)
    client = MlflowClient(mlflow_uri(tmp_path))
    exp = client.get_experiment_by_name("study-s")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parent) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    for t in trials:  # each trial's MLflow run carries its parameters and its objective
        run = next(r for r in children if r.data.tags["trial"] == str(t.number))
        assert float(run.data.params["method.forget_rate"]) == pytest.approx(t.params["forget_rate"])
        assert run.data.metrics["last_val_acc"] == pytest.approx(t.value)
        assert t.user_attrs["last_test_acc"] == pytest.approx(run.data.metrics["last_test_acc"])

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["study-report", "--study-name", "s", "--storage", storage(tmp_path),
                     "--out", str(tmp_path / "report")]) == 0
    rep = tmp_path / "report"
    for name in ("trials.csv", "trials.md", "default_vs_best.md", "spread.md", "importances.md", "summary.json"):
        assert (rep / name).stat().st_size > 0, name
    for name in ("slice.png", "contour.png"):
        assert (rep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = np.genfromtxt(rep / "trials.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert len(table) == 3
    summary = json.loads((rep / "summary.json").read_text())
    vals = [t.value for t in trials]
    assert summary["default_vs_best"]["gap_val"] == pytest.approx(max(vals) - vals[0])
    assert summary["spread"]["val_acc"]["range"] == pytest.approx(max(vals) - min(vals))
    arts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "report")}
    assert "report/default_vs_best.md" in arts and "report/slice.png" in arts
    assert client.get_run(parent[0].info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_grid_study_in_a_fresh_folder_with_the_default_storage(tmp_path, monkeypatch):
    """No results/ yet; the grid sampler under ask/tell, past the enqueued defaults trial."""
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", *SMALL, "--method", "ce", "--params", "lr", "--sampler", "grid", "--epochs", "1",
                     "--trials", "3", "--study-name", "g"])
    assert code == 0, out.getvalue()
    trials = optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path}/results/optuna.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and trials[0].params["lr"] == 1e-3  # the defaults
    assert {t.params["lr"] for t in trials[1:]} <= {1e-4, 1e-3, 1e-2, 1e-1}


def poisoned_root(tmp: Path) -> Path:
    """Fashion-MNIST with every test label moved to the next class."""
    root = tmp / "poisoned"
    root.mkdir()
    for f in FMNIST.glob("*.gz"):
        shutil.copy(f, root / f.name)
    raw = gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz").read()
    labels = (np.frombuffer(raw[8:], dtype=np.uint8) + 1) % 10
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(raw[:8] + labels.astype(np.uint8).tobytes())
    return root


@pytest.mark.slow
def test_the_objective_never_reads_test_labels(tmp_path):
    clean_dir, bad_dir = tmp_path / "a", tmp_path / "b"
    clean_dir.mkdir()
    bad_dir.mkdir()
    common = ("--method", "ce", "--params", "lr", "--epochs", "2", "--trials", "1", "--study-name", "s")
    assert study_cli(clean_dir, *common, "--data-root", str(FMNIST))[0] == 0
    assert study_cli(bad_dir, *common, "--data-root", str(poisoned_root(tmp_path)))[0] == 0
    a = optuna.load_study(study_name="s", storage=storage(clean_dir)).trials[0]
    b = optuna.load_study(study_name="s", storage=storage(bad_dir)).trials[0]
    assert a.value == b.value and a.intermediate_values == b.intermediate_values
    assert a.user_attrs["last_test_acc"] != b.user_attrs["last_test_acc"]  # the poison did reach the test set


@pytest.mark.slow
def test_a_study_refuses_a_worker_with_other_settings(tmp_path, capsys):
    common = ("--method", "ce", "--params", "lr", "--epochs", "1", "--trials", "1", "--study-name", "s")
    assert study_cli(tmp_path, *common)[0] == 0
    code, _ = study_cli(tmp_path, *common, "--seed", "2")
    assert code == 2
    assert "exists with another method, configuration or search space" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (("--method", "ce"), "no tunable options"),
    (("--method", "dividemix", "--params", "nope"), "cannot tune 'nope'"),
    (("--method", "coteaching", "--set", "forget_rate=0.3"), "fixes a parameter the study tunes"),
    (("--method", "coteaching", "--sampler", "cmaes"), "--sampler cmaes: valid values are tpe, random, grid"),
    (("--method", "coteaching", "--val-fraction", "0"), "a study needs a validation split"),
    (("--method", "coteaching", "--storage", "mysql://x/y"), "valid storages are sqlite"),
    (("--method", "coteaching", "--trials", "0"), "--trials 0: must be at least 1"),
    (("--method", "coteaching", "--sampler-seed", "-1"), "--sampler-seed -1: must lie in [0, 2**32)"),
])
def test_bad_study_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = main(["study", *SMALL, "--tracking-uri", mlflow_uri(tmp_path), "--out", str(tmp_path / "runs"),
                 *(() if "--storage" in argv else ("--storage", storage(tmp_path))), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_study_report_of_an_unknown_study_names_the_known_ones(tmp_path, capsys):
    study_cli(tmp_path, "--method", "ce", "--params", "lr", "--epochs", "1", "--trials", "1", "--study-name", "s")
    capsys.readouterr()
    assert main(["study-report", "--study-name", "t", "--storage", storage(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such study" in err and "studies there: s" in err


# --- workers in processes: killed and continued -----------------------------------------------------------
def worker(tmp: Path, url: str, trials: int, name: str = "s", extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "study", *SMALL, "--method", "ce", "--params", "lr", "--epochs", "2",
           "--trials", str(trials), "--study-name", name, "--storage", url, "--tracking-uri", mlflow_uri(tmp),
           "--out", str(tmp / "runs"), "--heartbeat", "5", "--pruner", "none", *extra]
    log = open(tmp / f"worker-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def trials_of(url: str, name: str = "s") -> list:
    from bench.drivers.study import open_storage

    try:  # through the harness's storage settings (UTF-8 on the wire for PostgreSQL)
        return optuna.load_study(study_name=name, storage=open_storage(url, 30)).get_trials()
    except KeyError:
        return []


def running_after_one_epoch(url: str) -> bool:
    return any(t.state.name == "RUNNING" and t.intermediate_values for t in trials_of(url))


def check_killed_and_continued(tmp: Path, url: str, trials: list, wanted: int) -> None:
    """Exactly ``wanted`` complete trials; each failed (killed) trial was retried with its
    parameters and continued from its run folder; no trial ran twice to completion."""
    done = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(done) == wanted and len(failed) >= 1
    assert len({t.user_attrs["run_dir"] for t in done}) == wanted  # one run folder per complete trial
    for f in failed:
        retry = [t for t in done if t.system_attrs.get("failed_trial") == f.number]
        assert len(retry) == 1 and retry[0].params == f.params
        assert retry[0].user_attrs["run_dir"] == f.user_attrs["run_dir"]  # resumed, not restarted
        assert sorted(retry[0].intermediate_values) == [1, 2]
    client = MlflowClient(mlflow_uri(tmp))
    exp = client.get_experiment_by_name("study-s")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == wanted and len({r.info.run_id for r in finished}) == wanted


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_usable_and_a_new_worker_finishes_it(tmp_path):
    url = storage(tmp_path)
    first = worker(tmp_path, url, 3)
    try:
        wait_for(lambda: running_after_one_epoch(url), 240, "a trial past its first epoch")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = worker(tmp_path, url, 3)
    assert again.wait(timeout=300) == 0
    check_killed_and_continued(tmp_path, url, trials_of(url), 3)


def test_a_diverged_trial_is_failed_with_its_reason_never_a_score(tmp_path):
    """A trial whose run diverged (bench/training/health.py) is told FAIL with ``fail_reason``;
    the worker goes on (it is an outcome, not the worker's error)."""
    from bench.cli import build_parser, request_from_args
    from bench.drivers.study import StudyWorker, spec_from_args

    args = build_parser().parse_args(["study", *SMALL, "--method", "ce", "--params", "lr", "--epochs", "1",
                                      "--trials", "2", "--study-name", "d", "--storage", storage(tmp_path),
                                      "--tracking-uri", mlflow_uri(tmp_path), "--out", str(tmp_path / "runs")])
    spec, url = spec_from_args(args, request_from_args(args))
    worker = StudyWorker(spec, url)
    worker.open()
    trial, _ = worker.next_trial()
    worker._train = lambda trial, values, role: {"status": "diverged", "epochs_done": 0,
                                                 "diverged": "ce: non-finite training loss at epoch 1, step 3"}
    assert worker.run_trial(trial) is True
    told = optuna.load_study(study_name="d", storage=storage(tmp_path)).get_trials()[0]
    assert told.state.name == "FAIL" and told.value is None
    assert told.user_attrs["fail_reason"] == "diverged: ce: non-finite training loss at epoch 1, step 3"
