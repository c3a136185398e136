"""MLflow logging through an explicit :class:`MlflowClient` (no global active run).

Default store: ``sqlite:///results/mlflow.db`` with artifacts in ``results/mlartifacts``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it. For any ``sqlite:///PATH`` store
this module creates, artifacts go beside the database, not into the working directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common.errors import UsageError

DEFAULT_RESULTS = Path("results")
# The runs list's columns, as MLflow's UI names them (`type.\`key\``): what a run is (method,
# noise, seed), how it ended (best and last test accuracy, health) and what it cost (seconds, on
# which hardware)
RUNS_VIEW_COLUMNS = ("tags.`method`", "tags.`dataset`", "tags.`noise`", "tags.`seed`", "metrics.`best_test_acc`",
                     "metrics.`last_test_acc`", "metrics.`wall_clock_s`", "tags.`env.hardware`", "tags.`health`")
# The UI keeps no default columns on the server; what it keeps there is a saved view: an
# experiment tag `mlflow.sharedViewState.ID` holding {name, createdAt, state} as JSON, `state`
# being the runs list's state (itself JSON), opened by the address's `viewStateShareKey=ID`
# (MLflow 3.x: experiment-page/utils/savedViewEnvelope.ts and hooks/useSharedExperimentViewState.ts
# under mlflow/server/js/src/experiment-tracking/components/)
RUNS_VIEW_KEY = "bench"
RUNS_VIEW = {"name": "bench: method, noise, seed, accuracy, seconds", "createdAt": 1_765_000_000_000,
             "state": json.dumps({"selectedColumns": list(RUNS_VIEW_COLUMNS)})}
# MLflow 3's UI shows an experiment of kind `custom_model_development` as training runs
# (metrics, parameters), not as a GenAI experiment with traces
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development",
                   f"mlflow.sharedViewState.{RUNS_VIEW_KEY}": json.dumps(RUNS_VIEW)}


def store_uri(uri: str | None = None) -> str:
    """The tracking store of a run, a sweep, a table: the URI given, else $MLFLOW_TRACKING_URI,
    else ``results/mlflow.db`` under the current folder. Worked out here alone."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(DEFAULT_RESULTS / 'mlflow.db').resolve()}"


def mlflow_client(uri: str | None = None) -> Any:
    """An MlflowClient on :func:`store_uri` (MLflow's chatter off)."""
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    return MlflowClient(store_uri(uri))


def _quiet_mlflow() -> None:
    """MLflow's database migrations and deprecation notes are not the user's business."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # plots download many small files
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a benchmark sends nothing anywhere by default
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

    def __init__(self, uri: str | None = None, experiment: str | None = None) -> None:
        """With ``experiment``: opened at once; without: by :meth:`open` (as a TrackerProcess)."""
        self.uri = ""
        self.client: Any = None
        self.run_id: str | None = None
        self._logged: set[tuple[str, int]] = set()  # (metric, step) already in the store, on resume
        if experiment is not None:
            self.open(uri, experiment)

    def open(self, uri: str | None, experiment: str) -> Tracker:
        """Open the store and the experiment (created if missing)."""
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()  # after the import: importing mlflow sets its loggers' levels
        self.uri = store_uri(uri)
        with _store_lock(self.uri):  # parallel runs must not race to create tables or experiments
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(self.uri), tags=EXPERIMENT_TAGS)
            else:
                self.experiment_id = exp.experiment_id
        return self

    def start(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        return self.run_id

    def reopen(self, run_id: str, from_step: int = 0) -> None:
        """Continue an interrupted run (``--resume``): same run id, status back to running.

        The metrics it already holds at ``from_step`` (the checkpoint's epoch) and later are
        remembered and never logged again, whatever instant the kill came at: each step of
        each metric is in the record once, as in an uninterrupted run."""
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        for key in self.client.get_run(run_id).data.metrics:
            self._logged.update((key, m.step) for m in self.client.get_metric_history(run_id, key)
                                if m.step >= from_step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if (k, step) not in self._logged]
        if items:
            self.client.log_batch(self.run_id, metrics=items)
            self._logged.update((m.key, step) for m in items)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=subdir)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def flush(self) -> None:
        """Everything logged so far is in the store (it always is, in-process)."""

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def close(self) -> None:
        """Done with the store (nothing to release in-process)."""


def new_tracker() -> Tracker | TrackerProcess:
    """The logger of a run: a :class:`TrackerProcess` (its start-up overlaps the run's), or with
    ``BENCH_TRACKING=inline`` a :class:`Tracker` in this process (a notebook, the test suite,
    where MLflow is imported already and a child process would only add its start-up)."""
    return Tracker() if os.environ.get("BENCH_TRACKING") == "inline" else TrackerProcess()


class TrackingError(UsageError):
    """The MLflow store refused an operation, or the logging process died; one line."""


class TrackerProcess:
    """A :class:`Tracker` in a child process, with the same methods.

    Importing MLflow and opening its store cost a run 3-5 seconds of start-up on this
    project's 2-core reference machine; in a child process started first, they overlap the
    import of torch and the loading of the data. Calls are sent down a pipe and return at once,
    except those with an answer (``start``, ``reopen``) and :meth:`flush` / :meth:`end`, which
    wait until the store holds everything sent and raise the first error the child met.

    The child ignores Ctrl-C and SIGTERM (its own session): when the run is interrupted or
    killed, the child still writes everything it was sent, then exits when the pipe closes.
    """

    def __init__(self) -> None:
        """Start the child; it imports MLflow at once, and opens no store before :meth:`open`
        (so a run refused by a later check writes nothing)."""
        import sys

        self.uri = ""
        self.run_id: str | None = None
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        self.proc = subprocess.Popen([sys.executable, "-c", "from bench.training.tracking import serve; serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self._waiting = 0

    def open(self, uri: str | None, experiment: str) -> TrackerProcess:
        """Open the store and the experiment (created if missing), as ``Tracker(uri, experiment)``."""
        self.uri = store_uri(uri)
        self._send("open", uri=self.uri, experiment=experiment)
        return self

    def _send(self, op: str, **kwargs: Any) -> None:
        import json

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the child is gone: its last reply says why
            self.flush()
            raise TrackingError("the MLflow logging process has ended") from None
        self._waiting += 1

    def flush(self) -> Any:
        """Wait for the answers to everything sent; raise the first error; the last result."""
        import json

        assert self.proc.stdout is not None
        result = None
        while self._waiting:
            line = self.proc.stdout.readline()
            if not line:
                self._waiting = 0
                raise TrackingError(f"the MLflow logging process ended unexpectedly (exit code {self.proc.wait()})")
            self._waiting -= 1
            reply = json.loads(line)
            if "error" in reply:
                raise TrackingError(reply["error"])
            result = reply["result"]
        return result

    def start(self, run_name: str, tags: Mapping[str, str]) -> str:
        self._send("start", run_name=run_name, tags=dict(tags))
        self.run_id = self.flush()
        return self.run_id

    def reopen(self, run_id: str, from_step: int = 0) -> None:
        self.run_id = run_id
        self._send("reopen", run_id=run_id, from_step=from_step)
        self.flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send("log_params", params={k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._send("log_metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self._send("log_artifact", path=str(Path(path).resolve()), subdir=subdir)

    def set_tag(self, key: str, value: str) -> None:
        self._send("set_tag", key=key, value=value)

    def end(self, status: str = "FINISHED") -> None:
        self._send("end", status=status)
        self.close()

    def close(self) -> None:
        """Wait for everything sent to be written, then let the child exit (at once, if no
        store was ever opened: there is nothing to write)."""
        if not self.uri:
            self.proc.kill()
        try:
            self.flush()
        finally:
            # "exit" first: end of input alone never comes while a process forked from the run
            # (a loader worker) holds a copy of the pipe's write end
            if self.proc.stdin is not None and not self.proc.stdin.closed and self.proc.poll() is None:
                with contextlib.suppress(BrokenPipeError, ValueError):
                    self.proc.stdin.write('{"op": "exit"}\n')
                    self.proc.stdin.flush()
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    self.proc.stdin.close()
            self.proc.wait()


def serve() -> None:
    """The child of :class:`TrackerProcess`: one JSON request per line on standard input, one
    JSON answer per line on standard output, until ``exit`` or the end of standard input."""
    import json
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # the answers get the pipe to themselves: whatever MLflow prints ("View run ... at ...")
    # goes to standard error, which the run shares
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _quiet_mlflow()
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the slow imports, before the first request)
    from mlflow.tracking import MlflowClient  # noqa: F401

    tracker: Tracker | None = None
    uri = ""
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "exit":  # the run is done (or its input may never close: see TrackerProcess.close)
            break
        try:
            if op == "open":
                uri = request["uri"]
                tracker, result = Tracker(**request), None
            else:
                if "path" in request:
                    request["path"] = Path(request["path"])
                result = getattr(tracker, op)(**request)
            reply: dict[str, Any] = {"result": result}
        except Exception as exc:  # every failure goes back to the run as one line
            reply = {"error": f"MLflow store {uri}: {op} failed: {type(exc).__name__}: {exc}"}
        try:
            print(json.dumps(reply), file=answers, flush=True)
        except BrokenPipeError:  # the run is gone (killed): keep writing what it sent
            answers = open(os.devnull, "w")  # noqa: SIM115
    # every operation is committed; skip the interpreter's second-long teardown of MLflow
    os._exit(0)


def runs_by_tag(uri: str | None, experiment: str, tag: str, values: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Runs of ``experiment`` whose ``tag`` is one of ``values``: {value: [{run_id, status,
    run_dir}, ...]} oldest first. Works against a file/SQLite store or a tracking server."""
    from bench.training.health import TAG_DETAIL, TAG_HEALTH

    client = mlflow_client(uri)
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
                                                  "run_dir": r.data.tags.get("run_dir"),
                                                  "health": r.data.tags.get(TAG_HEALTH),
                                                  "health_detail": r.data.tags.get(TAG_DETAIL)})
        token = page.token
        if not token:
            return out


def experiment_url(uri: str | None, experiment: str, base: str) -> str:
    """The UI address of ``experiment``'s runs page (the UI's home page when there is no such
    experiment yet), in the UI's model-training mode (`workflowType`; its GenAI mode is the
    default) and the harness's shared view of the runs list; tags an experiment made before the
    tags were (or with other values) as :data:`EXPERIMENT_TAGS`."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return base + "/"
    for key, value in EXPERIMENT_TAGS.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    view = f"workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"
    return f"{base}/#/experiments/{exp.experiment_id}/runs?{view}"


def serve_ui(uri: str | None, host: str, port: int, workers: int, url: str, open_browser: bool = True) -> int:
    """Run ``mlflow ui`` on the store with ``workers`` workers, print ``url`` (and open it in a
    browser where there is one) once the server answers; Ctrl-C stops it."""
    import signal
    import socket
    import sys
    import time
    import webbrowser

    uri = store_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    artifacts = _artifact_root(uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    # MLflow's own dependencies' deprecation notes are not the user's business (Starlette's is a UserWarning)
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated"}
    # MLflow's job runner (five Huey consumers, 37 threads) runs GenAI jobs only (scorers, prompt
    # optimisation: mlflow/server/jobs/__init__.py's job list); the runs list needs none of it and
    # it doubles the time to stop. A user who sets the variable keeps their choice.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(cmd, env=env)

    def stop(signum: int, frame: Any) -> None:  # a service manager's SIGTERM stops the server too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection((host if host != "0.0.0.0" else "127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        if proc.poll() is None:
            print(f"MLflow UI: {url}  (store {uri}; Ctrl-C stops it)", file=sys.stderr, flush=True)
            if open_browser:
                webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
