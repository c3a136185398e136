"""Run health (bench/training/health.py): a non-finite loss stops a run as ``diverged`` (exit
code 3, the last good checkpoint kept) or, under ``--on-nonfinite skip-step``, skips the step;
a run predicting one class is tagged ``collapsed``; tables mark both; a sweep finishes its other
points and lists a diverged one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.training.health import CollapseState, collapse_share, prediction_stats
from bench.training.trainer import Trainer
from methods.base import METHODS, Method, Phase, StepOutput
from tests.helpers import copy_sources, spec_of, table_cli, tracking_uri


@dataclass
class _NanOptions:
    at: int = field(default=0, metadata={"help": "the global step (from 1) whose loss is NaN; 0: none"})
    once: bool = field(default=False, metadata={"help": "only that step; else every step from it on"})
    trip: bool = field(default=False, metadata={"help": "raise on the NaN weights, as a sampler would"})
    collapsed: int = field(default=0, metadata={"help": "epochs whose predictions are all class 3"})


@METHODS.register("_health")
class _Health(Method):
    """Test method: cross-entropy whose loss turns NaN at a chosen step; or predictions put in one
    class for the first ``collapsed`` epochs."""

    name = "_health"
    Options = _NanOptions

    def setup(self) -> None:
        self.add_network("net")
        self.steps, self.epoch = 0, 0

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch
        return {}

    def train_step(self, batch, epoch, phase: Phase) -> StepOutput:
        self.steps += 1
        if self.opts.at and self.opts.trip and self.steps > self.opts.at:  # a multinomial on the NaN weights' outputs
            torch.multinomial(torch.full((3,), float("nan")), 1)
        logits = self.models["net"](batch["train"])
        loss = F.cross_entropy(logits, batch["label"])
        if self.opts.at and (self.steps == self.opts.at or (self.steps > self.opts.at and not self.opts.once)):
            loss = loss * float("nan")
        return StepOutput(loss=loss, logits=logits)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.models["net"](x)
        if self.epoch < self.opts.collapsed:
            return torch.nn.functional.one_hot(torch.full((len(x),), 3), logits.shape[1]).float() + 0 * logits
        return logits


def trainer(tmp: Path, run_dir: str = "r", **kw) -> Trainer:
    values = dict(method="_health", subset=300, test_subset=200, epochs=3, batch_size=64, out=str(tmp / "runs"),
                  tracking_uri=tracking_uri(tmp), progress=False)
    values.update(kw)
    path = tmp / "runs" / run_dir
    path.mkdir(parents=True, exist_ok=True)
    return Trainer(spec_of(**values), path)


def run_of(tmp: Path, run_id: str):
    return MlflowClient(tracking_uri(tmp)).get_run(run_id)


def test_a_nan_loss_at_step_k_stops_the_run_as_diverged_keeping_the_last_good_checkpoint(tmp_path):
    # 300 samples, batch 64: 5 steps an epoch; step 7 is epoch 2, step 2
    summary = trainer(tmp_path, method_options={"at": "7"}).run()
    assert summary["status"] == "diverged" and summary["epochs_done"] == 1
    assert summary["diverged"] == "_health: non-finite training loss at epoch 2, step 2"
    run = run_of(tmp_path, summary["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["health"] == "diverged"
    assert run.data.tags["health.detail"] == summary["diverged"]
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["status"] == "diverged"
    # the checkpoint is the last good epoch's, and it loads
    again = trainer(tmp_path, method_options={"at": "7"})
    again.build()
    history, run_id = again.load_checkpoint(again.read_checkpoint())
    assert history.epochs_done == 1 and run_id == summary["run_id"] and len(history.test_acc) == 1
    assert all(torch.isfinite(p).all() for p in again.method.models["net"].parameters())


def test_a_method_that_trips_over_the_nans_is_diverged_not_a_crash(tmp_path):
    summary = trainer(tmp_path, method_options={"at": "3", "trip": "true"}).run()
    assert summary["status"] == "diverged" and "epoch 1, step 3" in summary["diverged"]


def test_skip_step_skips_and_counts_the_bad_step(tmp_path):
    t = trainer(tmp_path, method_options={"at": "7", "once": "true"}, on_nonfinite="skip-step")
    summary = t.run()
    assert summary["status"] == "finished"
    client = MlflowClient(tracking_uri(tmp_path))
    skipped = [m.value for m in sorted(client.get_metric_history(summary["run_id"], "skipped_steps"),
                                       key=lambda m: m.step)]
    assert skipped == [0.0, 1.0, 0.0]
    assert all(torch.isfinite(p).all() for p in t.method.models["net"].parameters())
    # the same NaN, stopping by default
    assert trainer(tmp_path, "r2", method_options={"at": "7", "once": "true"}).run()["status"] == "diverged"


def test_bench_run_of_a_diverging_run_exits_3_with_one_line(tmp_path, capsys):
    code = main(["run", "--method", "ce", "--dataset", "fashion-mnist", "--noise", "sym", "--noise-rate", "0.4",
                 "--epochs", "3", "--subset", "600", "--test-subset", "200", "--optimizer", "sgd", "--lr", "1e6",
                 "--out", str(tmp_path / "runs"), "--tracking-uri", tracking_uri(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 3
    assert json.loads(out.strip().splitlines()[-1])["status"] == "diverged"
    lines = [line for line in err.splitlines() if "diverged" in line]
    assert len(lines) == 1 and lines[0].startswith("bench: diverged: ce: non-finite training loss at epoch 1, step")


def test_collapse_is_tagged_and_says_whether_it_recovered(tmp_path, caplog):
    stuck = trainer(tmp_path, method_options={"collapsed": "3"}).run()
    tags = run_of(tmp_path, stuck["run_id"]).data.tags
    assert tags["health"] == "collapsed" and tags["health.detail"] == "collapsed from epoch 1"
    assert stuck["status"] == "finished"  # the run goes on
    assert any("predictions collapsed: 100.0% of the test images in class 3" in r.getMessage()
               for r in caplog.records)
    back = trainer(tmp_path, "r2", epochs=4, method_options={"collapsed": "2"}).run()
    tags = run_of(tmp_path, back["run_id"]).data.tags
    assert tags["health"] == "collapsed-recovered"
    assert tags["health.detail"] == "collapsed from epoch 1, recovered by epoch 3"
    shares = [m.value for m in MlflowClient(tracking_uri(tmp_path)).get_metric_history(back["run_id"],
                                                                                      "pred_top_share")]
    assert len(shares) == 4 and max(shares) == 1.0
    healthy = trainer(tmp_path, "r3", method_options={"collapsed": "1"}).run()  # one evaluation is not collapse
    assert "health" not in run_of(tmp_path, healthy["run_id"]).data.tags


def test_the_collapse_share_follows_the_test_sets_balance():
    assert collapse_share(torch.arange(10).repeat(50), 10) == pytest.approx(0.55)
    assert collapse_share(torch.arange(100), 100) == pytest.approx(0.505)
    assert collapse_share(torch.tensor([0, 0, 0, 1]), 2) == pytest.approx(0.875)
    share, entropy, top = prediction_stats(torch.tensor([2, 2, 2, 1]), 4)
    assert (share, top) == (0.75, 2) and entropy == pytest.approx(-(0.75 * torch.log(torch.tensor(0.75))
                                                                    + 0.25 * torch.log(torch.tensor(0.25))).item())
    s = CollapseState()
    assert [s.update(e, x, 0.55) for e, x in enumerate([0.9, 0.2, 0.9, 0.9, 0.9, 0.1], 1)] == [
        False, False, False, True, False, False]
    assert s.collapsed_epoch == 3 and s.tag() == "collapsed-recovered"


# --- tables --------------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    """CE 3 seeds (seed 2 collapsed), peer 3 seeds (seed 3 diverged: FAILED), as the trainer tags them."""
    client = MlflowClient(tracking_uri(tmp_path))
    exp = client.create_experiment("h", artifact_location=(tmp_path / "art").as_uri())
    runs = (("ce", 1, 0.80, "", "FINISHED"), ("ce", 2, 0.10, "collapsed", "FINISHED"),
            ("ce", 3, 0.82, "", "FINISHED"), ("peer", 1, 0.70, "", "FINISHED"),
            ("peer", 2, 0.72, "", "FINISHED"), ("peer", 3, 0.10, "diverged", "FAILED"))
    for method, seed, acc, health, status in runs:
        tags = {"noise": "sym:0.4", **({"health": health, "health.detail": f"{health} at epoch 2"} if health else {})}
        rid = client.create_run(exp, tags=tags).info.run_id
        for k, v in {"method": method, "dataset": "fashion-mnist", "seed": seed, "epochs": 3}.items():
            client.log_param(rid, k, str(v))
        for k in ("best_test_acc", "last_test_acc"):
            client.log_metric(rid, k, acc, step=3)
        client.log_metric(rid, "wall_clock_s", 30.0, step=3)
        if method == "peer":  # peer's clean AUC only: CE has no row in the detection table
            client.log_metric(rid, "clean_auc", 0.9, step=3)
        client.set_terminated(rid, status)
    return tmp_path


def table(tmp, *argv: str) -> str:
    return table_cli(tmp, "h", *argv)


def test_tables_mark_cells_with_unhealthy_runs_and_health_lists_them(store):
    md = table(store, "--metric", "last_test_acc")
    assert "| ce | 57.33 ± 41.00 † |" in md  # the collapsed seed stays in the mean, marked
    assert "| peer | **71.00 ± 1.41 †** |" in md  # the diverged seed is not in it
    assert "- † ce, sym:0.4: of 3 runs, 1 collapsed" in md
    assert "- † peer, sym:0.4: of 3 runs, 1 diverged (not in the mean)" in md
    # a table CE has no row in says nothing of CE's runs (its collapsed one did not empty a cell)
    detection = table(store, "--detection")
    assert "- † peer, sym:0.4: of 3 runs, 1 diverged (not in the mean)" in detection and "ce," not in detection
    health = table(store, "--health", "--format", "csv")
    rows = [line for line in health.splitlines()[1:] if line]
    assert len(rows) == 2 and rows[0].startswith("ce,fashion-mnist,sym:0.4,2,collapsed,collapsed at epoch 2")
    assert rows[1].startswith("peer,fashion-mnist,sym:0.4,3,diverged,diverged at epoch 2")


# --- a sweep -------------------------------------------------------------------------------------------
NAN_METHOD = '''"""A method whose loss is NaN from its third step (a test's)."""
import torch.nn.functional as F

from methods.base import METHODS, Method, StepOutput


@METHODS.register("nanthree")
class NanThree(Method):
    """Cross-entropy that turns NaN at its third step."""

    paper = "none (a test)"
    code = "none"

    def setup(self) -> None:
        self.add_network("net", schedule_epochs=self.ctx.epochs)
        self.steps = 0

    def train_step(self, batch, epoch, phase) -> StepOutput:
        self.steps += 1
        logits = self.models["net"](batch["train"])
        loss = F.cross_entropy(logits, batch["label"])
        return StepOutput(loss=loss * float("nan") if self.steps >= 3 else loss, logits=logits)
'''


@pytest.mark.slow
def test_a_sweep_finishes_its_other_points_and_lists_the_diverged_one(tmp_path):
    repo = copy_sources(tmp_path / "repo", {"methods/nanthree.py": NAN_METHOD})
    env = {**os.environ, "PYTHONPATH": str(repo), "BENCH_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "bench", "sweep", "--methods", "ce,nanthree", "--dataset", "fashion-mnist",
            "--noise", "sym:0.4", "--seeds", "1", "--epochs", "2", "--subset", "300", "--test-subset", "200",
            "--workers", "2", "--experiment", "s", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
            "--out", str(tmp_path / "runs")]
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a diverged run is an outcome, not a failure
    assert "diverged         nanthree sym:0.4 seed 1" in proc.stdout
    assert "sweep done: 1 runs finished, 1 diverged, 0 failed" in proc.stdout
    status = subprocess.run([*argv, "--status"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert ("diverged     nanthree sym:0.4 seed 1: nanthree: non-finite training loss at epoch 1, step 3"
            in status.stdout)
    again = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert again.stdout.count("skip (finished)") == 2  # a diverged point is not run again


def test_plots_mark_methods_with_unhealthy_runs_and_draw_no_diverged_run(store, tmp_path, monkeypatch):
    import bench.records.figures as figures

    seen = {}
    real = figures.save_figure

    def spy(fig, path, pdf=True):
        seen["legend"] = [t.get_text() for t in fig.legends[0].get_texts()]
        seen["y"] = {c.get_label(): float(c.get_offsets()[0][1]) for ax in fig.axes for c in ax.collections
                     if c.get_label() in ("ce †", "peer †")}
        return real(fig, path, pdf)

    monkeypatch.setattr(figures, "save_figure", spy)
    assert main(["plot", "--experiment", "h", "--kind", "pareto", "--out", str(tmp_path),
                 "--tracking-uri", tracking_uri(store)]) == 0
    assert seen["legend"] == ["ce †", "peer †"]
    assert seen["y"]["peer †"] == pytest.approx(71.0)  # the mean of its two finished seeds, not of the diverged
    assert seen["y"]["ce †"] == pytest.approx(57.33, abs=0.01)  # the collapsed seed is drawn (it finished)
