"""``python -m bench sweep``: a grid of methods x noise settings x seeds, run as separate
``bench run`` processes, resumable and shardable.

- Every run of the grid gets the sweep's other ``bench run`` options (``--preset``,
  ``--subset``, ``--set`` ...). A run is recognised by the hash of its requested configuration
  (the ``request_hash`` tag ``bench run`` logs): a sweep started again skips the runs that
  finished in the experiment and resumes the interrupted ones from their checkpoints, so
  stopping and restarting a sweep neither loses nor repeats work.
- ``--workers K`` runs K runs at once: on CPU each gets cores / K threads; on several GPUs
  each run gets one GPU (``CUDA_VISIBLE_DEVICES``), round robin.
- ``--shard I/N`` keeps the grid points whose position modulo N is I - 1: N jobs of a job
  array cover the grid, disjointly, with no coordinator (they share an MLflow server through
  ``--tracking-uri``).
- ``--launcher slurm`` submits the points to run as one Slurm job array instead
  (:mod:`bench.drivers.slurm`): one task per point, each the same ``bench run`` command line,
  requeued and resumed when Slurm warns of its time limit or preempts it. ``--status`` then
  adds the queue's states (queued, running) to MLflow's.
- ``--preset paper`` (or ``paper-vit``) expands to the IDO paper's protocol and noise grid for
  the data set (the paper's tables): e.g. CIFAR-100 sym 20/40/60, asym 40, instance 40.
- ``--views shared,official`` makes the view policy a dimension of the grid for the methods
  with views of their own (IDO, DivideMix); the others run once, their batches being the same
  under both policies.
- ``--fidelity paper,official`` does the same for the paper's or the official code's reading,
  for the methods that name official options (``Method.official_options``); the others run
  once, under the first value given.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.errors import EXIT_DIVERGED, UsageError
from bench.drivers.slurm import (
    QUEUED,
    RUNNING,
    JobBook,
    SlurmOptions,
    Task,
    child_env,
    job_name,
    queue_states,
    slurm_options,
    submit,
    wait_for,
)

# The IDO paper's noise grid per benchmark (its tables; README of the official code)
PAPER_NOISE = {
    "cifar100": "sym:0.2,sym:0.4,sym:0.6,asym:0.4,instance:0.4",
    "cifar10": "sym:0.2,sym:0.4,sym:0.6,asym:0.4,instance:0.4",
    "tiny-imagenet": "sym:0.2,sym:0.5,instance:0.4",
    "cifar100n": "none", "clothing1m": "none", "webvision": "none", "food101n": "none",
}


@dataclass(frozen=True)
class GridPoint:
    method: str
    noise: str
    rate: float
    seed: int
    views: str | None = None  # the view policy, when the sweep varies it
    fidelity: str | None = None  # paper or official, when the sweep varies it

    @property
    def label(self) -> str:
        noise = "none" if self.noise == "none" else f"{self.noise}:{self.rate:g}"
        views = f" views {self.views}" if self.views else ""
        fidelity = f" fidelity {self.fidelity}" if self.fidelity else ""
        return f"{self.method} {noise} seed {self.seed}{views}{fidelity}"

    def request(self, base: dict[str, Any]) -> dict[str, Any]:
        """The run's request: the sweep's own run options and this point's method, noise, seed
        (and view policy, and fidelity)."""
        point = {"method": self.method, "noise": self.noise, "seed": self.seed}
        if self.views:
            point["views"] = self.views
        if self.fidelity:
            point["fidelity"] = self.fidelity
        return {**base, **point, **({"noise_rate": self.rate} if self.noise != "none" else {})}


def parse_list(flag: str, text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageError(f"{flag}: give a comma-separated list")
    return items


def parse_noise(text: str) -> list[tuple[str, float]]:
    """``sym:0.2,pairflip:0.4,none`` -> [(model, rate)]."""
    out = []
    for item in parse_list("--noise", text):
        model, _, rate = item.partition(":")
        if model == "none":
            out.append(("none", 0.0))
            continue
        try:
            out.append((model, float(rate)))
        except ValueError:
            raise UsageError(f"--noise {item}: expected MODEL:RATE (e.g. sym:0.4) or none") from None
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in parse_list("--seeds", text)]
    except ValueError:
        raise UsageError(f"--seeds {text}: expected integers, e.g. 1,2,3") from None


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 1, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: expected I/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise UsageError(f"--shard {text}: I must lie in [1, N]")
    return i, n


def expand(methods: list[str], noises: list[tuple[str, float]], seeds: list[int],
           views: dict[str, list[str | None]] | None = None,
           fidelity: dict[str, list[str | None]] | None = None) -> list[GridPoint]:
    """The grid in a fixed order: seed, then noise, then method, then view policy, then fidelity
    (so the first runs of a sweep already give one seed of every cell). ``views``: the policies
    per method; ``fidelity``: the readings per method."""
    return [GridPoint(m, n, r, s, v, f) for s in seeds for n, r in noises for m in methods
            for v in (views or {}).get(m, [None]) for f in (fidelity or {}).get(m, [None])]


def view_policies(text: str | None, methods: list[str]) -> dict[str, list[str | None]]:
    """``--views shared,official``: both policies for the methods with views of their own, and
    one run for the others, whose batches are the same under both (the first policy given)."""
    if text is None or "," not in text:
        return {}
    from bench.training.catalogue import catalogue
    from bench.training.config import VIEW_POLICIES

    policies = parse_list("--views", text)
    bad = [p for p in policies if p not in VIEW_POLICIES]
    if bad:  # before any run starts (each point's run would refuse it, one by one)
        raise UsageError(f"--views {','.join(bad)}: valid values are {', '.join(VIEW_POLICIES)}")
    return {m: policies if catalogue().methods.get(m).views else policies[:1] for m in methods}


def fidelity_levels(text: str | None, methods: list[str]) -> dict[str, list[str | None]]:
    """``--fidelity paper,official``: both readings for the methods that name official options,
    and one run for the others, which both leave the same (the first reading given)."""
    if text is None or "," not in text:
        return {}
    from bench.training.catalogue import catalogue
    from bench.training.config import FIDELITIES

    levels = parse_list("--fidelity", text)
    bad = [x for x in levels if x not in FIDELITIES]
    if bad:  # checked here: a method that runs once never resolves the later values
        raise UsageError(f"--fidelity {bad[0]}: valid values are {', '.join(FIDELITIES)}")
    return {m: levels if catalogue().methods.get(m).official else levels[:1] for m in methods}


def shard(points: list[GridPoint], i: int, n: int) -> list[GridPoint]:
    return [p for k, p in enumerate(points) if k % n == i - 1]


def cpu_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


class Sweep:
    """Runs the grid points not yet finished, K at a time."""

    def __init__(self, points: list[GridPoint], base: dict[str, Any], tracking_uri: str, experiment: str,
                 workers: int, log_dir: Path, hours_per_run: float | None = None,
                 slurm: SlurmOptions | None = None) -> None:
        self.points, self.base, self.uri, self.experiment = points, base, tracking_uri, experiment
        self.workers, self.log_dir, self.hours_per_run = workers, log_dir, hours_per_run
        self.slurm = slurm  # None: the local launcher
        self.slurm_dir = (log_dir / "slurm").resolve()
        self.specs: dict[GridPoint, Any] = {}
        self.lock = threading.Lock()
        self.results: dict[GridPoint, str] = {}

    def request_hash(self, point: GridPoint, checked: bool = True) -> str:
        """The point's hash, its run checked as :func:`~bench.training.resolve.check` does before
        it is started or submitted (under Slurm without the device, which is the compute node's).
        ``checked=False``: its values alone, which is all the hash needs (no data root, no torch,
        no method module): for a look at the store, or where the run checks itself."""
        from bench.training.resolve import resolve, resolve_values

        request = point.request(self.base)
        spec = resolve(request, here=self.slurm is None) if checked else resolve_values(request)
        self.specs[point] = spec
        return spec.request_hash

    def runs(self, hashes: dict[GridPoint, str]) -> dict[str, list[dict[str, Any]]]:
        """The experiment's runs of these points, by request hash (one MLflow query)."""
        from bench.training.tracking import runs_by_tag

        return runs_by_tag(self.uri, self.experiment, "request_hash", set(hashes.values()))

    def state(self, hashes: dict[GridPoint, str], runs: dict[str, list[dict[str, Any]]]
              ) -> dict[GridPoint, tuple[str, str | None]]:
        """Per point: ('finished', None), ('resume', run_dir) or ('new', None). A diverged run
        (bench/training/health.py) is an outcome, as a finished one: it is not run again."""
        out = {}
        for point, h in hashes.items():
            mine = runs.get(h, [])
            if any(r["status"] == "FINISHED" or _diverged(r) for r in mine):
                out[point] = ("finished", None)
                continue
            resumable = [r for r in mine if r["run_dir"] and (Path(r["run_dir"]) / "checkpoint.pt").is_file()]
            out[point] = ("resume", resumable[-1]["run_dir"]) if resumable else ("new", None)
        return out

    def command(self, point: GridPoint, action: str, run_dir: str | None) -> list[str]:
        """The point's `bench run` command line (as a user could type it; its log's first line)."""
        from bench.training.resolve import to_argv

        base = [sys.executable, "-m", "bench", "run", "--progress", "lines"]
        if action == "resume":
            return [*base, "--resume", str(run_dir), "--tracking-uri", self.uri]
        request = {**point.request(self.base), "tracking_uri": self.uri, "experiment": self.experiment}
        return [*base, *to_argv(request)]

    def plan(self, todo: list[GridPoint]) -> None:
        """``--dry-run``: the runs to do per method, and their GPU-hours (:mod:`bench.drivers.estimate`)."""
        from bench.drivers.estimate import TRAIN_IMAGES, Run, grid_hours, hours_text

        per_method: dict[str, int] = {}
        runs = []
        for p in todo:
            per_method[p.method] = per_method.get(p.method, 0) + 1
            cfg = self.specs[p].config
            runs.append(Run(p.method, cfg.backbone, cfg.epochs, cfg.subset or TRAIN_IMAGES.get(cfg.dataset)))
        print("to run, per method: " + (", ".join(f"{m} {n}" for m, n in per_method.items()) or "none"), flush=True)
        if runs:
            print("estimate: " + hours_text(*grid_hours(runs, self.hours_per_run)), flush=True)

    def env(self, slot: int) -> dict[str, str]:
        """The local launcher's run in ``slot``: one GPU each where there are several, else an
        equal share of the cores."""
        gpus = _gpu_count()
        if gpus > 1:
            return child_env(gpu=str(slot % gpus))
        return child_env(threads=cpu_threads(self.workers))

    def start(self, point: GridPoint, action: str, run_dir: str | None, env: dict[str, str],
              **popen: Any) -> subprocess.Popen:
        """The point's ``bench run``, started; its command line, then its output, appended to its log."""
        log = self.log_of(point, self.specs[point].request_hash)
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.command(point, action, run_dir)
        with open(log, "a") as f:
            print("$ " + " ".join(command[1:]), file=f, flush=True)
            return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, **popen)

    def log_of(self, point: GridPoint, request_hash: str) -> Path:
        """The point's log: its label and the first 8 characters of its request hash. The hash
        tells apart what the label does not, and several sweeps write into one experiment's
        folder: a reproduction's data sets and CIFAR-N label sets (one sweep each, at once under
        Slurm), a sweep again with other epochs."""
        return self.log_dir / (self._stem(point) + f"-{request_hash[:8]}.log")

    def _stem(self, point: GridPoint) -> str:
        return point.label.replace(" ", "_").replace(":", "")

    def log_to_read(self, point: GridPoint, request_hash: str) -> Path:
        """:meth:`log_of`, or the label-only log a sweep of before the hashed names wrote."""
        log = self.log_of(point, request_hash)
        legacy = self.log_dir / (self._stem(point) + ".log")
        return legacy if not log.is_file() and legacy.is_file() else log

    def queue(self, hashes: dict[GridPoint, str]) -> dict[GridPoint, tuple[str, str]]:
        """Per point submitted to Slurm: (its job id, its squeue state, '' once it has left the
        queue). Empty where nothing was submitted or squeue cannot be asked."""
        book = JobBook(self.slurm_dir).read()
        mine = {p: book[h] for p, h in hashes.items() if h in book}
        states: dict[str, str] = {}
        for name in {e["name"] for e in mine.values()}:
            found = queue_states(name)
            if found is None:
                return {}
            states.update(found)
        return {p: (e["job"], states.get(e["job"], "")) for p, e in mine.items()}

    def statuses(self, hashes: dict[GridPoint, str], runs: dict[str, list[dict[str, Any]]],
                 queue: dict[GridPoint, tuple[str, str]] | None = None) -> dict[GridPoint, tuple[str, str]]:
        """Per point: (finished | queued | running | failed | not started, detail): its last run's
        MLflow status and its Slurm job's queue state, and for a failure the last error line of
        its log (a run refused before it started has a log and no MLflow run)."""
        out = {}
        for point, h in hashes.items():
            mine, log = runs.get(h, []), self.log_to_read(point, h)
            job, state = (queue or {}).get(point, ("", ""))
            if any(r["status"] == "FINISHED" for r in mine):
                out[point] = ("finished", "")
            elif any(_diverged(r) for r in mine):
                out[point] = ("diverged", next(r["health_detail"] or "" for r in mine if _diverged(r)))
            elif state in QUEUED:
                out[point] = ("queued", f"Slurm job {job} ({state.lower()})")
            elif state in RUNNING:
                out[point] = ("running", f"Slurm job {job}" + (f", {mine[-1]['run_dir']}" if mine else ""))
            elif mine and mine[-1]["status"] == "RUNNING" and job:  # its job is gone: it died with it
                out[point] = ("failed", f"Slurm job {job} ended with its run unfinished: {last_error(log)}")
            elif mine and mine[-1]["status"] == "RUNNING":
                out[point] = ("running", mine[-1]["run_dir"] or "")
            elif mine or log.is_file():
                out[point] = ("failed", last_error(log))
            elif job:  # its task ended before it could start the run (its submitit log says why)
                out[point] = ("failed", f"Slurm job {job}: {last_error(self.slurm_dir / f'{job}_0_log.out')}")
            else:
                out[point] = ("not started", "")
        return out

    def status(self) -> int:
        """``--status``: every point's state, then the counts (a quick look: the points' values
        give their hashes; nothing of a run is checked or imported)."""
        hashes = {p: self.request_hash(p, checked=False) for p in self.points}
        states = self.statuses(hashes, self.runs(hashes), self.queue(hashes))
        for p in self.points:
            state, detail = states[p]
            print(f"{state:<12} {p.label}" + (f": {detail}" if detail else ""), flush=True)
        counts = {s: sum(v[0] == s for v in states.values())
                  for s in ("finished", "diverged", "queued", "running", "failed", "not started")}
        print(f"{len(self.points)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()
                                                      if n or s not in ("queued", "diverged")), flush=True)
        return 0

    def run(self, dry_run: bool = False, retry_failed: bool = False) -> int:
        hashes = {p: self.request_hash(p) for p in self.points}
        runs = self.runs(hashes)
        state = self.state(hashes, runs)
        queue = self.queue(hashes) if self.slurm is not None or retry_failed else {}
        if retry_failed:  # only the points that failed; the others are left as they are
            failed = {p for p, (s, _) in self.statuses(hashes, runs, queue).items() if s == "failed"}
            state = {p: (a, d) if p in failed else ("finished", None) for p, (a, d) in state.items()}
        # a point whose Slurm job is still queued or running is not submitted twice
        waiting = {p: job for p, (job, s) in queue.items() if s in QUEUED | RUNNING and state[p][0] != "finished"}
        todo = [p for p in self.points if state[p][0] != "finished" and p not in waiting]
        for p in self.points:
            action = state[p][0]
            action = f"in Slurm job {waiting[p]}" if p in waiting else action
            print(f"{'skip (finished)' if action == 'finished' else action:<16} {p.label}", flush=True)
        print(f"{len(self.points)} runs in this share of the grid: {len(self.points) - len(todo) - len(waiting)} "
              f"finished, " + (f"{len(waiting)} in the Slurm queue, " if waiting else "")
              + f"{sum(state[p][0] == 'resume' for p in todo)} to resume, "
              f"{sum(state[p][0] == 'new' for p in todo)} to start", flush=True)
        if dry_run:
            self.plan(todo)
        if self.slurm is not None and not dry_run and (todo or (waiting and self.slurm.wait)):
            return self.submit(todo, hashes, waiting)
        if dry_run or not todo:
            return 0
        self.log_dir.mkdir(parents=True, exist_ok=True)
        slots = list(range(self.workers))

        def one(point: GridPoint) -> str:
            with self.lock:
                slot = slots.pop(0)
            try:
                action, run_dir = state[point]
                code = self.start(point, action, run_dir, self.env(slot)).wait()
                status = ("finished" if code == 0 else "diverged" if code == EXIT_DIVERGED
                          else f"failed (exit {code}, log {self.log_of(point, self.specs[point].request_hash)})")
                print(f"{status:<16} {point.label}", flush=True)
                return status
            finally:
                with self.lock:
                    slots.append(slot)

        with ThreadPoolExecutor(self.workers) as pool:
            statuses = list(pool.map(one, todo))
        return self.outcome(todo, ["failed" if s.startswith("failed") else s for s in statuses])

    def outcome(self, points: list[GridPoint], states: list[str], details: dict[GridPoint, str] | None = None) -> int:
        """The sweep's last lines: the diverged and failed points, then the counts; 1 if any failed
        (a diverged run is an outcome, listed, not a failure of the sweep)."""
        for kind in ("diverged", "failed"):
            for p, s in zip(points, states, strict=True):
                if s == kind:
                    print(f"{kind:<16} {p.label}" + (f": {details[p]}" if details and details.get(p) else ""),
                          flush=True)
        n = {k: states.count(k) for k in ("finished", "diverged", "failed")}
        print(f"sweep done: {n['finished']} runs finished, " + (f"{n['diverged']} diverged, " if n["diverged"] else "")
              + f"{n['failed']} failed", flush=True)
        return 1 if n["failed"] else 0

    def submit(self, todo: list[GridPoint], hashes: dict[GridPoint, str], waiting: dict[GridPoint, str]) -> int:
        """``--launcher slurm``: the points to run as one job array; with ``--wait``, the outcome
        of those and of the points already in the queue (``waiting``: their jobs)."""
        assert self.slurm is not None
        name = job_name("sweep", self.experiment)
        job_of = dict(waiting)
        if todo:
            tasks = [Task(PointJob(p, self.base, self.uri, self.experiment, str(self.log_dir.resolve())))
                     for p in todo]
            jobs = submit(tasks, self.slurm_dir, name, self.slurm)
            job_of.update(zip(todo, jobs, strict=True))
            JobBook(self.slurm_dir).add({hashes[p]: {"job": job_of[p], "name": name, "label": p.label} for p in todo})
            print(f"submitted {len(todo)} runs to Slurm as job {jobs[0].split('_')[0]} ({name}; logs in "
                  f"{self.slurm_dir})", flush=True)
        if not self.slurm.wait:
            print("watch them: the same command with --status (or squeue --me --name=" + name + ")", flush=True)
            return 0
        label = {j: p.label for p, j in job_of.items()}
        wait_for(list(label), name, lambda job, s: print(f"{s.lower() or 'left the queue':<16} {label[job]} "
                                                         f"(job {job})", flush=True))
        states = self.statuses({p: hashes[p] for p in job_of}, self.runs(hashes))
        points = list(job_of)
        kinds = [states[p][0] if states[p][0] in ("finished", "diverged") else "failed" for p in points]
        return self.outcome(points, kinds, {p: states[p][1] for p in points})


@dataclass
class PointJob:
    """A Slurm task's child (:class:`bench.drivers.slurm.Task`): one grid point's ``bench run``,
    new or resumed from its checkpoint as MLflow says when the task starts (so a requeued task
    continues its run), or nothing if another task already finished it."""

    point: GridPoint
    base: dict[str, Any]
    uri: str
    experiment: str
    log_dir: str

    def sweep(self) -> Sweep:
        return Sweep([self.point], self.base, self.uri, self.experiment, 1, Path(self.log_dir))

    def start(self, threads: int, **popen: Any) -> subprocess.Popen | None:
        sweep = self.sweep()
        # the hash alone: the run checks the rest when it starts, and this process, which waits
        # for it on the compute node, need not hold torch and the method (seconds, and memory)
        hashes = {self.point: sweep.request_hash(self.point, checked=False)}
        action, run_dir = sweep.state(hashes, sweep.runs(hashes))[self.point]
        if action == "finished":
            return None
        return sweep.start(self.point, action, run_dir, child_env(threads=threads), **popen)

    def failure(self, code: int) -> str:
        sweep = self.sweep()
        log = sweep.log_to_read(self.point, sweep.request_hash(self.point, checked=False))
        return f"{self.point.label}: exit {code}: {last_error(log)} (log {log})"


def _diverged(run: dict[str, Any]) -> bool:
    from bench.training.health import DIVERGED

    return run.get("health") == DIVERGED


def last_error(log: Path) -> str:
    """The last error line of a run's log (``bench: error: ...``, an exception), else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("bench: error") or "Error" in line.split(":")[0]]
    return (errors or lines or ["empty log"])[-1][:300]


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - no torch CUDA runtime
        return 0


def sweep_points(args: Any) -> list[GridPoint]:
    from bench.training.catalogue import catalogue

    methods = [catalogue().methods.canonical(m) for m in parse_list("--methods", args.methods)]
    noise = args.noise
    if args.preset in ("paper", "paper-vit"):
        if not args.dataset or args.dataset not in PAPER_NOISE:
            raise UsageError(f"--preset {args.preset} needs --dataset, one of {', '.join(PAPER_NOISE)}")
        noise = noise or PAPER_NOISE[args.dataset]
    if not noise:
        raise UsageError("--noise is required: a list like sym:0.2,sym:0.4,pairflip:0.4 (or none)")
    return expand(methods, parse_noise(noise), parse_seeds(args.seeds), view_policies(args.views, methods),
                  fidelity_levels(getattr(args, "fidelity", None), methods))


def run_sweep(args: Any, base: dict[str, Any]) -> int:
    """``bench sweep``: ``base`` is the request every run shares (the command line's run options)."""
    from bench.training.tracking import store_uri

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    points = shard(sweep_points(args), *parse_shard(args.shard))
    own = {"method", "noise", "noise_rate", "seed", "tracking_uri", "experiment"}
    if args.views and "," in args.views:  # a dimension of the grid, not a run option
        own.add("views")
    if "," in (getattr(args, "fidelity", None) or ""):  # likewise
        own.add("fidelity")
    base = {k: v for k, v in base.items() if k not in own}
    uri = store_uri(args.tracking_uri)
    log_dir = Path(base.get("out", "results/runs")).parent / "sweeps" / args.experiment
    hours = getattr(args, "hours_per_run", None)
    if hours is not None and not hours > 0:
        raise UsageError(f"--hours-per-run {hours}: must be a positive number of hours")
    slurm = slurm_options(args)
    if slurm is not None and args.workers != 1:
        raise UsageError(f"--workers {args.workers}: runs at once on this machine; under --launcher slurm the "
                         "array's tasks run at once as the cluster allows (cap them with --slurm-parallelism)")
    sweep = Sweep(points, base, uri, args.experiment, args.workers, log_dir, hours, slurm)
    if getattr(args, "status", False):
        return sweep.status()
    return sweep.run(args.dry_run, retry_failed=getattr(args, "retry_failed", False))
