"""The Slurm launcher (``--launcher slurm``, bench/drivers/slurm.py).

The first tests run anywhere: flags, the sbatch script sent (to a stand-in ``sbatch``), and the
task's stop on Slurm's warning. The tests marked below submit to a real Slurm cluster: ``.
.ci/slurm`` starts a throwaway single-node one (``.ci/run`` does). Without a cluster they skip,
saying how to get one; with ``BENCH_REQUIRE_SLURM=1`` (CI) a missing cluster is a failure.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.drivers.slurm import Task, parse_time
from tests.test_study import wait_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--preset", "fmnist-cpu", "--noise", "sym:0.4", "--test-subset", "200"]
# the quantities a run computes (not its timings), compared between launchers
COMPARED = ("test_acc", "train_loss", "train_acc")


@pytest.mark.parametrize("text,minutes", [("90", 90), ("4:00:00", 240), ("30:30", 31), ("1-12", 2160),
                                          ("2-0:30", 2910), ("0-1:00:01", 61)])
def test_slurm_time_formats_in_minutes(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("argv,message", [
    (["--slurm-time", "60"], "--slurm-time: only with --launcher slurm"),
    (["--launcher", "pbs"], "--launcher pbs: valid values are local, slurm"),
    (["--launcher", "slurm", "--slurm-time", "4h"], "expected minutes or Slurm's [D-]HH:MM:SS"),
    (["--launcher", "slurm", "--slurm-time", "0"], "must be more than zero"),
    (["--launcher", "slurm", "--slurm-mem", "lots"], "--slurm-mem lots: expected a size"),
    (["--launcher", "slurm", "--slurm-extra", "account"], "expected KEY=VALUE"),
    (["--launcher", "slurm", "--slurm-gpus", "-1"], "--slurm-gpus -1: must be at least 0"),
    (["--launcher", "slurm", "--slurm-gpus", "0", "--device", "cuda"], "--device cuda with --slurm-gpus 0"),
    (["--launcher", "slurm", "--workers", "2"], "under --launcher slurm the array's tasks run at once"),
])
def test_bad_launcher_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    code = main(["sweep", "--methods", "ce", "--noise", "sym:0.4", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                 *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


def test_study_workers_must_be_positive(capsys):
    assert main(["study", "--method", "ce", "--params", "lr", "--study-workers", "0"]) == 2
    assert "--study-workers 0: must be at least 1" in capsys.readouterr().err


def test_a_cuda_study_for_slurm_is_checked_on_the_compute_node_not_here(monkeypatch, tmp_path):
    """A login node has no GPU: a study's workers check their device where they run; a local
    study runs here, so its device is this machine's."""
    import torch

    from bench.cli import build_parser, request_from_args
    from bench.common.errors import UsageError
    from bench.drivers.study import spec_from_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["study", "--method", "ce", "--params", "lr", "--noise", "sym", "--noise-rate", "0.4", "--device", "cuda",
            "--storage", f"sqlite:///{tmp_path}/o.db", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    args = build_parser().parse_args([*argv, "--launcher", "slurm"])
    spec, _ = spec_from_args(args, request_from_args(args))
    assert spec.base.place.device == "cuda"
    args = build_parser().parse_args(argv)
    with pytest.raises(UsageError, match="--device cuda: no CUDA device is available here"):
        spec_from_args(args, request_from_args(args))


FAKE_SBATCH = """#!/bin/sh
# a stand-in sbatch: keeps the script it is given and answers as sbatch does
cp "$1" "{out}/script-$(ls {out} | wc -l).sh"
echo "Submitted batch job 4242"
"""


def test_the_job_array_asks_for_what_the_flags_say(tmp_path, monkeypatch, capsys):
    """The script handed to sbatch: one array of all the points, the resources given, requeue
    allowed, USR2 before the time limit, the setup lines, the extras; and jobs.json records
    each point's array task."""
    bin_dir, out = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    out.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(out=out))
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")  # an empty queue
    for tool in ("sbatch", "squeue"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = main(["sweep", "--methods", "ce,gce", *SMALL, "--seeds", "1,2", "--epochs", "2",
                 "--out", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment", "e",
                 "--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-time", "1-0", "--slurm-cpus", "8",
                 "--slurm-mem", "32G", "--slurm-parallelism", "3", "--slurm-setup", "source /opt/venv/bin/activate",
                 "--slurm-extra", "account=lnl", "--slurm-extra", "qos=high"])
    stdout = capsys.readouterr().out
    assert code == 0 and "submitted 4 runs to Slurm as job 4242" in stdout
    script = (out / "script-0.sh").read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=1440",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=32G",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@90", "#SBATCH --account=lnl", "#SBATCH --qos=high",
                 "#SBATCH --job-name=bench-sweep-e", "source /opt/venv/bin/activate",
                 f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"):
        assert line in script.splitlines(), line
    folder = tmp_path / "sweeps" / "e" / "slurm"
    assert str(folder) in script  # the job logs
    book = json.loads((folder / "jobs.json").read_text())
    assert sorted(e["job"] for e in book.values()) == ["4242_0", "4242_1", "4242_2", "4242_3"]
    assert sorted(e["label"] for e in book.values()) == ["ce sym:0.4 seed 1", "ce sym:0.4 seed 2",
                                                         "gce sym:0.4 seed 1", "gce sym:0.4 seed 2"]
    # CPU nodes: no GPU asked for at all
    main(["sweep", "--methods", "ce", *SMALL, "--epochs", "2", "--out", str(tmp_path / "runs"),
          "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment", "f", "--launcher", "slurm",
          "--slurm-gpus", "0"])
    script = (out / "script-1.sh").read_text()
    assert "gpus" not in script and "--array" not in script  # one point: one job, not an array


def test_status_reads_the_queue_then_mlflow_then_the_logs(tmp_path):
    """Each branch of a point's status under the Slurm launcher, from a made-up queue and store."""
    from bench.drivers.sweep import GridPoint, Sweep

    sweep = Sweep([], {}, "unused", "e", 1, tmp_path / "sweeps" / "e")
    pts = [GridPoint("ce", "sym", 0.4, s) for s in range(8)]
    hashes = {p: f"h{p.seed}" for p in pts}
    runs = {"h0": [{"status": "FINISHED", "run_dir": "r0"}], "h2": [{"status": "KILLED", "run_dir": "r2"}],
            "h3": [{"status": "RUNNING", "run_dir": "r3"}], "h4": [{"status": "RUNNING", "run_dir": "r4"}],
            "h6": [{"status": "FAILED", "run_dir": "r6"}]}
    queue = {pts[0]: ("9_0", ""), pts[1]: ("9_1", "PENDING"), pts[2]: ("9_2", "REQUEUED"),
             pts[3]: ("9_3", "RUNNING"), pts[4]: ("9_4", ""), pts[5]: ("9_5", "")}
    sweep.slurm_dir.mkdir(parents=True)
    (sweep.slurm_dir / "9_5_0_log.out").write_text("submitit INFO ...\nConnectionError: tracking server down\n")
    sweep.log_of(pts[6], hashes[pts[6]]).write_text("$ -m bench run ...\nbench: error: lr 1e9 diverged\n")
    (sweep.log_dir / "ce_sym0.4_seed_7.log").write_text("$ -m bench run ...\nbench: error: no data\n")  # an old name
    got = sweep.statuses(hashes, runs, queue)
    assert [got[p][0] for p in pts] == ["finished", "queued", "queued", "running", "failed", "failed", "failed",
                                        "failed"]
    assert got[pts[7]][1] == "bench: error: no data", got[pts[7]]
    assert got[pts[1]][1] == "Slurm job 9_1 (pending)" and got[pts[3]][1] == "Slurm job 9_3, r3"
    assert got[pts[4]][1].startswith("Slurm job 9_4 ended with its run unfinished")  # killed with its job
    assert got[pts[5]][1] == "Slurm job 9_5: ConnectionError: tracking server down"  # never reached the run
    assert got[pts[6]][1] == "bench: error: lr 1e9 diverged"


class SleeperJob:
    """A child that counts the SIGTERMs it gets, exits 130 on the first (as `bench run` does
    after checkpointing), and ignores nothing else."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def start(self, threads: int, **popen):
        code = textwrap.dedent(f"""
            import signal, sys, time, pathlib
            log = pathlib.Path({str(self.tmp / 'terms')!r})
            def term(signum, frame):
                log.write_text(log.read_text() + "x" if log.exists() else "x")
                time.sleep(0.5)  # a checkpoint's write: a second SIGTERM here would cut it short
                sys.exit(130)
            signal.signal(signal.SIGTERM, term)
            pathlib.Path({str(self.tmp / 'started')!r}).touch()
            time.sleep(60)
        """)
        return subprocess.Popen([sys.executable, "-c", code], **popen)

    def failure(self, code: int) -> str:
        return f"exit {code}"


def test_a_task_warned_twice_stops_its_child_once_and_requeues_a_clean_copy(tmp_path):
    """submitit runs the checkpoint hook in a signal handler, on top of Popen.wait (which holds
    the Popen's lock); Slurm may deliver the warning twice. The child gets one SIGTERM, is
    waited for, and the requeued copy pickles without it."""
    task = Task(SleeperJob(tmp_path))
    requeued = []

    def on_usr1(signum, frame):
        requeued.append(task.checkpoint())
        if len(requeued) == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # the second warning, inside the first's handler
        raise SystemExit(-1)  # as submitit does after requeueing

    previous = signal.signal(signal.SIGUSR1, on_usr1)

    def warn():
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    try:
        threading.Thread(target=warn, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(SystemExit):
            task()
        assert time.monotonic() - t0 < 20  # no deadlock on the Popen's lock, no 60 s wait
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (tmp_path / "terms").read_text() == "x"  # one SIGTERM
    assert len(requeued) == 2 and all(isinstance(d.function, Task) for d in requeued)
    copy = pickle.loads(pickle.dumps(requeued[0].function))
    assert copy.proc is None and isinstance(copy.job, SleeperJob) and not copy.stopping


# --- against a real Slurm cluster ------------------------------------------------------------------
@pytest.fixture
def cluster():
    """A Slurm cluster that answers (``sinfo``): the throwaway one of ``.ci/slurm`` or a real one."""
    message = None
    if shutil.which("sbatch") is None:
        message = "no Slurm here: `. .ci/slurm` (as root) starts a throwaway single-node cluster"
    else:
        probe = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0 or not probe.stdout.strip():
            message = f"Slurm does not answer (sinfo: {probe.stderr.strip() or 'no nodes'}); `. .ci/slurm` starts one"
    if message:
        if os.environ.get("BENCH_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def bench(tmp: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m bench`` in ``tmp`` (the sweep's folder), as a user on a login node types it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout)


def sweep_argv(tmp: Path, experiment: str, *argv: str) -> list[str]:
    return ["sweep", *argv, "--out", str(tmp / "runs"), "--tracking-uri", uri(tmp), "--experiment", experiment]


def point_log(folder: Path, stem: str) -> str:
    """The text of the one log of a grid point (its label, then its request hash), '' before it is written."""
    found = list(folder.glob(f"{stem}-*.log"))
    assert len(found) <= 1, found
    return found[0].read_text() if found else ""


def uri(tmp: Path) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def histories(tmp: Path, experiment: str) -> dict[str, dict[str, list[float]]]:
    """{request hash: {metric: values by step}} of the experiment's finished runs."""
    client = MlflowClient(uri(tmp))
    exp = client.get_experiment_by_name(experiment)
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        assert run.info.status == "FINISHED", (run.data.tags.get("request_hash"), run.info.status)
        h = run.data.tags["request_hash"]
        assert h not in out  # one run per grid point, requeues included
        out[h] = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
                  for k in COMPARED}
    return out


def cpus_per_run(workers: int) -> str:
    return str(max(1, (os.cpu_count() or 1) // workers))  # the local launcher's share, for equal threads


@pytest.mark.slow
def test_a_slurm_sweep_with_requeued_tasks_gives_the_hashes_and_metrics_of_a_local_one(tmp_path, cluster, capsys):
    """2 methods x 2 seeds through Slurm, two of the tasks stopped after their second epoch: one
    requeued by an administrator (``scontrol requeue``: SIGTERM), one warned of its time limit
    (USR2, as ``--signal=USR2@90`` sends it). Every run has the configuration hash the local
    launcher gives its point, and the two stopped ones end with the metrics, epoch by epoch, of
    the same points run uninterrupted by ``--workers 2``."""
    grid = ["--methods", "ce,gce", *SMALL, "--seeds", "1,2", "--epochs", "6", "--subset", "4000"]
    slurm = ["--launcher", "slurm", "--slurm-gpus", "0", "--slurm-cpus", cpus_per_run(2)]
    sub = bench(tmp_path, *sweep_argv(tmp_path, "slurm", *grid, *slurm))
    assert sub.returncode == 0 and "submitted 4 runs to Slurm" in sub.stdout, sub.stdout + sub.stderr
    job = sub.stdout.split("as job ")[1].split()[0]
    # tasks 0 and 1: seed 1 of ce and of gce (the grid's order: seed, noise, method)
    stems = [f"{m}_sym0.4_seed_1" for m in ("ce", "gce")]
    for stem, stop in zip(stems, (["scontrol", "requeue", f"{job}_0"], ["scancel", "--signal=USR2", f"{job}_1"]),
                          strict=True):  # each as soon as its run has checkpointed its second epoch
        wait_for(lambda stem=stem: "epoch 2/6" in point_log(tmp_path / "sweeps" / "slurm", stem), 300,
                 f"epoch 2 in {stem}")
        subprocess.run(stop, check=True, timeout=60)
    logs = [next((tmp_path / "sweeps" / "slurm").glob(f"{stem}-*.log")) for stem in stems]
    wait_for(lambda: all("interrupted" in log.read_text() for log in logs), 120, "both runs to stop")
    status = bench(tmp_path, *sweep_argv(tmp_path, "slurm", *grid, "--status")).stdout
    # the task stopped last is back in the queue (or running again): its Slurm job shows
    assert re.search(r"^(queued|running) +gce sym:0.4 seed 1: Slurm job \d+_1", status, re.M), status
    # the same command with --wait submits nothing twice and waits for the tasks in the queue
    done = bench(tmp_path, *sweep_argv(tmp_path, "slurm", *grid, *slurm, "--wait"))
    assert done.returncode == 0, done.stdout + done.stderr
    # (the points still in the queue: the others may have finished already)
    assert "submitted" not in done.stdout and re.search(r"sweep done: [1-4] runs finished, 0 failed", done.stdout)
    for log in logs:
        text = log.read_text()
        assert "--resume" in text and "epoch 6/6" in text, text  # resumed, in the same run, to its end
        assert text.count("epoch 1/6") == 1  # not started again from scratch
    assert len(sorted((tmp_path / "sweeps" / "slurm" / "slurm").glob("*_log.out"))) == 4  # a job log per task
    # the local launcher plans the same hashes for the whole grid: all four finished
    assert main(sweep_argv(tmp_path, "slurm", *grid, "--dry-run")) == 0
    assert "4 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    # the two interrupted points run again, uninterrupted, by the local launcher
    seed1 = [a if a != "1,2" else "1" for a in grid]
    local = bench(tmp_path, *sweep_argv(tmp_path, "local", *seed1, "--workers", "2"))
    assert local.returncode == 0, local.stdout + local.stderr
    a, b = histories(tmp_path, "local"), histories(tmp_path, "slurm")
    assert len(a) == 2 and len(b) == 4 and a.keys() <= b.keys()  # the same configuration hashes
    assert all(a[h] == b[h] for h in a)  # the same metrics, epoch by epoch


@pytest.mark.slow
def test_a_failing_point_shows_in_status_and_only_it_is_retried(tmp_path, cluster):
    # DivideMix's warm-up (10 epochs on Fashion-MNIST) leaves nothing of 2 epochs: a usage error
    grid = ["--methods", "ce,dividemix", *SMALL, "--epochs", "2", "--subset", "200"]
    slurm = ["--launcher", "slurm", "--slurm-gpus", "0", "--slurm-cpus", "1", "--wait"]
    first = bench(tmp_path, *sweep_argv(tmp_path, "f", *grid, *slurm))
    assert first.returncode == 1 and "sweep done: 1 runs finished, 1 failed" in first.stdout, first.stdout
    status = bench(tmp_path, *sweep_argv(tmp_path, "f", *grid, "--status")).stdout.splitlines()
    assert status[0].startswith("finished") and "ce sym:0.4 seed 1" in status[0]
    assert status[1].startswith("failed") and "dividemix sym:0.4 seed 1: bench: error: dividemix: warm-up" in status[1]
    book = json.loads((tmp_path / "sweeps" / "f" / "slurm" / "jobs.json").read_text())
    jobs = {e["label"]: e["job"] for e in book.values()}
    retry = bench(tmp_path, *sweep_argv(tmp_path, "f", *grid, *slurm, "--retry-failed"))
    assert retry.returncode == 1 and "submitted 1 runs to Slurm" in retry.stdout, retry.stdout
    assert "skip (finished)  ce sym:0.4 seed 1" in retry.stdout
    book = json.loads((tmp_path / "sweeps" / "f" / "slurm" / "jobs.json").read_text())
    again = {e["label"]: e["job"] for e in book.values()}
    assert again["ce sym:0.4 seed 1"] == jobs["ce sym:0.4 seed 1"]  # not resubmitted
    assert again["dividemix sym:0.4 seed 1"] != jobs["dividemix sym:0.4 seed 1"]
    log = tmp_path / "sweeps" / "f"
    assert point_log(log, "dividemix_sym0.4_seed_1").count("$ ") == 2  # run twice
    assert point_log(log, "ce_sym0.4_seed_1").count("$ ") == 1  # once


@pytest.mark.slow
def test_a_two_worker_study_through_slurm_finishes_its_trials(tmp_path, cluster):
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    out = bench(tmp_path, "study", "--method", "ce", "--params", "lr", "--dataset", "fashion-mnist", "--noise", "sym",
                "--noise-rate", "0.4", "--subset", "300", "--test-subset", "200", "--epochs", "2", "--trials", "4",
                "--study-name", "s", "--storage", storage, "--pruner", "none", "--heartbeat", "2",
                "--tracking-uri", uri(tmp_path), "--out", str(tmp_path / "runs"), "--study-workers", "2",
                "--launcher", "slurm", "--slurm-gpus", "0", "--slurm-cpus", "1", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 workers submitted to Slurm" in out.stdout and "study s: 4 of 4 trials finished" in out.stdout
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    logs = sorted((tmp_path / "runs").parent.joinpath("studies", "s", "slurm").glob("*_log.out"))
    assert len(logs) == 2  # the two workers' job logs
