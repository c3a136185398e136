"""The Python face (``bench.run``, ``bench.load_runs``): README's example as written, the same
one-line errors as the command line, and progress through logging (on stderr for the command
line, nowhere for a library caller who configured no logging)."""
from __future__ import annotations

import contextlib
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench.cli import main
from bench.common.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(method="ce", dataset="fashion-mnist", noise="sym", noise_rate=0.4, subset=300, test_subset=200,
             batch_size=100, epochs=2)


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_reads_its_run_back(tmp_path, monkeypatch, capsys, caplog):
    """The example as README shows it, in ``tmp_path`` (its store and run folders go under
    ``results/`` of the current folder): a finished run, found again by load_runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scope: dict = {}
    with caplog.at_level(logging.INFO, logger="bench"):
        exec(compile(readme_example(), "README.md (Python API)", "exec"), scope)
    summary, runs = scope["summary"], scope["runs"]
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    assert summary["method"] == "ce" and summary["noise"] == "sym" and 0 <= summary["last_test_acc"] <= 1
    assert Path(summary["run_dir"]).resolve().is_relative_to(tmp_path.resolve())
    assert (tmp_path / "results" / "mlflow.db").is_file()
    assert list(runs["run_id"]) == [summary["run_id"]]
    row = runs.iloc[0]
    assert row["last_test_acc"] == pytest.approx(summary["last_test_acc"])
    assert row["params"]["subset"] == "1000" and row["setting"] == "sym:0.4"
    assert summary["run_dir"] in capsys.readouterr().out  # the example's own print
    # the progress lines went through logging, at INFO, from the trainer and its record
    said = [r.getMessage() for r in caplog.records if r.name.startswith("bench")]
    assert any(m.startswith("epoch 2/2: train_loss ") for m in said), said
    assert any(m.startswith("run folder: ") for m in said) and any(m.startswith("setup_time_s ") for m in said)


def test_a_library_run_writes_nothing_on_stderr_without_logging(tmp_path, capsys):
    """No logging configured (the ``bench`` logger at its default level, no handler of ours):
    the run says nothing on stderr; the command line, same request, says its lines there."""
    assert not logging.getLogger("bench").handlers
    summary = bench.run(**QUICK, out=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                        progress="lines")
    assert summary["status"] == "finished"
    assert capsys.readouterr().err == ""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", "--method", "ce", "--dataset", "fashion-mnist", "--noise", "sym", "--noise-rate", "0.4",
                     "--subset", "300", "--test-subset", "200", "--batch-size", "100", "--epochs", "2",
                     "--out", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                     "--progress", "lines"])
    assert code == 0
    lines = err.getvalue().splitlines()
    assert [line for line in lines if line.startswith("epoch ")][0].startswith("epoch 1/2: train_loss ")
    assert any(line.startswith("run folder: ") for line in lines)
    assert any(line.startswith("setup_time_s ") for line in lines)
    assert any(line.startswith("backbone smallcnn: random initialisation") for line in lines), lines
    assert not logging.getLogger("bench").handlers  # the command line's handler is gone after it


@pytest.mark.parametrize("options, argv", [
    ({"method": "nosuch"}, ["--method", "nosuch"]),
    ({"method": "ce", "noise": "sym"}, ["--method", "ce", "--noise", "sym"]),
    ({"method": "ce", "sets": {"nosuchkey": "1"}}, ["--method", "ce", "--set", "nosuchkey=1"]),
])
def test_bad_input_raises_the_command_lines_one_line(options, argv, tmp_path, capsys):
    where = {"out": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/m.db"}
    with pytest.raises(UsageError) as exc:
        bench.run(**options, **where)
    assert main(["run", *argv, "--out", where["out"], "--tracking-uri", where["tracking_uri"]]) == 2
    assert capsys.readouterr().err.strip() == f"bench: error: {exc.value}"
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_options_and_progress_values_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown run option 'nosuch'"):
        bench.run(method="ce", nosuch=1)
    with pytest.raises(UsageError, match="--progress sometimes: valid values are auto, bar, lines"):
        bench.run(method="ce", progress="sometimes")


def test_load_runs_of_an_unknown_experiment_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such experiment"):
        bench.load_runs("nosuch", tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_import_bench_stays_light():
    """``import bench`` (every ``python -m bench`` command starts with it) imports neither torch,
    nor pandas, nor MLflow."""
    code = "import sys, bench; print(sorted(m for m in ('torch', 'pandas', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
