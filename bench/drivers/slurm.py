"""``--launcher slurm``: a sweep's grid points, or a study's workers, as one Slurm job array
submitted through submitit (https://github.com/facebookincubator/submitit), the library FAIR's
research code and Hydra's Slurm launcher use.

- Each array task runs one child process: a grid point's ``bench run`` (the command line the
  local launcher runs, so hashes and metrics are the same), or one ``bench study`` worker. The
  task decides when it starts whether its point is new, to be resumed from its checkpoint, or
  already finished (from MLflow, by the point's configuration hash), so a task started again
  after a requeue continues where its run stopped.
- Time limits and preemption: submitit asks Slurm for ``--signal=USR2@90`` (USR2 90 s before
  the time limit; a cluster's preemption sends it too) and calls :meth:`Task.checkpoint` on
  it: the child is stopped as by Ctrl-C (its last finished epoch is checkpointed at every
  epoch's end, the MLflow run is marked KILLED) and the task is requeued (``scontrol requeue``),
  at most ``--slurm-max-requeues`` times for time limits. The child ignores USR2, which Slurm
  sends to every process of the job step: it is the task that decides when the child stops.
  An administrator's ``scontrol requeue`` or a preemption that requeues without USR2 sends
  SIGTERM, which the child takes as Ctrl-C too; the requeued task resumes as above. The epoch
  in progress is done again from its start, from the same state, so the run ends with the
  metrics of an uninterrupted one.
- Queue states come from ``squeue`` (which needs no accounting database, unlike ``sacct``):
  the job of each submitted point is recorded in ``<folder>/jobs.json``.
- Job logs (submitit's) go to ``results/sweeps/<experiment>/slurm/`` (sweeps) or
  ``results/studies/<name>/slurm/`` (studies); a grid point's own ``bench run`` log stays beside
  the local launcher's, in ``results/sweeps/<experiment>/``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.errors import EXIT_DIVERGED, UsageError

LAUNCHERS = ("local", "slurm")
# squeue's states of a job that has not started (or waits to start again) and of one that runs
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED",
          "SPECIAL_EXIT", "RESIZING", "SIGNALING", "STAGE_OUT"}
RUNNING = {"RUNNING", "COMPLETING"}
STOP_WAIT_S = 60  # how long a child has to stop after SIGTERM before it is killed
POLL_S = 2.0  # --wait: seconds between two squeue calls


@dataclass(frozen=True)
class SlurmOptions:
    """The ``--slurm-*`` flags: what every task of the job array asks for."""

    partition: str | None = None
    time_min: int = 240  # --slurm-time: 4 h fits most partitions; a longer run is requeued, not lost
    gpus: int = 1  # per task
    cpus: int | None = None  # per task (the cluster's default when None); the child's threads
    mem: str | None = None  # per task, as sbatch --mem takes it (e.g. 32G)
    parallelism: int | None = None  # tasks of the array running at once
    setup: tuple[str, ...] = ()  # shell lines run before each task (module load, venv activation)
    extra: tuple[tuple[str, str], ...] = ()  # further sbatch options, KEY=VALUE
    max_requeues: int = 10  # requeues after a time limit (preemptions do not count)
    wait: bool = False  # block until the array's tasks have left the queue


# flag -> (dest, default): the flags that make sense only with --launcher slurm
SLURM_ARGS = {"--slurm-partition": ("slurm_partition", None), "--slurm-time": ("slurm_time", None),
              "--slurm-gpus": ("slurm_gpus", None), "--slurm-cpus": ("slurm_cpus", None),
              "--slurm-mem": ("slurm_mem", None), "--slurm-parallelism": ("slurm_parallelism", None),
              "--slurm-setup": ("slurm_setup", None), "--slurm-extra": ("slurm_extra", None),
              "--slurm-max-requeues": ("slurm_max_requeues", None), "--wait": ("wait", False)}


def parse_time(text: str) -> int:
    """Slurm's time formats (sbatch --time) in minutes, rounded up: MM, MM:SS, HH:MM:SS, D-HH,
    D-HH:MM, D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UsageError(f"--slurm-time {text}: expected minutes or Slurm's [D-]HH:MM:SS (e.g. 240, 4:00:00, 1-12)")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds <= 0:
        raise UsageError(f"--slurm-time {text}: must be more than zero")
    return -(-seconds // 60)


def slurm_options(args: Any) -> SlurmOptions | None:
    """The launcher the command line asks for: None for the local one (today's in-process
    ``--workers``), else the checked Slurm options. A ``--slurm-*`` flag without
    ``--launcher slurm`` is refused rather than ignored."""
    launcher = getattr(args, "launcher", "local") or "local"
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher}: valid values are {', '.join(LAUNCHERS)}")
    if launcher == "local":
        given = [flag for flag, (dest, default) in SLURM_ARGS.items() if getattr(args, dest, default) != default]
        if given:
            raise UsageError(f"{given[0]}: only with --launcher slurm")
        return None
    for flag, dest, low in (("--slurm-gpus", "slurm_gpus", 0), ("--slurm-cpus", "slurm_cpus", 1),
                            ("--slurm-parallelism", "slurm_parallelism", 1),
                            ("--slurm-max-requeues", "slurm_max_requeues", 0)):
        value = getattr(args, dest, None)
        if value is not None and value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if getattr(args, "device", None) == "cuda" and getattr(args, "slurm_gpus", None) == 0:
        # the device is checked on the compute node (its login node need have none): this one is
        # known to fail there already
        raise UsageError("--device cuda with --slurm-gpus 0: the tasks would have no GPU; give --slurm-gpus N, "
                         "or --device cpu or auto")
    mem = getattr(args, "slurm_mem", None)
    if mem is not None and not re.fullmatch(r"\d+[KMGT]?", mem):
        raise UsageError(f"--slurm-mem {mem}: expected a size as sbatch --mem takes it, e.g. 32G or 16000M")
    extra = []
    for item in getattr(args, "slurm_extra", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]*", key.strip()):
            raise UsageError(f"--slurm-extra {item}: expected KEY=VALUE with an sbatch option's long name, "
                             "e.g. account=myproject, qos=high, constraint=h100")
        extra.append((key.strip().replace("-", "_"), value.strip()))
    time_text = getattr(args, "slurm_time", None)
    defaults = SlurmOptions()
    return SlurmOptions(
        partition=getattr(args, "slurm_partition", None),
        time_min=parse_time(time_text) if time_text else defaults.time_min,
        gpus=defaults.gpus if getattr(args, "slurm_gpus", None) is None else args.slurm_gpus,
        cpus=getattr(args, "slurm_cpus", None), mem=mem, parallelism=getattr(args, "slurm_parallelism", None),
        setup=tuple(getattr(args, "slurm_setup", None) or ()), extra=tuple(extra),
        max_requeues=(defaults.max_requeues if getattr(args, "slurm_max_requeues", None) is None
                      else args.slurm_max_requeues),
        wait=bool(getattr(args, "wait", False)))


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def child_env(threads: int | None = None, gpu: str | None = None) -> dict[str, str]:
    """A child's environment: this one, the project on PYTHONPATH (wherever the child starts),
    ``threads`` intra-op threads and the GPU it may use, where given."""
    env = dict(os.environ)
    root = str(project_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def task_threads() -> int:
    """Inside a task: the CPUs Slurm gave it (``--slurm-cpus``), else one."""
    try:
        return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    except ValueError:
        return 1


def _ignore_preempt_signal() -> None:  # in the child, before exec: the task decides when it stops
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signal.signal(getattr(signal, name, signal.SIGUSR2), signal.SIG_IGN)


class Task:
    """One array task: runs ``job.start(threads)``'s child to its end; when submitit relays
    Slurm's warning (time limit, preemption) it stops the child cleanly and is requeued as a
    fresh copy of itself, which works out again what its job has left to do."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def __call__(self) -> str:
        self.proc = self.job.start(task_threads(), preexec_fn=_ignore_preempt_signal)
        if self.proc is None:
            return "already finished"
        code = self.proc.wait()
        if code == EXIT_DIVERGED:  # an outcome (bench/training/health.py), not the task's failure
            return "diverged"
        if code != 0:  # the job's error line; submitit keeps it in the task's result
            raise RuntimeError(self.job.failure(code))
        return "finished"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on the preemption/time-limit signal: the child saves nothing more
        (its last epoch is checkpointed) but is stopped as by Ctrl-C, so its MLflow run says
        KILLED; then the task is requeued."""
        from submitit.helpers import DelayedSubmission

        self.stop()
        return DelayedSubmission(Task(self.job))

    def stop(self) -> None:
        """SIGTERM to the child (once), then wait for it to end (killed after ``STOP_WAIT_S``).
        This runs in a signal handler, on top of ``Popen.wait``, which holds the Popen's lock
        while it waits, and maybe on top of a first call (Slurm may signal twice): so no Popen
        method is called here, only the system's kill and waitpid."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if not self.stopping:
            self.stopping = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while True:
            try:
                if os.waitpid(proc.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:  # reaped already
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.2)

    def __getstate__(self) -> dict[str, Any]:  # pickled by submitit: never the child process
        return {"job": self.job, "proc": None, "stopping": False}


@dataclass
class CommandJob:
    """A task's child: a fixed ``bench`` command line (a study worker), its output in the task's log."""

    argv: list[str]
    label: str

    def start(self, threads: int, **popen: Any) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bench", *self.argv], env=child_env(threads),
                                cwd=os.getcwd(), **popen)

    def failure(self, code: int) -> str:
        return f"{self.label} exited with {code}"


def check_slurm() -> None:
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise UsageError("--launcher slurm: no sbatch/squeue on PATH; run on a Slurm login node (or load its module), "
                         "or use --launcher local")


def job_name(kind: str, name: str) -> str:
    return f"bench-{kind}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


def submit(tasks: Sequence[Task], folder: Path, name: str, opts: SlurmOptions) -> list[str]:
    """Submit ``tasks`` as one job array (one job when there is one task); their job ids
    (``ARRAY_TASK`` form for arrays)."""
    import submitit

    check_slurm()
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues)
    extra: dict[str, Any] = {"requeue": True, **dict(opts.extra)}
    params: dict[str, Any] = {
        "job_name": name, "time": opts.time_min, "partition": opts.partition, "cpus_per_task": opts.cpus,
        "gpus_per_node": opts.gpus or None, "mem": opts.mem, "stderr_to_stdout": True,
        "setup": [f"export PYTHONPATH={shlex.quote(str(project_root()))}${{PYTHONPATH:+:$PYTHONPATH}}", *opts.setup],
        "additional_parameters": extra}
    if opts.parallelism:
        params["array_parallelism"] = opts.parallelism
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:
        jobs = executor.submit_array(list(tasks))
    except Exception as exc:  # sbatch's refusal (unknown partition, time over the limit ...)
        text = " ".join(str(exc).split())
        found = re.findall(r"sbatch: error: ([^\n]+?)(?= sbatch: |$)", text)
        raise UsageError(f"--launcher slurm: sbatch refused the job: {found[-1] if found else text[-300:]}") from None
    return [str(j.job_id) for j in jobs]


def queue_states(name: str) -> dict[str, str] | None:
    """{job id: squeue state} of this user's jobs named ``name``, one line per array task; None
    where squeue cannot be asked (not on a Slurm node)."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "--me", "--array", "--noheader", f"--name={name}", "--format=%i|%T"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = {}
    for line in out.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state
    return states


class JobBook:
    """``jobs.json`` in the launcher's folder: the Slurm job of each key (a grid point's
    configuration hash, a study worker), the latest submission winning."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "jobs.json"

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def add(self, entries: dict[str, dict[str, Any]]) -> None:
        book = {**self.read(), **entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(book, indent=1, sort_keys=True))
        tmp.replace(self.path)


def wait_for(jobs: Sequence[str], name: str, on_change: Callable[[str, str], None] | None = None,
             poll_s: float = POLL_S) -> None:
    """Block until none of ``jobs`` is in the queue; ``on_change(job, state)`` at each change of a
    job's queue state ('' once it has left the queue)."""
    seen: dict[str, str] = {}
    left = set(jobs)
    while left:
        states = queue_states(name)
        if states is None:
            raise UsageError("--wait: squeue does not answer; the jobs go on: watch them with --status")
        for job in sorted(left):
            state = states.get(job, "")
            if state != seen.get(job) and on_change is not None:
                on_change(job, state)
            seen[job] = state
            if not state:
                left.discard(job)
        if left:
            time.sleep(poll_s)
