"""The MLflow record of one run: what is logged at its start, after each epoch and at its end.

Records (``bench table``, ``bench plot``) read nothing but this record, so it holds everything
they need: the whole configuration as parameters, tags that name the method and setting, the
noise (given labels, the truth where known, the transition matrix) as artifacts, and what the
method declares of itself (``score_artifacts``, ``time_reference``) as tags.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.training.health import DIVERGED, TAG_DETAIL, TAG_HEALTH
from bench.training.resolve import CONFIG_FILE, RunSpec
from bench.training.tracking import git_commit

# tags that carry what a method declares of itself (methods.base.Method), for the records
TAG_TIME_REFERENCE = "bench.time_reference"
TAG_SCORE_ARTIFACTS = "bench.score_artifacts"
# where the run folder and resuming are said (INFO): the command line writes it to stderr
LOG = logging.getLogger("bench.training")


class RunRecord:
    """One run's MLflow record, written through ``tracker`` (a Tracker or TrackerProcess)."""

    def __init__(self, tracker: Any, spec: RunSpec, run_dir: Path) -> None:
        self.tracker, self.spec, self.run_dir = tracker, spec, run_dir
        self.run_id: str | None = None

    def start(self, assembly: Any, method: Any, tags: dict[str, str]) -> str:
        """Open the MLflow run: tags, parameters, config.json and the noise."""
        cfg, place = self.spec.config, self.spec.place
        tags = {"git_commit": git_commit(), "method": cfg.method, "dataset": cfg.dataset, "noise": cfg.setting,
                "config_hash": cfg.hash(), "run_dir": str(self.run_dir), "request_hash": self.spec.request_hash,
                "seed": str(cfg.seed), **_declared(method), **tags}
        self.run_id = self.tracker.start(cfg.run_name, tags=tags)
        params = {**cfg.flatten(), **{k: "" if v is None else str(v) for k, v in place.to_dict().items()
                                      if k != "progress"}, "preset": self.spec.preset or ""}
        self.tracker.log_params(params)
        art = self.run_dir
        (art / CONFIG_FILE).write_text(json.dumps(self.spec.saved(), indent=2, default=str) + "\n")
        self.tracker.log_artifact(art / CONFIG_FILE)
        train, noise = assembly.train_set, assembly.noise
        files = {"noisy_labels.npy": train.given, "train_source_index.npy": train.source_index}
        if train.clean is not None:  # the truth, for the records' diagnostics (never for a method)
            files["clean_labels.npy"] = train.clean
        for name, array in files.items():
            np.save(art / name, array)
            self.tracker.log_artifact(art / name, "noise")
        if noise.transition is not None:
            tpath = art / "noise_transition.csv"
            np.savetxt(tpath, noise.transition, delimiter=",", fmt="%.6f",
                       header="rows: true class, columns: given label")
            self.tracker.log_artifact(tpath, "noise")
            self.tracker.log_metrics({"noise_rate_realized": noise.rate_realized}, step=0)
        self.tracker.log_params({"noise_file": str(noise.labels_file)})
        LOG.info(f"run folder: {self.run_dir}")
        return self.run_id

    def resume(self, run_id: str, history: Any, tags: dict[str, str]) -> None:
        """Continue the run's record. Metrics already there at the checkpoint's epoch or later are
        never logged again; those of the checkpointed epoch that a kill kept from the store are
        logged now: each step of each metric is in the record exactly once."""
        self.run_id = run_id
        self.tracker.reopen(run_id, from_step=history.epochs_done)
        self.tracker.log_metrics(history.last_metrics, step=history.epochs_done)
        for key, value in tags.items():  # e.g. the retried study trial's number
            self.tracker.set_tag(key, value)
        LOG.info(f"resuming {self.run_dir} after epoch {history.epochs_done}")

    def epoch(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step=step)

    def flush(self) -> None:
        """Everything logged so far is in the store."""
        self.tracker.flush()

    def stopped(self, reason: str) -> None:
        self.tracker.set_tag("stopped", reason)
        self.tracker.end("KILLED")

    def killed(self) -> None:
        self.tracker.end("KILLED")

    def tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.tracker.set_tag(key, value)

    def diverged(self, summary: dict[str, Any], step: int, detail: str) -> None:
        """A run stopped by a non-finite loss or logits (bench/training/health.py): the metrics
        of its good epochs, summary.json, the tags that say so; the MLflow run FAILED."""
        self.tags({TAG_HEALTH: DIVERGED, TAG_DETAIL: detail})
        self._close(summary, step)
        self.tracker.end("FAILED")

    def finish(self, summary: dict[str, Any], step: int) -> None:
        """Final metrics, summary.json, the method's artifacts; the run FINISHED."""
        self._close(summary, step)
        self.tracker.end("FINISHED")

    def _close(self, summary: dict[str, Any], step: int) -> None:
        final = {k: summary[k] for k in ("best_test_acc", "last_test_acc", "wall_clock_s", "peak_memory_mb",
                                         "setup_time_s", "best_val_acc", "last_val_acc") if k in summary}
        self.tracker.log_metrics(final, step=step)
        path = self.run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        self.tracker.log_artifact(path)
        for item in sorted((self.run_dir / "artifacts").glob("*")):
            if item.is_file():
                self.tracker.log_artifact(item, "method")


def _declared(method: Any) -> dict[str, str]:
    """The method's declarations as tags."""
    tags = {}
    if getattr(method, "time_reference", None):
        tags[TAG_TIME_REFERENCE] = method.time_reference
    if getattr(method, "score_artifacts", None):
        tags[TAG_SCORE_ARTIFACTS] = json.dumps({f"method/{k}": v for k, v in method.score_artifacts.items()})
    return tags
