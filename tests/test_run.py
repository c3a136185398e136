"""End to end: `bench run` with CE on a Fashion-MNIST subset, read back through MLflow's API,
and resume after an interruption equals the uninterrupted run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_resume_equals_uninterrupted, run_cli, tracking_uri
from mlflow.tracking import MlflowClient

EPOCH_METRICS = ("train_loss", "train_acc", "test_acc", "epoch_time_s", "train_time_s", "eval_time_s")
FINAL_METRICS = ("best_test_acc", "last_test_acc", "wall_clock_s", "peak_memory_mb", "noise_rate_realized")
SUMMARY_KEYS = ("run_id", "method", "dataset", "noise", "noise_rate", "noise_rate_realized", "seed", "epochs",
                "best_test_acc", "last_test_acc", "wall_clock_s")


BASE = ("--method", "ce", "--dataset", "fashion-mnist", "--noise", "sym", "--noise-rate", "0.4",
        "--subset", "1000", "--batch-size", "100")


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """A run as users run it: logged by the MLflow child process (TrackerProcess)."""
    tmp = tmp_path_factory.mktemp("run")
    inline = os.environ.pop("BENCH_TRACKING")
    try:
        return tmp, run_cli(tmp, *BASE, "--epochs", "2", "--experiment", "test")
    finally:
        os.environ["BENCH_TRACKING"] = inline


@pytest.mark.slow
def test_summary_line(two_epoch_run):
    _, s = two_epoch_run
    for key in SUMMARY_KEYS:
        assert key in s, key
    assert s["method"] == "ce" and s["dataset"] == "fashion-mnist" and s["noise"] == "sym"
    assert s["epochs"] == 2 and s["status"] == "finished"
    assert 0.35 <= s["noise_rate_realized"] <= 0.45  # 400 of 1000 flipped, up to subset sampling
    assert 0.1 < s["last_test_acc"] <= s["best_test_acc"] <= 1.0
    assert s["wall_clock_s"] > 0


def test_mlflow_has_metrics_params_tags_artifacts(two_epoch_run):
    tmp, s = two_epoch_run
    client = MlflowClient(tracking_uri(tmp))
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "ce-fashion-mnist-sym0.4-s1"  # method and setting first, as the UI lists it
    assert Path(s["run_dir"]).name.startswith("ce-fashion-mnist-sym0.4-s1-")
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.bench"])  # the runs list's columns, a saved view
    assert "metrics.`last_test_acc`" in json.loads(view["state"])["selectedColumns"]
    assert view["name"].startswith("bench")
    for name in EPOCH_METRICS:
        hist = client.get_metric_history(s["run_id"], name)
        assert sorted(m.step for m in hist) == [1, 2], name
    for name in FINAL_METRICS:
        assert name in run.data.metrics, name
    assert 0 <= run.data.metrics["test_acc"] <= 1  # a fraction, not a percentage
    assert run.data.metrics["best_test_acc"] == pytest.approx(s["best_test_acc"])
    params = run.data.params
    assert params["method"] == "ce" and params["noise_rate"] == "0.4" and params["subset"] == "1000"
    assert params["batch_size"] == "100" and params["backbone"] == "smallcnn"
    tags = run.data.tags
    assert tags["method"] == "ce" and tags["dataset"] == "fashion-mnist" and tags["noise"] == "sym:0.4"
    assert "git_commit" in tags and "config_hash" in tags
    names = {a.path for a in client.list_artifacts(s["run_id"])}
    assert {"config.json", "summary.json", "noise"} <= names
    noise = {a.path for a in client.list_artifacts(s["run_id"], "noise")}
    assert {"noise/noisy_labels.npy", "noise/noise_transition.csv"} <= noise
    labels = np.load(client.download_artifacts(s["run_id"], "noise/noisy_labels.npy", str(tmp)))
    assert labels.shape == (1000,)
    trans = np.loadtxt(client.download_artifacts(s["run_id"], "noise/noise_transition.csv", str(tmp)),
                       delimiter=",")
    assert trans.shape == (10, 10)
    np.testing.assert_allclose(trans.sum(1), 1.0, atol=1e-5)
    assert np.diag(trans).mean() == pytest.approx(1 - s["noise_rate_realized"], abs=0.02)


def test_run_folder_contents(two_epoch_run):
    _, s = two_epoch_run
    run_dir = Path(s["run_dir"])
    for name in ("config.json", "checkpoint.pt", "summary.json", "noisy_labels.npy"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "config.json").read_text())
    cfg, place = saved["config"], saved["place"]  # what decides the result; where it ran
    assert cfg["method"] == "ce" and cfg["noise_rate"] == 0.4 and cfg["epochs"] == 2
    assert "device" not in cfg and "tracking_uri" not in cfg and place["experiment"] == "test"


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    args = (*BASE, "--epochs", "3")
    assert_resume_equals_uninterrupted(tmp_path, args, 1, ("test_acc", "train_loss", "train_acc"))
    client = MlflowClient(tracking_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    finals = {(r.data.metrics["best_test_acc"], r.data.metrics["last_test_acc"]) for r in runs}
    assert len(finals) == 1  # the same best and last accuracy


def _open_tracker(uri: str) -> str:
    from bench.training.tracking import Tracker

    return Tracker(uri, "parallel").experiment_id


@pytest.mark.slow
def test_parallel_runs_can_open_a_new_store(tmp_path):
    """Runs of a sweep start at once on a new sqlite store: one of them must not die of the
    other's table creation ("table ... already exists")."""
    import multiprocessing as mp

    uri = f"sqlite:///{tmp_path}/new.db"
    with mp.get_context("spawn").Pool(3) as pool:
        ids = pool.map(_open_tracker, [uri] * 3)
    assert len(set(ids)) == 1  # and one experiment, not three
