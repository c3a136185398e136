"""`bench sweep`: grid expansion and sharding, skip-finished and resume, --workers 2, and a
sweep against a real `mlflow server` on 127.0.0.1."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.drivers.sweep import expand, parse_noise, shard
from tests.helpers import run_cli, tracking_uri

TINY = ["--subset", "100", "--epochs", "2"]


def test_grid_expansion_order_and_sharding():
    points = expand(["ce", "elr"], parse_noise("sym:0.2,pairflip:0.4,none"), [1, 2])
    assert len(points) == 12 and len(set(points)) == 12
    assert points[0].label == "ce sym:0.2 seed 1" and points[-1].label == "elr none seed 2"
    for n in (1, 2, 3, 5, 12, 13):
        shares = [shard(points, i, n) for i in range(1, n + 1)]
        flat = [p for s in shares for p in s]
        assert sorted(flat, key=points.index) == points and len(flat) == len(set(flat))  # disjoint, covering
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shard(points, 2, 3) == shard(points, 2, 3)  # deterministic


@pytest.mark.parametrize("argv,expected", [
    (["--noise", "sym"], "MODEL:RATE"),
    (["--noise", "sym:0.4", "--shard", "3/2"], "I must lie in [1, N]"),
    (["--noise", "sym:0.4", "--seeds", "a"], "expected integers"),
    (["--noise", "sym:0.4", "--workers", "0"], "at least 1"),
    (["--preset", "paper"], "needs --dataset"),
    (["--noise", "sym:0.4", "--views", "shared,bogus"], "--views bogus: valid values are shared, official"),
])
def test_bad_sweep_input_is_one_line(argv, expected, capsys):
    assert main(["sweep", "--methods", "ce", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err


def sweep(tmp: Path, *argv: str, uri: str | None = None) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["sweep", "--out", str(tmp / "runs"), "--tracking-uri", uri or tracking_uri(tmp),
                     "--experiment", "sw", *argv])
    return code, buf.getvalue()


def test_a_cuda_sweep_is_checked_against_this_machine_only_when_it_runs_here(tmp_path, capsys, monkeypatch):
    """A login node has no GPU: a ``--launcher slurm`` sweep's device is the compute node's
    (checked where each run starts), and ``--status`` only looks at the store and the queue
    (no device, no data root); a local sweep runs here, so its device is this machine's."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = ["--methods", "ce,dividemix", "--noise", "sym:0.4", "--device", "cuda"]
    assert sweep(tmp_path, *grid, "--dry-run")[0] == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    code, out = sweep(tmp_path, *grid, "--launcher", "slurm", "--dry-run")
    assert code == 0 and "0 to resume, 2 to start" in out, out
    code, out = sweep(tmp_path, *grid, "--status")
    assert code == 0 and "not started  dividemix sym:0.4 seed 1" in out, out
    # nor its data: a cluster's data root need not be mounted where one looks
    code, out = sweep(tmp_path, "--methods", "ce", "--noise", "sym:0.4", "--dataset", "cifar100", "--status")
    assert code == 0 and "1 runs: 0 finished" in out, out


def test_status_imports_neither_torch_nor_a_method(tmp_path):
    """``--status`` is a quick look: torch, timm and a method's module with its SciPy add
    seconds, and the hashes need none of them."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "sweep", "--methods", "ce,dividemix",
                           "--noise", "sym:0.4", "--out", str(tmp_path / "runs"), "--tracking-uri",
                           tracking_uri(tmp_path), "--experiment", "sw", "--status"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "2 runs: 0 finished" in proc.stdout, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "scipy.stats", "methods.dividemix", "timm"}, imported & {"torch", "scipy.stats"}


def test_paper_preset_expands_the_papers_grid(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from tests.fixtures_data import make_cifar100

    # downloads allowed (the pretrained ResNet-50 is not cached here; a dry run fetches nothing)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)

    make_cifar100(tmp_path / "data")
    code, out = sweep(tmp_path, "--methods", "ce", "--preset", "paper", "--dataset", "cifar100",
                      "--data-root", str(tmp_path / "data"), "--dry-run")
    assert code == 0
    assert [line.split(None, 1)[1] for line in out.splitlines()[:5]] == [
        "ce sym:0.2 seed 1", "ce sym:0.4 seed 1", "ce sym:0.6 seed 1", "ce asym:0.4 seed 1", "ce instance:0.4 seed 1"]


@pytest.mark.slow
def test_sweep_runs_with_two_workers_then_skips_and_resumes(tmp_path):
    # an interrupted run of one grid point, as a killed sweep leaves it
    part = run_cli(tmp_path, "--method", "elr", "--noise", "sym", "--noise-rate", "0.4", "--seed", "1",
                   *TINY, "--experiment", "sw", "--stop-after", "1")
    assert part["status"] == "stopped"
    grid = ["--methods", "ce,elr", "--noise", "sym:0.4", "--seeds", "1,2", *TINY]
    code, out = sweep(tmp_path, *grid, "--dry-run")
    assert code == 0 and "resume           elr sym:0.4 seed 1" in out and "1 to resume, 3 to start" in out
    code, out = sweep(tmp_path, *grid, "--workers", "2")
    assert code == 0 and "sweep done: 4 runs finished, 0 failed" in out
    runs = MlflowClient(tracking_uri(tmp_path)).search_runs(
        [MlflowClient(tracking_uri(tmp_path)).get_experiment_by_name("sw").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # the stopped one continued
    assert part["run_id"] in {r.info.run_id for r in runs}
    code, out = sweep(tmp_path, *grid)
    assert code == 0 and "4 finished, 0 to resume, 0 to start" in out  # nothing repeated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root",
         (tmp_path / "artifacts").as_uri(), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # its GenAI job runner: 5 processes
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sweep_against_a_real_mlflow_server(tmp_path, mlflow_server):
    grid = ["--methods", "ce", "--noise", "sym:0.4", "--seeds", "1", "--subset", "100", "--epochs", "1"]
    code, out = sweep(tmp_path, *grid, uri=mlflow_server)
    assert code == 0 and "sweep done: 1 runs finished" in out
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("sw").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "best_test_acc" in runs[0].data.metrics
    code, out = sweep(tmp_path, *grid, uri=mlflow_server)
    assert "skip (finished)  ce sym:0.4 seed 1" in out
