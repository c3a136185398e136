"""The README's "Adding a method" example is a tested artefact: it says adding a method is one
file, so the example must pass the linters as that file and, written as ``methods/<name>.py``
into a temporary copy of the repository with nothing else changed, be found, listed, covered by
the import contracts and pass every registry test a method gets. The working tree is never
written: everything happens in the copy."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import copy_sources

ROOT = Path(__file__).resolve().parent.parent


def example() -> tuple[str, str]:
    """The fenced python block following "### Adding a method" in README.md, and the name it registers."""
    section = (ROOT / "README.md").read_text().split("### Adding a method\n", 1)[1].split("\n### ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, 'no ```python block under "### Adding a method"'
    code = match.group(1)
    name = re.search(r'@METHODS\.register\("(\w+)"', code)
    assert name, "the example registers no method"
    return code, name.group(1)


def tool(name: str) -> str:
    """A command-line tool of this environment (next to its Python), or skip."""
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def test_the_example_passes_ruff_as_a_method_module():
    code, name = example()
    proc = subprocess.run([tool("ruff"), "check", "--no-cache", "--stdin-filename", f"methods/{name}.py", "-"],
                          input=code, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def copy_with_example(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """A copy of the repository's sources and tests with the example added as one new file."""
    code, name = example()
    repo = copy_sources(tmp_path / "repo", {f"methods/{name}.py": code})
    env = {**os.environ, "PYTHONPATH": str(repo), "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    return repo, name, env


@pytest.mark.slow
def test_the_example_as_one_new_file_is_a_listed_linted_and_tested_method(copy_with_example):
    repo, name, env = copy_with_example
    listed = subprocess.run([sys.executable, "-m", "bench", "list", "methods"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:1] == [name] for line in listed.stdout.splitlines()), listed.stdout

    contracts = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=repo, env=env, capture_output=True,
                               text=True, timeout=300)
    assert contracts.returncode == 0, contracts.stdout + contracts.stderr

    # the tests every registered method gets, selected by the example's name, plus those that
    # check the discovery and the contract (which hold for the copy with the new file)
    select = f"{name} or discovered or independence_contract or bench_list"
    tests = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-k", select,
                            "tests/test_registry.py", "tests/test_registry_entries.py"],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-2000:]
    for test in ("tests/test_registry.py::test_method_class_contract",
                 "tests/test_registry_entries.py::test_every_method_runs_its_phases_and_resumes_bit_equal"):
        assert f"PASSED {test}[{name}]" in tests.stdout, (test, tests.stdout[-6000:])
