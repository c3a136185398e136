"""The first minutes of a user: `bench list`, `--help` and usage errors answer without importing
torch, scipy or MLflow (from the cached catalogue, which equals a fresh build); help that shows
defaults, marks required flags, describes every flag and gives an example per subcommand;
suggestions for mistyped flags and misplaced `--set` keys; every preset listed; `bench ui`
with one worker, no repeated warnings, opened on the experiment's runs page."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.training import catalogue as cat_mod
from tests.helpers import rendered

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "scipy", "mlflow", "pandas", "matplotlib", "sklearn", "timm")


def imported(*argv: str, tmp: Path, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    """Run ``python -m bench ARGV`` with -X importtime: (exit code, top-level packages imported, stderr)."""
    env = env or {**os.environ, "PYTHONPATH": str(ROOT)}  # the session's catalogue cache (tests/conftest.py)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", *argv], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120)
    mods = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    return proc.returncode, mods, err


@pytest.mark.parametrize("argv,code", [
    (("list",), 0),
    (("list", "methods", "--verbose"), 0),
    (("run", "--help"), 0),
    (("run", "--method", "nosuch"), 2),
    (("run", "--method", "ce", "--noise", "sym", "--noise-rate", "1.5"), 2),
    (("run", "--method", "dividemix", "--set", "p_threshold=high"), 2),
    (("run", "--method", "ce", "--backbone", "resnet"), 2),
    (("sweep", "--methods", "ce,nosuch", "--noise", "sym:0.2"), 2),
])
def test_list_help_and_usage_errors_import_no_heavy_package(argv, code, tmp_path):
    got, mods, err = imported(*argv, tmp=tmp_path)
    assert got == code, err
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))
    if code == 2:
        assert err.strip().startswith("bench: error:") and len(err.strip().splitlines()) == 1, err


def test_the_cached_catalogue_equals_a_fresh_build_from_the_sources():
    """What `bench list` reads is the file cached under the sources' fingerprint, and it holds
    exactly what the registries give now."""
    path = cat_mod.cache_path()
    assert path.parent == Path(os.environ["BENCH_CACHE_DIR"]), "tests never use the user's cache"
    data = json.loads(path.read_text())
    assert data["fingerprint"] == cat_mod.fingerprint()
    assert data == json.loads(json.dumps(cat_mod.build()))


def test_a_fresh_checkout_builds_the_catalogue_once_then_reads_it(tmp_path):
    """No cached file (a fresh checkout, or a source changed): the first command builds and
    writes it, atomically (no temporary file left), and the next one reads it without torch."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run([sys.executable, "-m", "bench", "list", "methods"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"catalogue-{cat_mod.fingerprint()}.json"]
    code, mods, err = imported("list", "methods", tmp=tmp_path, env=env)
    assert code == 0 and not mods & set(HEAVY), (err, sorted(mods & set(HEAVY)))


def test_a_stale_or_torn_cached_catalogue_is_rebuilt(tmp_path, monkeypatch):
    """A cached file that does not hold its fingerprint's catalogue is built again and replaced;
    only the newest KEEP catalogues stay."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    for i in range(cat_mod.KEEP + 2):
        (tmp_path / f"catalogue-old{i}.json").write_text("{}")
        os.utime(tmp_path / f"catalogue-old{i}.json", (1e9 + i, 1e9 + i))
    path = cat_mod.cache_path()
    path.write_text('{"fingerprint": "')  # torn
    assert cat_mod._load_or_build() == json.loads(json.dumps(cat_mod.build()))
    assert json.loads(path.read_text())["fingerprint"] == cat_mod.fingerprint()
    kept = {p.name for p in tmp_path.glob("catalogue-*.json")}
    assert kept == {path.name, *(f"catalogue-old{i}.json" for i in range(3, cat_mod.KEEP + 2))}  # the newest


@pytest.mark.slow
def test_a_run_imports_only_its_own_method_module(tmp_path):
    code = ("import sys; from bench.training.catalogue import method_class; method_class('ce'); "
            "print(sorted(m for m in sys.modules if m.startswith('methods.')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "['methods.base', 'methods.ce']"  # no DivideMix, so no scipy or scikit-learn


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out, todo = [], [("", build_parser())]
    while todo:
        name, parser = todo.pop()
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {k}".strip(), p) for k, p in action.choices.items()]
    return out


def test_every_flag_is_described_and_every_subcommand_has_an_example():
    for name, parser in _parsers():
        assert "examples:" in (parser.epilog or ""), name
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help) > 10, (name, action.option_strings)


def test_help_shows_defaults_and_marks_required_flags(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--method NAME" in text and "required unless --resume" in text
    assert "total epochs (generic default: 20)" in text and "(default: auto)" in text
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 5000)" in text and "(default: 1)" in text


@pytest.mark.parametrize("argv,expected", [
    (["run", "--method", "ce", "--lrr", "0.1"], "unrecognized argument --lrr (did you mean --lr?)"),
    (["run", "--method", "ce", "--noise-rte", "0.1"], "did you mean --noise-rate"),
    (["table", "--experimnt", "x"], "did you mean --experiment"),
    (["run", "--method", "ce", "--set", "lr=abc"], "lr is a run option, not a method or data-set option; use --lr abc"),
    (["run", "--method", "ce", "--set", "batch-size=64"], "use --batch-size 64"),
])
def test_suggestions(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_every_preset_is_listed_and_paper_resolves(capsys):
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    from bench.training.presets import PRESETS

    for name in [*PRESETS, "paper", "paper-vit"]:
        assert f"  {name} " in out, name
    from bench.training.presets import get_preset

    assert get_preset("paper", "cifar100").name == "cifar100"
    assert get_preset("paper-vit", "clothing1m").name == "clothing1m-vit"


@pytest.mark.slow
def test_bench_ui_one_worker_quiet_and_on_the_runs_page(tmp_path):
    """`bench ui` opens the runs list in the model-training mode with the harness's columns, as
    rendered by headless Chromium (the UI keeps no default columns: a saved view does it)."""
    from bench.training.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "fmnist")
    exp_id = tracker.experiment_id
    tracker.start("ce-run", {"method": "ce", "dataset": "fashion-mnist", "noise": "sym:0.4", "seed": "1",
                             "env.hardware": "CPU"})
    tracker.log_metrics({"best_test_acc": 0.8, "last_test_acc": 0.75, "wall_clock_s": 12.5}, step=1)
    tracker.end()
    tracker.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--tracking-uri", uri, "--experiment", "fmnist",
                             "--port", "5917", "--no-browser"], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        deadline, lines = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "MLflow UI:" in line or not line:
                break
        url = f"http://127.0.0.1:5917/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=bench"
        assert f"MLflow UI: {url}" in "".join(lines), "".join(lines)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        args = [Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0") for c in children]
        assert any(b"mlflow" in a and a[a.index(b"--workers") + 1] == b"1" for a in args), args
        # no job runner (GenAI jobs only; five Huey consumers that double the time to stop)
        grandchildren = [g for c in children for g in Path(f"/proc/{c}/task/{c}/children").read_text().split()]
        jobs = [Path(f"/proc/{g}/cmdline").read_bytes() for g in grandchildren]
        assert grandchildren and not any(b"_job_runner" in j for j in jobs), jobs
        dom = rendered(url, tmp_path / "profile", budget_ms=8000, width=2600)  # 20 s of virtual time cost 11 s
        shown = set(re.findall(r'col-id="((?:tags|metrics)\.`[^`]+`)"', dom))
        assert shown == {"tags.`method`", "tags.`dataset`", "tags.`noise`", "tags.`seed`", "tags.`env.hardware`",
                         "metrics.`best_test_acc`", "metrics.`last_test_acc`", "metrics.`wall_clock_s`"}, shown
        # the model-training mode: its menu (the model registry), not the GenAI one (judges)
        assert ">Model registry<" in dom and ">Judges<" not in dom and ">sym:0.4<" in dom
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    text = "".join(lines) + rest
    assert "DeprecationWarning" not in text and "Traceback" not in text, text


def test_readme_quick_start_is_what_ci_runs_in_a_fresh_venv():
    """The Quick start makes and activates a virtual environment (a stock Debian refuses pip
    outside one) and CI runs its two blocks literally; the CPU-only wheel is named."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = {}
    for tag in ("setup", "test"):
        after = readme.split(f"<!-- ci: {tag} -->\n", 1)[1]
        blocks[tag] = after.split("```sh\n", 1)[1].split("```", 1)[0].strip()
    assert "python3 -m venv .venv" in blocks["setup"] and ". .venv/bin/activate" in blocks["setup"]
    assert "python -m bench run" in blocks["setup"] and blocks["test"] == "python -m pytest"
    assert "download.pytorch.org/whl/cpu" in readme
    assert 'readme_block setup' in ci and 'eval "$setup"' in ci and 'eval "$tests"' in ci and "rm -rf .venv" in ci
