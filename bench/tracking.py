"""MLflow logging through an explicit :class:`MlflowClient` (no global active run).

Default store: ``sqlite:///results/mlflow.db`` with artifacts in ``results/mlartifacts``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it. For any ``sqlite:///PATH`` store
this module creates, artifacts go beside the database, not into the working directory.
"""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path("results")


def default_tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(DEFAULT_RESULTS / 'mlflow.db').resolve()}"


def _quiet_mlflow() -> None:
    """MLflow's database migrations and deprecation notes are not the user's business."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # plots download many small files
    warnings.filterwarnings("ignore", module="mlflow")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite database; None (MLflow's default) for other stores."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created with its folder), across processes of one machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a sqlite store while it is opened: MLflow creates its tables on
    first use, and two runs starting at once on a new store otherwise both try ("table ...
    already exists"). Other stores (a tracking server) handle concurrency themselves."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    with file_lock(db.with_name(db.name + ".lock")):
        yield


class Tracker:
    """One MLflow run: parameters, tags, metrics by epoch, artifacts."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()  # after the import: importing mlflow sets its loggers' levels
        self.uri = uri or default_tracking_uri()
        with _store_lock(self.uri):  # parallel runs must not race to create tables or experiments
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(self.uri))
            else:
                self.experiment_id = exp.experiment_id
        self.run_id: str | None = None

    def start(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        return self.run_id

    def reopen(self, run_id: str) -> None:
        """Continue an interrupted run (``--resume``): same run id, status back to running."""
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=subdir)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def runs_by_tag(uri: str | None, experiment: str, tag: str, values: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Runs of ``experiment`` whose ``tag`` is one of ``values``: {value: [{run_id, status,
    run_dir}, ...]} oldest first. Works against a file/SQLite store or a tracking server."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or default_tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list[dict[str, Any]]] = {}
    if exp is None:
        return out
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        for r in page:
            value = r.data.tags.get(tag)
            if value in values:
                out.setdefault(value, []).append({"run_id": r.info.run_id, "status": r.info.status,
                                                  "run_dir": r.data.tags.get("run_dir")})
        token = page.token
        if not token:
            return out
