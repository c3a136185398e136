"""Tests for the command line's error path (:mod:`bench.cli`) and ``--set`` typing
(:func:`methods.base.build_options`).

Bad input must end in exactly one line on standard error, ``bench: error: ...``, exit code 2
and no traceback, and a bad run must fail before anything is written: every run here logs to
an MLflow store and a run folder inside ``tmp_path``, and the checks that names and values
are validated up front assert that neither was created.

The ``--pretrained`` case whose download fails (every connection refused) runs as a subprocess
started when this module starts (:func:`offline_pretrained`) and is checked by the last test, so
its time limit overlaps the other tests instead of adding to the suite's run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import datasets  # noqa: F401  (registers the data sets)
import methods  # noqa: F401  (registers the methods)
from bench.cli import main
from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.training.config import RunConfig
from methods.base import Method

REPO = Path(__file__).resolve().parents[1]
OFFLINE_LIMIT_S = 30.0
# Proxies that refuse every connection: no test here may reach the network, even on a machine
# that has one, and a run that tries anyway still shows up (it retries, which is slow).
NO_NETWORK = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                 "http_proxy", "https_proxy", "all_proxy")}


def run_args(tmp_path: Path, *argv: str) -> list[str]:
    """A ``run`` command line whose run folders and MLflow store live in ``tmp_path``."""
    return ["run", *argv, "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]


def bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``bench.cli.main`` in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(err: str) -> str:
    """The last line of stderr, which must be the ``bench: error:`` line."""
    lines = err.strip("\n").splitlines()
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("bench: error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


def valid_names(line: str) -> list[str]:
    """The names an unknown-name message lists after ``valid:``."""
    assert "valid: " in line, line
    return line.split("valid: ")[-1].split(", ")


def assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), f"run folder created: {list(out.iterdir())}"
    assert not (tmp_path / "m.db").exists(), "the MLflow store was created"


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ``python -m bench``: no network, empty model caches, downloads allowed
    (no HF_HUB_OFFLINE), so a run asking for weights tries the network and must fail fast."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "NO_PROXY", "no_proxy")}
    env.update(NO_NETWORK, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module", autouse=True)
def offline_pretrained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Start ``--pretrained --backbone timm:resnet18`` without ``--weights`` in the background
    (only when its test is selected)."""
    if not any(item.name == "test_pretrained_timm_whose_download_fails_fails_fast"
               for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("offline")
    argv = [sys.executable, "-m", "bench", *run_args(tmp, "--method", "ce", "--backbone", "timm:resnet18",
                                                     "--pretrained", "--epochs", "1", "--subset", "100")]
    proc = subprocess.Popen(argv, cwd=REPO, env=subprocess_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc, time.monotonic(), tmp
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# --- bad runs that the command line must refuse before creating a run folder -------------------

# (id, arguments after `run`, fragments the error line must contain, a name listed as valid)
PRE_VALIDATION = [
    ("negative-seed", ["--method", "ce", "--seed", "-1"], ["--seed -1"], None),
    ("nan-lr", ["--method", "ce", "--lr", "nan"], ["--lr nan"], None),
    ("negative-momentum", ["--method", "ce", "--optimizer", "sgd", "--momentum", "-1"], ["--momentum -1"], None),
    ("nan-option", ["--method", "dividemix", "--set", "alpha=nan"], ["alpha=nan", "finite"], None),
    ("no-method", [], ["--method is required"], "ce"),
    ("unknown-method", ["--method", "nosuchmethod"], ["unknown method 'nosuchmethod'"], "ce"),
    ("unknown-dataset", ["--method", "ce", "--dataset", "nosuchdata"], ["unknown data set 'nosuchdata'"],
     "fashion-mnist"),
    ("unknown-backbone", ["--method", "ce", "--backbone", "nosuchnet"], ["unknown backbone 'nosuchnet'"],
     "smallcnn"),
    ("unknown-timm-model", ["--method", "ce", "--backbone", "timm:not_a_model"],
     ["unknown timm model 'not_a_model'"], None),
    ("rate-1", ["--method", "ce", "--noise", "sym", "--noise-rate", "1.0"], ["--noise-rate 1.0", "[0, 1)"], None),
    ("rate-negative", ["--method", "ce", "--noise", "sym", "--noise-rate", "-0.1"], ["--noise-rate -0.1", "[0, 1)"],
     None),
    ("unknown-noise", ["--method", "ce", "--noise", "nosuchnoise", "--noise-rate", "0.2"],
     ["unknown noise model 'nosuchnoise'"], "sym"),
    ("sym-without-rate", ["--method", "ce", "--noise", "sym"], ["--noise sym", "--noise-rate"], None),
    ("none-with-rate", ["--method", "ce", "--noise", "none", "--noise-rate", "0.2"],
     ["--noise-rate 0.2", "--noise none"], None),
    ("unknown-option", ["--method", "ce", "--set", "nosuchkey=1"], ["nosuchkey", "'ce'"], None),
    ("set-without-equals", ["--method", "ce", "--set", "nosuchkey"], ["--set nosuchkey", "KEY=VALUE"], None),
    ("subset-0", ["--method", "ce", "--subset", "0"], ["--subset 0"], None),
    ("test-subset-0", ["--method", "ce", "--test-subset", "0"], ["--test-subset 0"], None),
    ("epochs-0", ["--method", "ce", "--epochs", "0"], ["--epochs 0"], None),
    ("unknown-augment", ["--method", "ce", "--augment", "rotate"], ["--augment rotate", "crop-flip"], None),
]


@pytest.mark.parametrize("argv, fragments, listed", [pytest.param(*c[1:], id=c[0]) for c in PRE_VALIDATION])
def test_bad_run_fails_in_one_line_before_anything_is_written(argv, fragments, listed, tmp_path, capsys):
    code, out, err = bench(run_args(tmp_path, *argv), capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    line = error_line(err)
    for fragment in fragments:
        assert fragment in line
    if listed is not None:
        assert listed in valid_names(line)
    assert_nothing_written(tmp_path)


def test_data_root_without_the_files_names_the_folder_and_the_package(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = bench(run_args(tmp_path, "--method", "ce", "--data-root", str(empty)), capsys)
    assert code == 2
    assert out == ""
    line = error_line(err)
    assert str(empty) in line
    assert "apt-get install dataset-fashion-mnist" in line


def test_cuda_on_a_cpu_only_machine(tmp_path, capsys):
    code, out, err = bench(run_args(tmp_path, "--method", "ce", "--device", "cuda"), capsys)
    assert code == 2
    assert out == ""
    assert "--device cuda" in error_line(err)


def test_pretrained_with_a_non_timm_backbone(tmp_path, capsys):
    code, out, err = bench(run_args(tmp_path, "--method", "ce", "--backbone", "smallcnn", "--pretrained"), capsys)
    assert code == 2
    assert out == ""
    line = error_line(err)
    assert "smallcnn" in line and "timm" in line


# These three are found only once the trainer has started: after the run folder is made (and
# "run folder: ..." printed), for the last one also after the data are loaded. See the report:
# check_run_config (bench/cli.py) should resolve the device, find the data files and check
# --pretrained/--weights against the backbone before new_run_dir.
LATE_CHECKS = "bug: checked only after new_run_dir() in cmd_run (bench/cli.py), not in check_run_config"


@pytest.mark.parametrize("argv", [
    pytest.param(["--device", "cuda"], id="cuda"),
    pytest.param(["--data-root", "EMPTY"], id="empty-data-root"),
    pytest.param(["--pretrained"], id="pretrained-smallcnn"),
])
def test_late_checks_also_fail_before_the_run_folder(argv, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    code, _, err = bench(run_args(tmp_path, "--method", "ce", *argv), capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert_nothing_written(tmp_path)


def test_unknown_noise_model_is_named_even_without_a_rate(tmp_path, capsys):
    code, _, err = bench(run_args(tmp_path, "--method", "ce", "--noise", "nosuchnoise"), capsys)
    assert code == 2
    assert "unknown noise model 'nosuchnoise'" in error_line(err)


# --- resume ---------------------------------------------------------------------------------------

def test_resume_from_a_folder_without_checkpoint(tmp_path, capsys):
    empty = tmp_path / "run"
    empty.mkdir()
    code, out, err = bench(["run", "--resume", str(empty), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    line = error_line(err)
    assert str(empty) in line and "checkpoint" in line
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "m.db").exists()


def test_resume_refuses_a_different_method(tmp_path, capsys):
    # only the two files resume_config looks for; the flags are checked before either is read
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps(RunConfig(method="co-teaching").to_dict()))
    code, out, err = bench(["run", "--resume", str(run), "--method", "ce",
                            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    line = error_line(err)
    assert "--resume" in line and "--method" in line
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json"]


# --- argparse errors ------------------------------------------------------------------------------

def test_unknown_subcommand_in_process(capsys):
    code, out, err = bench(["frobnicate"], capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    line = error_line(err)
    assert "frobnicate" in line and "run" in line


def test_unknown_flag(tmp_path, capsys):
    code, _, err = bench(run_args(tmp_path, "--method", "ce", "--nosuchflag", "1"), capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "--nosuchflag" in error_line(err)


# --- the same through a real process: exit status, no traceback ------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("argv, fragment", [
    pytest.param(["frobnicate"], "frobnicate", id="unknown-subcommand"),
    pytest.param(["run", "--method", "nosuchmethod"], "unknown method 'nosuchmethod'", id="unknown-method"),
])
def test_python_m_bench_exits_2_without_traceback(argv, fragment, tmp_path):
    if argv[0] == "run":
        argv = run_args(tmp_path, *argv[1:])
    proc = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("bench: error: ")
    assert fragment in proc.stderr
    assert_nothing_written(tmp_path)


# --- --set typing: build_options on a fake method ----------------------------------------------------

@dataclass
class FakeOptions:
    steps: int = 3
    weight: float = 0.5
    warmup: bool = False
    mode: Literal["a", "b"] = "a"
    tau: float | None = None


class FakeMethod(Method):
    """A method that exists only to have one option of each supported type."""

    name = "fake"
    Options = FakeOptions


def test_build_options_defaults():
    assert build_options(FakeMethod, {}) == FakeOptions()


def test_build_options_types_good_values():
    opts = build_options(FakeMethod, {"steps": "7", "weight": "0.25", "warmup": "true", "mode": "b", "tau": "0.1"})
    assert opts == FakeOptions(steps=7, weight=0.25, warmup=True, mode="b", tau=0.1)
    assert type(opts.steps) is int
    assert type(opts.weight) is float
    assert type(opts.warmup) is bool
    assert type(opts.tau) is float
    assert build_options(FakeMethod, {"weight": "2", "tau": "none"}) == FakeOptions(weight=2.0, tau=None)


@pytest.mark.parametrize("raw, value", [("true", True), ("1", True), ("yes", True), ("On", True),
                                        ("false", False), ("0", False), ("no", False), ("OFF", False)])
def test_build_options_booleans(raw, value):
    assert build_options(FakeMethod, {"warmup": raw}).warmup is value


@pytest.mark.parametrize("key, raw", [
    ("steps", "1.5"), ("steps", "many"), ("weight", "heavy"), ("warmup", "maybe"), ("warmup", "2"),
    ("mode", "c"), ("mode", "A"), ("tau", "abc"), ("nosuchkey", "1"),
])
def test_build_options_rejects_bad_values_in_one_line(key, raw):
    with pytest.raises(UsageError) as info:
        build_options(FakeMethod, {key: raw})
    message = str(info.value)
    assert "\n" not in message
    assert key in message
    assert message.startswith(f"--set {key}")


def test_build_options_unknown_key_lists_the_valid_ones():
    with pytest.raises(UsageError, match="valid: mode, steps, tau, warmup, weight"):
        build_options(FakeMethod, {"nosuchkey": "1"})


def test_build_options_bad_literal_lists_the_choices():
    with pytest.raises(UsageError, match="valid values are a, b"):
        build_options(FakeMethod, {"mode": "c"})


# --- last: the background --pretrained run (module docstring) -----------------------------------------

@pytest.mark.slow
def test_pretrained_timm_whose_download_fails_fails_fast(offline_pretrained):
    """huggingface_hub alone would retry five times with back-off per file (about 50 s)."""
    proc, started, tmp = offline_pretrained
    try:
        _, err = proc.communicate(timeout=max(0.0, OFFLINE_LIMIT_S - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"--pretrained without --weights still running after {OFFLINE_LIMIT_S:.0f} s")
    assert proc.returncode == 2
    assert "Traceback" not in err
    line = error_line(err)
    assert "could not download the pretrained weights of timm:resnet18" in line
    assert "--weights PATH" in line and "--no-pretrained" in line and "bench weights fetch" in line
    assert len(err.splitlines()) == 1, err
    assert_nothing_written(tmp)


def test_resume_with_a_damaged_config_fails_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run / "config.json").write_text("{ not json")
    code, _, err = bench(["run", "--resume", str(run)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "config.json is damaged" in error_line(err)


def test_run_puts_back_the_sigterm_handler_it_installs(tmp_path, capsys):
    """`bench run` turns SIGTERM into an interrupt for its own duration only: a process running
    ``main`` in-process keeps its handler, and processes it forks later do not inherit ours."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    code, _, _ = bench(run_args(tmp_path, "--method", "nosuchmethod"), capsys)
    assert code == 2 and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("method,after", [("dividemix", "training epoch"), ("disc", "training epoch"),
                                          ("promix", "training epoch"), ("unicon", "training epoch"),
                                          ("nls", "epoch of the smoothed loss"), ("forward", "corrected epoch")])
def test_a_warm_up_that_leaves_no_epoch_is_one_line(method, after, tmp_path, capsys):
    """Every method with a warm-up checks it one way (``Method.check_warmup``), before training."""
    code, _, err = bench(run_args(tmp_path, "--method", method, "--epochs", "2", "--set", "warmup_epochs=2",
                                  "--subset", "64", "--test-subset", "64"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert error_line(err) == (f"bench: error: {method}: warm-up of 2 epochs leaves no {after} of --epochs 2; "
                               "raise --epochs or --set warmup_epochs=N")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
