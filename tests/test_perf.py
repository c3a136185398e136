"""``bench perf`` on CPU with tiny sizes, the bare loop's like-for-like claim, the opt-in
speed flags (``--compile``, ``--fused``) against eager / unfused runs, and the on-disk figures
on tiny synthetic Clothing1M trees (:mod:`datasets.synth`)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.drivers.perf import (
    EpochTimes,
    MemoryTracker,
    bare_epochs,
    new_run_dir,
    perf_spec,
    run_bare,
    run_trainer,
    summarise,
)
from bench.training.trainer import Trainer
from tests.helpers import checkpoint, run_cli

TINY = ["--dataset", "synthetic", "--set", "train_size=256", "--set", "test_size=64", "--set", "image_size=16",
        "--backbone", "smallcnn", "--batch-size", "64"]


def perf(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["perf", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_trainer_against_bare_prints_both_and_the_ratio() -> None:
    code, out, _ = perf(*TINY, "--epochs", "2", "--repeats", "1")
    assert code == 0
    ratio = re.search(r"ratio trainer/bare: ([\d.]+) per epoch, ([\d.]+) training only, ([\d.]+) without the "
                      r"checkpoint and record", out)
    assert ratio and all(float(ratio.group(i)) > 0 for i in (1, 2, 3))
    assert float(ratio.group(3)) <= float(ratio.group(1))  # the loop alone is part of the epoch
    for name in ("trainer", "bare loop"):
        line = re.search(rf"^{name}: ([\d.]+) s/epoch \(training ([\d.]+) s, (\d+) images/s; evaluation ([\d.]+) s",
                         out, re.M)
        assert line and float(line.group(1)) >= float(line.group(2)) > 0 and int(line.group(3)) > 0
        assert float(line.group(1)) >= float(line.group(4)) > 0
    parts = re.search(r"^trainer: .*; hooks ([\d.]+) s, checkpoint and record ([\d.]+) s\)$", out, re.M)
    assert parts and float(parts.group(2)) > 0  # the trainer writes a checkpoint every epoch


def test_bare_loop_does_the_trainers_work(tmp_path: Path) -> None:
    """Same initial weights, batches, augmentation draws and optimiser: after two epochs the
    bare loop's network equals the trainer's CE network (the claim "exactly the same work")."""
    request = {"dataset": "synthetic", "sets": ["train_size=128", "test_size=32", "image_size=16"],
               "backbone": "smallcnn", "batch_size": 32, "epochs": 2}
    spec = perf_spec(request, tmp_path)
    (tmp_path / "runs").mkdir()
    trainer = Trainer(spec, tmp_path / "runs" / "t", tracker=MemoryTracker())
    (tmp_path / "runs" / "t").mkdir()
    trainer.build()
    trainer.run()
    (tmp_path / "runs" / "p").mkdir()
    probe = Trainer(spec, tmp_path / "runs" / "p", tracker=MemoryTracker()).build()
    nets: list[torch.nn.Module] = []
    run_bare(spec, probe, keep=nets)
    ours, theirs = trainer.method.models["net"].state_dict(), nets[0].state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_interleaved_epochs_leave_both_loops_their_own_work(tmp_path: Path) -> None:
    """perf alternates the bare loop's epochs with the trainer's: a bare epoch leaves the global
    random state as it found it, and both networks end as they do when run apart."""
    request = {"dataset": "synthetic", "sets": ["train_size=128", "test_size=32", "image_size=16"],
               "backbone": "smallcnn", "batch_size": 32, "epochs": 2}
    spec = perf_spec(request, tmp_path)
    apart = Trainer(spec, new_run_dir(tmp_path, "apart"), tracker=MemoryTracker()).build()
    apart.run()
    probe = Trainer(spec, new_run_dir(tmp_path, "probe"), tracker=MemoryTracker()).build()
    alone: list[torch.nn.Module] = []
    run_bare(spec, probe, keep=alone)

    nets: list[torch.nn.Module] = []
    epochs = bare_epochs(spec, probe, EpochTimes(), keep=nets)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    next(epochs)  # builds its network from its own seed, trains an epoch
    assert torch.equal(torch.get_rng_state(), before)
    times = run_trainer(spec, new_run_dir(tmp_path, "t"), between=lambda: next(epochs, None))
    assert len(times.epoch) == 2 and all(t > 0 for t in times.epoch)
    ours = checkpoint({"run_dir": tmp_path / "runs" / "t"})["models"]["net"]  # the trainer's last state
    for key, value in apart.method.models["net"].state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    for key, value in alone[0].state_dict().items():
        torch.testing.assert_close(nets[0].state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_methods_side_by_side_with_ratios() -> None:
    code, out, _ = perf(*TINY, "--methods", "ce,dividemix,wrongevent", "--epochs", "3")
    assert code == 0
    rows = {m.group(1): m for m in re.finditer(r"^(\w+): ([\d.]+) s/epoch in (.+?) \(training", out, re.M)}
    assert set(rows) == {"ce", "dividemix", "wrongevent"}
    assert "warmup1" not in rows["dividemix"].group(3) and "strong" in rows["wrongevent"].group(3)
    assert re.search(r"^wrongevent: .* x dividemix per epoch", out, re.M)
    assert re.search(r"^ce: .*1\.000 x ce per epoch", out, re.M)


def test_strong_view_share_for_each_dispatch() -> None:
    code, out, _ = perf(*TINY, "--strong")
    assert code == 0
    shares = re.findall(r"strong view \((\w+) dispatch\).*\(([\d.]+)%\)", out)
    assert {d for d, _ in shares} == {"subset", "batched"}
    assert all(0 < float(s) < 100 for _, s in shares)


def shrink_disk_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suites' on-disk shapes at test size: 64 images of 80x64 in the trees, smallcnn at
    32 px, batches of 8, 3 timed batches, epochs of 16 sampled images."""
    from bench.drivers import perf as driver

    small = {"backbone": "smallcnn", "image_size": 32, "batch_size": 8}
    monkeypatch.setattr(driver, "DISK_TREES", {"disk": (64, "80x64"), "gpu": (64, "80x64")})
    monkeypatch.setattr(driver, "DISK_SMALLCNN", {**driver.DISK_SMALLCNN, **small})
    monkeypatch.setattr(driver, "DISK_RESNET50", {**driver.DISK_RESNET50, **small})
    monkeypatch.setattr(driver, "DISK_BATCHES", {"smallcnn": (3, None), "resnet50-cpu": (3, 1),
                                                 "resnet50-gpu": (3, None)})
    monkeypatch.setattr(driver, "DISK_R50_CPU_SAMPLES", 16)
    monkeypatch.setattr(driver, "GPU_METHOD_SAMPLES", 16)


@pytest.mark.slow
def test_gpu_suite_runs_every_figure_of_its_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prepared GPU check, its shapes shrunk to CPU size: a lent GPU's few minutes must not
    be spent finding a crash. Each shape prints trainer / bare, and the first two the strong
    view's share and CE / DivideMix / IDO epochs; then the on-disk shapes on a tree it writes
    (``--decode gpu`` said to be skipped without CUDA) and the methods' epochs on that tree."""
    from bench.drivers import perf as driver

    small = {"backbone": "smallcnn", "image_size": 16}
    monkeypatch.setattr(driver, "PREACT_32", {**driver.PREACT_32, **small})
    monkeypatch.setattr(driver, "RESNET50_224", {**driver.RESNET50_224, **small, "image_size": 24})
    monkeypatch.setattr(driver, "SYNTH_32", ["train_size=128", "test_size=32", "image_size=12"])
    monkeypatch.setattr(driver, "SYNTH_224", ["train_size=128", "test_size=32", "image_size=12"])
    shrink_disk_shapes(monkeypatch)
    code, out, err = perf("--suite", "gpu", "--epochs", "2", "--repeats", "1", "--workers", "1")
    assert code == 0, err
    titles = [t for t, _, _ in driver.suite_requests("gpu", {})]
    for title in titles:
        assert re.search(rf"^{re.escape(title)}: ratio trainer/bare: [\d.]+ per epoch", out, re.M), title
    for title in titles[:2]:
        assert len(re.findall(rf"^{re.escape(title)}: strong view \((subset|batched) dispatch\)", out, re.M)) == 2
        for method in ("ce", "dividemix", "wrongevent"):
            assert re.search(rf"^{re.escape(title)}: {method}: [\d.]+ s/epoch", out, re.M), (title, method)
    assert "fused on" in err and re.search(r"^suite gpu: \d+ s$", out, re.M)
    assert re.search(r"^synth: clothing1m tree at .*: 64 training images of 80x64.* in [\d.]+ s with", out, re.M)
    cpu, gpu = (t for t, _, _ in driver.disk_shapes("gpu", {}, Path("tree")))
    assert_disk_figures(out, cpu)
    if torch.cuda.is_available():
        assert_disk_figures(out, gpu)
    else:
        assert f"{gpu}: skipped (--decode gpu needs a CUDA device)" in out
    assert re.search(r"^on disk resnet50 224 px batch 64, 16 sampled per epoch: wrongevent: [\d.]+ s/epoch .*"
                     r"x dividemix per epoch", out, re.M), out


@pytest.mark.slow
def test_perf_runs_where_mlflow_and_optuna_are_not_installed() -> None:
    """A lent GPU machine may have neither: perf times the trainer without its record and
    says so, instead of failing on an import; the methods side by side too."""
    code = ("import sys; sys.modules['mlflow'] = sys.modules['optuna'] = None\n"
            "from bench.cli import main\n"
            "args = sys.argv[1:]\n"
            "sys.exit(main(args) or main([*args, '--methods', 'ce,wrongevent']))")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_TRACKING"}  # as a user runs it
    proc = subprocess.run([sys.executable, "-c", code, "perf", *TINY, "--epochs", "2", "--repeats", "1"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "MLflow not installed: no record" in proc.stderr
    assert re.search(r"^ratio trainer/bare: [\d.]+ per epoch", proc.stdout, re.M), proc.stdout
    assert re.search(r"^wrongevent: [\d.]+ s/epoch", proc.stdout, re.M), proc.stdout


def test_summary_takes_the_last_phase_and_drops_a_first_epoch_alike() -> None:
    t = EpochTimes(epoch=[5.0, 2.0, 3.0], train=[4.0, 1.0, 2.0], labels=["a", "a", "a"])
    assert summarise("ce", t).epoch_s == 2.5
    t = EpochTimes(epoch=[5.0, 2.0, 4.0], train=[4.0, 1.0, 2.0], labels=["w", "m", "m"])
    assert summarise("dm", t).epoch_s == 3.0 and summarise("dm", t).main == "m"


@pytest.mark.parametrize("args, message", [
    (("--epochs", "1"), "at least 2"),
    (("--repeats", "0"), "--repeats 0"),
    (("--batches", "0"), "--batches 0: must be at least 1"),
    (("--methods", "ce,nosuch"), "nosuch"),
    (("--compile", "fast"), "--compile fast: valid values are off, default, reduce-overhead, max-autotune"),
])
def test_bad_perf_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, _, err = perf(*TINY, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


# --- on disk -----------------------------------------------------------------------------------------

DISK_ROWS = ("decode, 1 core", "loader alone", "step alone", "epoch")


def assert_disk_figures(out: str, title: str = "") -> dict[str, float]:
    """Every row of an on-disk table (``title``'s, or the untitled one) with a positive rate in
    images/s, and the bound line; the rates."""
    head = re.escape(f"{title}: ") if title else ""
    assert re.search(rf"^{head}on disk: clothing1m, ", out, re.M), out
    rates = {}
    for row in DISK_ROWS:
        m = re.search(rf"^{head}  {re.escape(row)} +([\d.]+) images/s  \S", out, re.M)
        assert m and float(m.group(1)) > 0, (row, out)
        rates[row] = float(m.group(1))
    bound = re.search(rf"^{head}  (loader|step)-bound: (loader / step|step / loader) = ([\d.]+); "
                      r"epoch / min\(loader, step\) = ([\d.]+)$", out, re.M)
    assert bound and float(bound.group(3)) > 0 and float(bound.group(4)) > 0, out
    loader_bound = rates["loader alone"] < rates["step alone"]
    assert bound.group(1) == ("loader" if loader_bound else "step")
    return rates


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Clothing1M tree of 64 training images of 80 x 64 (14 test images)."""
    from datasets.synth import make_spec, write_tree

    root = tmp_path_factory.mktemp("c1m")
    write_tree(make_spec("clothing1m", 64, "80x64"), root, 1, log=lambda _: None)
    return root


DISK = ["--dataset", "clothing1m", "--backbone", "smallcnn", "--image-size", "32", "--batch-size", "8",
        "--batches", "4", "--workers", "1"]


@pytest.mark.slow
def test_perf_on_disk_prints_each_rate_and_what_bounds_it(tiny_tree: Path) -> None:
    code, out, err = perf(*DISK, "--data-root", str(tiny_tree))
    assert code == 0, err
    assert_disk_figures(out)
    assert "4 batches of 8" in out and "1 worker " in out
    assert "16 sampled per epoch" not in err and "32 sampled per epoch" in err  # 4 batches of 8 by default
    code, out, _ = perf(*DISK, "--data-root", str(tiny_tree), "--set", "samples_per_epoch=16")
    assert code == 0 and re.search(r"^  epoch +[\d.]+ images/s  14 images trained in", out, re.M), out


@pytest.mark.slow
def test_disk_suite_writes_its_tree_and_measures_each_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--suite disk``, its tree and shapes made tiny: the tree's line (its generation time),
    every figure of both shapes, the ResNet-50 shape's steps timed on 1 of its batches."""
    from bench.drivers import perf as driver

    shrink_disk_shapes(monkeypatch)
    code, out, err = perf("--suite", "disk", "--workers", "1")
    assert code == 0, err
    assert re.search(r"^synth: clothing1m tree at .*: 64 training images of 80x64.* in [\d.]+ s with \d+ jobs",
                     out, re.M), out
    small, r50 = (t for t, _, _ in driver.disk_shapes("disk", {}, Path("tree")))
    assert_disk_figures(out, small)
    assert_disk_figures(out, r50)
    assert re.search(rf"^{re.escape(r50)}:   step alone .* CE steps on 1 of these 3 batches", out, re.M), out
    assert re.search(r"^suite disk: \d+ s$", out, re.M)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of machines without CUDA")
def test_decode_gpu_without_cuda_is_one_line_and_exit_2(tiny_tree: Path) -> None:
    code, out, err = perf(*DISK, "--data-root", str(tiny_tree), "--decode", "gpu")
    assert code == 2 and out == ""
    assert "--decode gpu needs a CUDA device" in err and len(err.strip().splitlines()) == 1


def _curves(tmp: Path, *extra: str) -> dict:
    return run_cli(tmp, "--method", "ce", "--dataset", "synthetic", "--set", "train_size=256", "--set",
                   "test_size=128", "--set", "image_size=16", "--batch-size", "64", "--eval-batch-size", "128",
                   "--epochs", "2", *extra)


def _assert_same_run(a: dict, b: dict, rtol: float) -> None:
    """Two runs' final weights within ``rtol`` of the largest weight of each tensor, the same
    test accuracy to one image of 128."""
    wa, wb = checkpoint(a)["models"]["net"], checkpoint(b)["models"]["net"]
    for key, value in wa.items():
        if value.is_floating_point():
            scale = value.abs().max().item()
            assert (value - wb[key]).abs().max().item() <= rtol * scale, key
    assert abs(a["last_test_acc"] - b["last_test_acc"]) <= 1 / 128


@pytest.mark.slow
def test_fused_optimiser_matches_the_default_within_tolerance(tmp_path: Path) -> None:
    """Fused Adam against torch's default: the same update up to float rounding (measured:
    5e-7 of the largest weight after 2 epochs)."""
    _assert_same_run(_curves(tmp_path / "a"), _curves(tmp_path / "b", "--fused", "on"), 1e-4)


@pytest.mark.slow
def test_compile_matches_eager_within_tolerance(tmp_path: Path) -> None:
    """CE for 2 epochs under torch.compile (inductor, C++ on CPU) against eager (measured:
    2e-7 of the largest weight): batches of one size (256 = 4 x 64, one 128-image test
    batch), so the compiled graphs are few."""
    _assert_same_run(_curves(tmp_path / "a"), _curves(tmp_path / "b", "--compile", "default"), 1e-4)
