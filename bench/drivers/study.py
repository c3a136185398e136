"""``python -m bench study``: hyperparameter-sensitivity studies with Optuna, on one machine or many.

- The objective is the last epoch's accuracy on a validation split held out of the NOISY
  training set (``--val-fraction``, default 10%, stratified by the given labels, chosen by
  the noise seed), measured against its given labels: what a user without clean labels can
  select by. Test accuracy (last and best epoch) and, with synthetic noise, the validation
  accuracy against the clean labels are recorded beside it for each trial, never optimised.
- Trial 0 is the method's defaults (resolved for the setting, as ``bench run`` uses them),
  so a report can put the default beside the best trial.
- Each trial is a ``bench run`` in this process (the same trainer, data and noise), an MLflow
  run nested under the study's parent run; its per-epoch validation accuracy goes to the
  pruner.
- Storage: a SQLite file under ``results/`` by default; with ``--storage postgresql://...``
  workers on many machines run one study. Starting a trial and counting trials happen under a
  lock (a file lock beside SQLite, an advisory lock in PostgreSQL), so the study ends with
  exactly ``--trials`` finished trials however many workers run. Workers send heartbeats; a
  trial whose worker died is failed after the grace period and re-queued with the same
  parameters, and the worker that picks it up resumes its run from the last checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common.errors import UsageError
from bench.common.search import Param, Setting, choose_params, trial_overrides
from bench.drivers.slurm import SlurmOptions, slurm_options
from bench.training.config import RunConfig, parse_set
from bench.training.resolve import RunSpec

DEFAULT_STORAGE_FILE = Path("results") / "optuna.db"
FINISHED_STATES = ("COMPLETE", "PRUNED")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")


@dataclasses.dataclass
class StudySpec:
    """What a study runs: the base configuration every trial shares and the space it tunes."""

    name: str
    base: RunSpec  # every trial's configuration before the tuned values; its placement
    space: dict[str, Param]
    trials: int
    sampler: str
    pruner: str
    sampler_seed: int | None
    heartbeat: int
    out: Path
    trials_given: bool = True  # --trials on the command line (else the default)
    experiment_given: bool = True  # --experiment on the command line

    def identity(self) -> dict[str, Any]:
        """Stored with the study: a worker with other settings must not join it."""
        return {"config_hash": self.base.config.hash(), "method": self.base.config.method,
                "space": {k: dataclasses.asdict(v) for k, v in self.space.items()}}


def default_storage() -> str:
    return f"sqlite:///{DEFAULT_STORAGE_FILE.resolve()}"


def redact(url: str) -> str:
    """A storage URL without its password (for logs and MLflow tags)."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}:***@{tail}" if ":" in cred else url


def check_storage_url(url: str) -> None:
    if not (url.startswith("sqlite:///") or url.startswith("postgresql")):
        raise UsageError(f"--storage {redact(url)}: valid storages are sqlite:///PATH and "
                         "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB")


@contextlib.contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Exclusive across all study workers on the storage ``url`` (see the module docstring).
    One lock for every study there: it also covers the creation of Optuna's tables, and its
    sections are short."""
    if url.startswith("sqlite:///"):
        from bench.training.tracking import file_lock

        db = Path(url[len("sqlite:///"):])
        with file_lock(db.with_name(db.name + ".lock")):
            yield
        return
    import sqlalchemy

    key = zlib.crc32(b"lnl-bench study lock") & 0x7FFFFFFF
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **pg_engine_kwargs())
    try:
        with engine.connect() as conn:  # a killed worker's session ends, and its lock with it
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def pg_engine_kwargs() -> dict[str, Any]:
    """UTF-8 on the wire: with a SQL_ASCII server (a cluster made under LANG=C) psycopg would
    otherwise return bytes where SQLAlchemy expects text, and fail."""
    return {"connect_args": {"client_encoding": "utf8"}}


def open_storage(url: str, heartbeat: int) -> Any:
    import optuna

    check_storage_url(url)
    if url.startswith("sqlite:///"):  # a fresh checkout has no results/ yet
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=pg_engine_kwargs() if url.startswith("postgresql") else None,
                heartbeat_interval=heartbeat, grace_period=2 * heartbeat + 1,
                heartbeat_stale_trial_callback=_retry_callback()(max_retry=3, inherit_intermediate_values=True))
    except Exception as exc:  # sqlalchemy/psycopg raise many types for a bad URL or server
        raise UsageError(f"--storage {redact(url)}: cannot open it ({_first_line(exc)})") from None


def _retry_callback() -> Any:
    """Optuna >= 4.9 renamed the callback that re-queues a dead worker's trial."""
    import optuna

    storages = optuna.storages
    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


def make_sampler(spec: StudySpec) -> Any:
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    if spec.sampler == "grid":
        return _grid_sampler()({k: p.grid_values() for k, p in spec.space.items()}, seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=spec.sampler_seed)


def _grid_sampler() -> Any:
    """Optuna's GridSampler without its ``after_trial``: that calls ``study.stop()``, which only
    works inside ``optimize`` (we ask and tell), and fails on the enqueued defaults trial, which
    has no grid point. The study's trial count decides when it ends."""
    import optuna

    class StudyGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return StudyGridSampler


def make_pruner(spec: StudySpec) -> Any:
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    # no pruning in the first half of a trial: DivideMix's warm-up and Co-teaching's Tk ramp
    # only show a setting's effect later; five trials finish before any is pruned
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, spec.base.config.epochs // 2))


def resolved_defaults(spec: StudySpec) -> dict[str, Any]:
    """The values a plain ``bench run`` of the base configuration uses for the tuned parameters."""
    from bench.training.trainer import Trainer

    cfg = dataclasses.replace(spec.base.config, method_options=dict(spec.base.config.method_options))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(dataclasses.replace(spec.base, config=cfg), Path(tmp)).build()
        options = dict(trainer.config.method_options)
    return {k: options[k] if k in options else getattr(cfg, k) for k in spec.space}


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while the trial runs."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a database hiccup must not end the heartbeats for good
                print(f"bench: warning: heartbeat of trial id {self.trial_id} not recorded "
                      f"({type(exc).__name__}); retrying", file=sys.stderr, flush=True)
            self.stop.wait(self.interval)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


class StudyWorker:
    """One worker of a study: starts trials until the study holds ``trials`` finished ones."""

    def __init__(self, spec: StudySpec, storage_url: str) -> None:
        self.spec, self.url = spec, storage_url
        self.storage: Any = None
        self.study: Any = None
        self.parent_run_id: str | None = None

    # --- the study and its parent run -------------------------------------------------------
    def open(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # fail_stale_trials is marked experimental; ask/tell with heartbeats is what we mean to do
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        spec = self.spec
        with study_lock(self.url):
            # under the lock: workers starting together on a fresh database would all create
            # Optuna's tables at once (PostgreSQL: "duplicate key ... pg_type_typname_nsp_index")
            self.storage = open_storage(self.url, spec.heartbeat)
            self.study = optuna.create_study(study_name=spec.name, storage=self.storage, direction="maximize",
                                             sampler=make_sampler(spec), pruner=make_pruner(spec),
                                             load_if_exists=True)
            attrs = self.study.user_attrs
            if "identity" in attrs and attrs["identity"] != _jsonable(spec.identity()):
                raise UsageError(f"--study-name {spec.name}: that study exists with another method, configuration "
                                 "or search space; continue it with the same flags or choose another name")
            if "identity" not in attrs:
                self._initialise()
            else:
                if spec.trials_given:  # a later worker may change the target; one without --trials keeps it
                    self.study.set_user_attr("trials", spec.trials)
                if not spec.experiment_given:  # log where the study's parent run is
                    spec.base.place.experiment = attrs.get("experiment", spec.base.place.experiment)
            self.parent_run_id = self.study.user_attrs["mlflow_parent_run_id"]
        self._check_parent()

    def _check_parent(self) -> None:
        """Every worker must log into the store that holds the study's parent run."""
        from bench.training.tracking import Tracker

        tracker = Tracker(self.spec.base.place.tracking_uri, self.spec.base.place.experiment)
        try:
            tracker.client.get_run(self.parent_run_id)
        except Exception:  # mlflow raises MlflowException (or a REST error for a server)
            recorded = self.study.user_attrs.get("tracking_uri")
            raise UsageError(f"study {self.spec.name}: its MLflow parent run {self.parent_run_id} is not in "
                             f"{tracker.uri}; give the tracking store it started with "
                             f"(--tracking-uri {recorded or 'default'})") from None

    def _initialise(self) -> None:
        from bench.training.tracking import Tracker

        spec, study = self.spec, self.study
        defaults = resolved_defaults(spec)  # first: a data error leaves nothing behind
        cfg, place = spec.base.config, spec.base.place
        tracker = Tracker(place.tracking_uri, place.experiment)
        run_id = tracker.start(spec.name, tags={"study": spec.name, "optuna_storage": redact(self.url),
                                                "method": cfg.method, "dataset": cfg.dataset, "role": "study"})
        where = {k: "" if v is None else str(v) for k, v in place.to_dict().items() if k != "progress"}
        tracker.log_params({**cfg.flatten(), **where, "study.params": ",".join(spec.space),
                            "study.sampler": spec.sampler, "study.pruner": spec.pruner,
                            "study.trials": spec.trials, "study.objective": "last val_acc (given labels)"})
        inside = all(spec.space[k].contains(v) for k, v in defaults.items())
        if inside:
            study.enqueue_trial(defaults, user_attrs={"role": "defaults"})
        else:
            print(f"bench: note: the defaults {defaults} lie outside the search space; the study has no "
                  "defaults trial", file=sys.stderr)
        # the identity last: it marks the study as initialised for the workers that follow
        for key, value in (("trials", spec.trials), ("mlflow_parent_run_id", run_id), ("defaults", defaults),
                           ("base_config", spec.base.saved()), ("tracking_uri", tracker.uri),
                           ("experiment", place.experiment), ("identity", spec.identity())):
            study.set_user_attr(key, _jsonable(value))

    # --- the loop -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def next_trial(self) -> tuple[Any, bool]:
        """(a new trial or None, whether the study is done). Under the study lock."""
        import optuna

        with study_lock(self.url):
            optuna.storages.fail_stale_trials(self.study)  # dead workers' trials: FAIL + re-queued
            wanted = int(self.study.user_attrs.get("trials", self.spec.trials))
            c = self.counts()
            done = sum(c.get(s, 0) for s in FINISHED_STATES)
            if done >= wanted:
                return None, True
            if done + c.get("RUNNING", 0) >= wanted:
                return None, False  # the last trials run elsewhere: wait for them (or their death)
            trial = self.study.ask()
            # a first heartbeat at once: a worker that dies before its heartbeat thread starts
            # still leaves a trial that goes stale (Optuna ignores trials with no heartbeat)
            self.storage.record_heartbeat(trial._trial_id)
            return trial, False

    def run(self) -> int:
        """Trials until the study is done (0), or until one fails with an error (1)."""
        self.open()
        while True:
            trial, done = self.next_trial()
            if done:
                self._finish_parent()
                return 0
            if trial is None:
                time.sleep(max(1, min(self.spec.heartbeat, 10)))
                continue
            if not self.run_trial(trial):
                return 1

    def _finish_parent(self) -> None:
        from bench.training.tracking import Tracker

        tracker = Tracker(self.spec.base.place.tracking_uri, self.spec.base.place.experiment)
        tracker.run_id = self.parent_run_id
        run = tracker.client.get_run(self.parent_run_id)
        if run.info.status != "FINISHED":
            tracker.end("FINISHED")
        c = self.counts()
        print(f"study {self.spec.name}: {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, "
              f"{c.get('FAIL', 0)} failed trials; report: python -m bench study-report --study-name "
              f"{self.spec.name} --storage {redact(self.url)}", flush=True)

    # --- one trial ------------------------------------------------------------------------------
    def trial_config(self, values: dict[str, Any]) -> RunSpec:
        """The base run with the trial's values; its progress as plain lines."""
        protocol, options = trial_overrides(values)
        base = self.spec.base.config
        cfg = dataclasses.replace(base, method_options={**base.method_options, **options}, **protocol)
        cfg.validate()
        place = dataclasses.replace(self.spec.base.place, progress=False)
        return dataclasses.replace(self.spec.base, config=cfg, place=place, request_hash=cfg.hash())

    def run_trial(self, trial: Any) -> bool:
        """Run one trial to its end; False when it failed (an error, not a pruning)."""
        import optuna

        role = trial.user_attrs.get("role", "search")
        label = f"trial {trial.number} ({role})"
        try:
            with Heartbeat(self.storage, trial._trial_id, self.spec.heartbeat):
                values = {name: p.suggest(trial, name) for name, p in self.spec.space.items()}
                label = label[:-1] + ": " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()) + ")"
                summary = self._train(trial, values, role)
            for key in ("last_test_acc", "best_test_acc", "best_val_acc", "wall_clock_s", "run_id"):
                if key in summary:
                    trial.set_user_attr(key, summary[key])
        except optuna.exceptions.UpdateFinishedTrialError:
            return not self._tell(trial, state=optuna.trial.TrialState.FAIL)  # declared dead: not our error
        except Exception as exc:  # a trial's error must not leave it RUNNING for ever
            self._tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"bench: error: {label} failed: {_first_line(exc)}", file=sys.stderr, flush=True)
            return False
        if summary["status"] == "diverged":  # a failed trial with its reason, never a score
            trial.set_user_attr("fail_reason", f"diverged: {summary.get('diverged', '')}")
            self._tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"{label} diverged ({summary.get('diverged', '')}): recorded as failed", flush=True)
            return True
        if summary["status"] == "pruned":
            self._tell(trial, state=optuna.trial.TrialState.PRUNED)
            print(f"{label} pruned after epoch {summary['epochs_done']}", flush=True)
            return True
        if self._tell(trial, summary["last_val_acc"]):
            print(f"{label}: val_acc {summary['last_val_acc']:.4f} test_acc {summary['last_test_acc']:.4f} "
                  f"({summary['wall_clock_s']:.0f} s)", flush=True)
        return True

    def _tell(self, trial: Any, value: float | None = None, state: Any = None) -> bool:
        """Record the trial's end; False when another worker already declared it dead (its
        heartbeat went missing) and re-queued it: then the retry's result counts instead."""
        import optuna

        try:
            self.study.tell(trial, value, state=state)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            print(f"bench: note: trial {trial.number} was failed by another worker (no heartbeat for "
                  f"{2 * self.spec.heartbeat + 1} s); its re-queued copy counts instead", file=sys.stderr, flush=True)
            return False

    def _train(self, trial: Any, values: dict[str, Any], role: str) -> dict[str, Any]:
        from bench.training.trainer import CHECKPOINT, Trainer

        cfg = self.trial_config(values)
        run_dir, resume = self._run_dir(trial)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        tags = {"mlflow.parentRunId": self.parent_run_id, "study": self.spec.name,
                "trial": str(trial.number), "role": role}

        def report(epoch: int, metrics: dict[str, float]) -> bool:
            trial.report(metrics["val_acc"], epoch + 1)
            if "val_acc_clean" in metrics:
                trial.set_user_attr("last_val_acc_clean", metrics["val_acc_clean"])
            return trial.should_prune()

        resume = resume and (run_dir / CHECKPOINT).is_file()
        if resume:  # epochs the dead worker checkpointed but did not live to report
            self._report_checkpointed(trial, run_dir / CHECKPOINT)
        trainer = Trainer(cfg, run_dir, epoch_callback=report, tags=tags)
        return trainer.run(resume=resume)

    def _report_checkpointed(self, trial: Any, path: Path) -> None:
        import torch

        try:
            history = torch.load(path, map_location="cpu", weights_only=False)["history"]
        except Exception:  # a damaged checkpoint: the trainer's resume says so in one line
            return
        reported = self.storage.get_trial(trial._trial_id).intermediate_values
        for step, value in enumerate(history.get("val_acc", []), start=1):
            if step not in reported:
                trial.report(value, step)

    def _run_dir(self, trial: Any) -> tuple[Path, bool]:
        """A retried trial (its worker died) continues the dead trial's run folder."""
        previous = trial.user_attrs.get("run_dir")
        retried = self.storage.get_trial(trial._trial_id).system_attrs.get("failed_trial") is not None
        if previous and retried and Path(previous).is_dir():
            return Path(previous), True
        path = self.spec.out / f"trial-{trial.number:04d}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True, exist_ok=False)
        return path, False


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _jsonable(value: Any) -> Any:
    """As the storage keeps it (tuples become lists), so a stored value compares equal."""
    return json.loads(json.dumps(value, default=str))


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def default_study_name(cfg: RunConfig) -> str:
    noise = "clean" if cfg.noise == "none" else f"{cfg.noise}{cfg.noise_rate:g}"
    fidelity = "-official" if cfg.fidelity == "official" else ""  # another study than the paper reading's
    return f"{cfg.method}-{cfg.dataset}-{noise}{fidelity}"


def spec_from_args(args: Any, request: dict[str, Any]) -> tuple[StudySpec, str]:
    """The study from the command line: its run options (``request``) make the base run."""
    from bench.training.catalogue import method_class
    from bench.training.resolve import resolve

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials {args.trials}: must be at least 1")
    if args.sampler not in SAMPLERS:
        raise UsageError(f"--sampler {args.sampler}: valid values are {', '.join(SAMPLERS)}")
    if args.pruner not in PRUNERS:
        raise UsageError(f"--pruner {args.pruner}: valid values are {', '.join(PRUNERS)}")
    if args.sampler_seed is not None and not 0 <= args.sampler_seed < 2**32:
        raise UsageError(f"--sampler-seed {args.sampler_seed}: must lie in [0, 2**32)")
    if args.heartbeat < 1:
        raise UsageError(f"--heartbeat {args.heartbeat}: must be at least 1 second")
    request = {"val_fraction": 0.1, **request}
    base = resolve(request, here=getattr(args, "launcher", "local") != "slurm")  # a Slurm worker checks its device
    cfg = base.config
    if cfg.val_fraction <= 0:
        raise UsageError(f"--val-fraction {cfg.val_fraction}: a study needs a validation split, e.g. 0.1")
    setting = Setting(None if cfg.noise == "none" else cfg.noise_rate, cfg.epochs)
    names = [n.strip() for n in args.params.split(",") if n.strip()] if args.params else None
    space = choose_params(method_class(cfg.method), setting, names)
    # what --set fixes; not what --fidelity official set, which a trial may tune like any default
    given = set(parse_set(request.get("sets")))
    clash = sorted(set(space) & set(cfg.method_options) & given)
    if clash:
        raise UsageError(f"--set {clash[0]}=... fixes a parameter the study tunes; drop it or leave it out of --params")
    name = args.study_name or default_study_name(cfg)
    if "experiment" not in request:
        base.place.experiment = f"study-{name}"
    trials = args.trials
    if trials is None:
        trials = 20
        if args.sampler == "grid":
            import math

            trials = math.prod(len(p.grid_values()) for p in space.values()) + 1  # + the defaults
    out = Path(base.place.out).parent / "studies" / name
    spec = StudySpec(name, base, space, trials, args.sampler, args.pruner, args.sampler_seed, args.heartbeat, out,
                     trials_given=args.trials is not None, experiment_given="experiment" in request)
    return spec, args.storage or default_storage()


def run_study(args: Any, request: dict[str, Any]) -> int:
    """``bench study``: one worker of the study the command line describes, or with
    ``--study-workers N`` / ``--launcher slurm`` N of them (:func:`launch_study_workers`)."""
    if getattr(args, "study_workers", 1) < 1:
        raise UsageError(f"--study-workers {args.study_workers}: must be at least 1")
    spec, url = spec_from_args(args, request)
    check_storage_url(url)
    slurm = slurm_options(args)
    if args.study_workers > 1 or slurm is not None:
        return launch_study_workers(args, request, spec, url, slurm)
    print(f"study {spec.name}: {spec.base.config.method} on {spec.base.config.dataset}, tuning "
          f"{', '.join(spec.space)}; {spec.trials} trials in {redact(url)}", flush=True)
    return StudyWorker(spec, url).run()


def study_argv(args: Any, request: dict[str, Any], name: str, storage: str) -> list[str]:
    """A study worker's command line (``bench study``, the launcher's own flags left out), with
    the study's name and storage spelt out so that every worker opens the same study."""
    from bench.training.resolve import to_argv

    run = {k: v for k, v in request.items() if k != "progress"}  # a worker's progress: lines in its log
    argv = ["study", *to_argv(run), "--study-name", name, "--storage", storage, "--sampler", args.sampler,
            "--pruner", args.pruner, "--heartbeat", str(args.heartbeat)]
    for flag, value in (("--params", args.params), ("--trials", args.trials), ("--sampler-seed", args.sampler_seed)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def launch_study_workers(args: Any, request: dict[str, Any], spec: StudySpec, storage: str,
                         opts: SlurmOptions | None) -> int:
    """``bench study --study-workers N [--launcher slurm]``: N workers of one study, as N child
    processes here (their cores shared out) or, with ``opts``, as an N-task job array."""
    from bench.drivers.slurm import CommandJob, JobBook, Task, job_name, submit, wait_for

    n, name = args.study_workers, spec.name
    argv = study_argv(args, request, name, storage)
    if opts is None:
        procs = [CommandJob(argv, f"study worker {k + 1}").start(max(1, (os.cpu_count() or 1) // n))
                 for k in range(n)]
        codes = [p.wait() for p in procs]
        print(f"study {name}: {n} workers done" + (f", exit codes {codes}" if any(codes) else ""), flush=True)
        return 1 if any(codes) else 0
    folder = (spec.out / "slurm").resolve()
    jname = job_name("study", name)
    jobs = submit([Task(CommandJob(argv, f"study {name} worker {k + 1}")) for k in range(n)], folder, jname, opts)
    JobBook(folder).add({f"worker-{k + 1}": {"job": j, "name": jname} for k, j in enumerate(jobs)})
    print(f"study {name}: {n} workers submitted to Slurm as job {jobs[0].split('_')[0]} (logs in {folder})",
          flush=True)
    if not opts.wait:
        print(f"watch: squeue --me --name={jname}; report: python -m bench study-report --study-name {name} "
              f"--storage {storage}", flush=True)
        return 0
    wait_for(jobs, jname, lambda job, state: print(f"job {job}: {state or 'left the queue'}", flush=True))
    counts, wanted = study_counts(storage, name, spec.trials)
    done = sum(counts.get(s, 0) for s in FINISHED_STATES)
    print(f"study {name}: {done} of {wanted} trials finished (" + ", ".join(
        f"{v} {k.lower()}" for k, v in sorted(counts.items())) + ")", flush=True)
    return 0 if done >= wanted else 1


def study_counts(url: str, name: str, trials: int) -> tuple[dict[str, int], int]:
    """The study's trials per state, and the finished trials it wants (``trials`` unless the
    study says otherwise; no trials where no worker created the study)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, 30))
    except KeyError:
        return {}, trials
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts, int(study.user_attrs.get("trials", trials))
