"""Exact resume after a kill -9 at any instant: a run killed at the worst moments of an epoch's
bookkeeping (just after its metrics reached MLflow, just before they did, and just after the
final metrics) and resumed holds each metric step exactly once, with the values of an
uninterrupted run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import tracking_uri

pytestmark = pytest.mark.slow  # every test kills a run in a subprocess and resumes it

ROOT = Path(__file__).resolve().parent.parent
# bench's command line with the run's log_metrics wrapped to SIGKILL the run at one moment: the
# metrics handed to the MLflow logging process (which then writes them), or not yet
DRIVER = """
import os, signal, sys
from bench.training import tracking
kill_step, when = int(os.environ["KILL_STEP"]), os.environ["KILL_WHEN"]
log = tracking.TrackerProcess.log_metrics
def log_metrics(self, metrics, step):
    epoch = "test_acc" in metrics and step == kill_step
    if when == "before-log" and epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    log(self, metrics, step)
    if (when == "after-log" and epoch) or (when == "after-final-log" and "best_test_acc" in metrics):
        self.flush()  # in the store, then killed
        os.kill(os.getpid(), signal.SIGKILL)
tracking.TrackerProcess.log_metrics = log_metrics
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""
RUN = ("run", "--method", "ce", "--noise", "sym", "--noise-rate", "0.4", "--subset", "120", "--epochs", "3",
       "--augment", "none", "--eval-batch-size", "2048", "--progress", "lines")
TIMES = {"epoch_time_s", "train_time_s", "eval_time_s", "hooks_time_s", "wall_clock_s", "setup_time_s",
         "peak_memory_mb"}


def bench(tmp: Path, *args: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TRACKING"}  # the logging child, as users run
    env.update(PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
               OMP_NUM_THREADS="1", KILL_WHEN="never", KILL_STEP="0")
    if kill:
        env.update(KILL_WHEN=kill[0], KILL_STEP=str(kill[1]))
    argv = [*args, "--out", str(tmp / "runs"), "--tracking-uri", tracking_uri(tmp)]
    return subprocess.run([sys.executable, "-c", DRIVER, *argv], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


def record(tmp: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri(tmp))
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    done = bench(tmp, *RUN)
    assert done.returncode == 0, done.stderr
    return record(tmp, json.loads(done.stdout.splitlines()[-1])["run_id"])


@pytest.mark.parametrize("when", ["after-log", "before-log", "after-final-log"])
def test_a_killed_run_resumes_with_each_metric_step_logged_once(when, uninterrupted, tmp_path):
    killed = bench(tmp_path, *RUN, kill=(when, 2))
    assert killed.returncode == -9, killed.stderr  # really killed, mid-run
    run_dir = next((tmp_path / "runs").iterdir())
    resumed = bench(tmp_path, "run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    got = record(tmp_path, json.loads(resumed.stdout.splitlines()[-1])["run_id"])
    assert sorted(got) == sorted(uninterrupted)  # the same metrics
    for key, points in got.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)) == [s for s, _ in uninterrupted[key]], key  # each step once
        if key not in TIMES:
            assert points == uninterrupted[key], key  # and the values of the uninterrupted run
