"""Shared test helpers: run the command line in-process, read metric curves back from MLflow,
build a trainer on a small Fashion-MNIST subset, and check that resume equals no interruption."""
from __future__ import annotations

import contextlib
import io
import json
import linecache
import os
import shutil
import subprocess
import sys
import traceback
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.utils._python_dispatch import TorchDispatchMode

from bench.cli import main
from bench.common import augment
from bench.training.config import Placement, RunConfig
from bench.training.resolve import RunSpec
from bench.training.trainer import Trainer
from methods.base import Generators, MethodContext


def tracking_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp}/m.db"


def chromium() -> str:
    """Debian's ``chromium`` for the browser tests: skipped with its reason where absent, a
    failure under ``BENCH_REQUIRE_BROWSER=1`` (CI installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        message = "no chromium here: `apt-get install chromium` (Debian) for the browser tests"
        if os.environ.get("BENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def rendered(url: str, profile: Path, budget_ms: int = 15000, width: int = 1280) -> str:
    """The DOM of ``url`` once headless Chromium has run its scripts for ``budget_ms`` of virtual
    time (a wide window: grids draw only the columns in view)."""
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           f"--window-size={width},1000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def copy_sources(repo: Path, files: dict[str, str] | None = None) -> Path:
    """A copy of the repository's sources and tests in ``repo``, with ``files`` (path: text)
    added: a project a test may change (a new method module) without touching this one."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    for entry in ("bench", "methods", "datasets", "tests", "pyproject.toml"):
        src = root / entry
        if src.is_dir():
            shutil.copytree(src, repo / entry, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, repo / entry)
    for path, text in (files or {}).items():
        assert not (repo / path).exists(), f"{path} is in the repository already"
        (repo / path).write_text(text)
    return repo


def table_cli(tmp: Path, experiment: str, *argv: str) -> str:
    """``python -m bench table`` in-process on the store under ``tmp``; its standard output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["table", "--experiment", experiment, "--tracking-uri", tracking_uri(tmp), *argv]) == 0
    return buf.getvalue()


def run_cli(tmp: Path, *extra: str) -> dict:
    """``python -m bench run`` in-process with a store and run folders under ``tmp``; the summary."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["run", "--out", str(tmp / "runs"), "--tracking-uri", tracking_uri(tmp), *extra])
    assert code == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])  # the last stdout line is the summary


def metric_curve(tmp: Path, run_id: str, name: str) -> list[float]:
    history = MlflowClient(tracking_uri(tmp)).get_metric_history(run_id, name)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def fake_generators() -> Generators:
    """The generators a fake method context hands out (fixed seeds)."""
    return Generators(torch=torch.Generator().manual_seed(0), numpy=np.random.default_rng(0))


def _not_in_a_fake_context(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"fake_context has no data: pass {name}= to fake_context (or set ctx.{name})")
    return call


def fake_context(**overrides: Any) -> MethodContext:
    """The real :class:`MethodContext` a method test builds by hand: every field filled with a
    harmless default for a CPU test (3 classes, 4 samples of given label 0, a 2-in linear
    backbone, SGD at lr 0.1, no scheduler, the fixed-seed :func:`fake_generators`), ``overrides``
    replacing them. ``predict_train`` and ``fetch`` fail when called unless given; the artifact
    folder does not exist (a test that writes artifacts passes ``artifact_dir=tmp_path``). A field
    MethodContext lacks is a TypeError, so the tests notice when the context changes."""
    num_train, num_classes = overrides.get("num_train", 4), overrides.get("num_classes", 3)
    values: dict[str, Any] = dict(
        num_classes=num_classes, num_train=num_train, device=torch.device("cpu"), epochs=3, batch_size=4,
        noise_rate=0.4, dataset="fake", noise="sym", pretrained=False,
        make_backbone=lambda: torch.nn.Linear(2, num_classes),
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        make_scheduler=lambda optimizer, epochs: None,
        predict_train=_not_in_a_fake_context("predict_train"), fetch=_not_in_a_fake_context("fetch"),
        given_labels=torch.zeros(num_train, dtype=torch.long),
        artifact_dir=Path("/nonexistent/fake_context-artifacts"), generators=fake_generators)
    values.update(overrides)
    return MethodContext(**values)


def spec_of(**values: Any) -> RunSpec:
    """A RunSpec of ``values`` (fields of RunConfig and Placement), without the resolver's
    defaults from presets and data sets: what tests that build trainers by hand start from."""
    config = RunConfig.from_dict(values)
    place = Placement.from_dict({"progress": False, **values})
    config.validate()
    place.validate()
    return RunSpec(config, place, None, config.hash())


def make_trainer(tmp: Path, **values: Any) -> Trainer:
    """A built Trainer (data, method, models) for ``values``, run folder under ``tmp``."""
    values.setdefault("out", str(tmp / "runs"))
    run_dir = tmp / "runs" / "r"
    run_dir.mkdir(parents=True)
    return Trainer(spec_of(**values), run_dir).build()


def checkpoint(summary: dict) -> dict:
    return torch.load(Path(summary["run_dir"]) / "checkpoint.pt", weights_only=False)["method"]


def assert_resume_equals_uninterrupted(tmp: Path, args: tuple[str, ...], stop_after: int,
                                       metrics: tuple[str, ...]) -> tuple[dict, dict]:
    """Run ``args`` whole, and again stopped after ``stop_after`` epochs then resumed: the metric
    curves and every model's weights must be equal. Returns both runs' checkpoints. The runs
    evaluate on 500 test images unless ``args`` say otherwise (equality needs no more, and the
    10,000-image pass was most of these tests' time)."""
    if "--test-subset" not in args:
        args = (*args, "--test-subset", "500")
    full = run_cli(tmp, *args)
    part = run_cli(tmp, *args, "--stop-after", str(stop_after))
    assert part["status"] == "stopped" and part["epochs_done"] == stop_after
    resumed = run_cli(tmp, "--resume", part["run_dir"])
    assert resumed["run_id"] == part["run_id"]  # continued into the same MLflow run
    assert resumed["epochs_done"] == full["epochs_done"]
    for name in metrics:
        assert metric_curve(tmp, resumed["run_id"], name) == metric_curve(tmp, full["run_id"], name), name
    ka, kb = checkpoint(full), checkpoint(resumed)
    for net, weights in ka["models"].items():
        for key, value in weights.items():
            assert torch.equal(value, kb["models"][net][key]), (net, key)
    return ka, kb


class TableNet(torch.nn.Module):
    """Logits = a learnable row per input id (the input row's first feature)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


class FixedLogits(torch.nn.Module):
    """Logits looked up by each input row's first value (an id); a scale makes it trainable."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()] * self.scale


# --- host-device synchronisation, detected on the CPU ------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
_PROJECT = tuple(str(ROOT / d) + "/" for d in ("methods", "bench"))
_aten = torch.ops.aten
# ops that wait for the device on CUDA whatever their arguments: a value or a shape the host must
# read (item/bool/int/float are _local_scalar_dense; one-argument torch.where is nonzero; CUDA's
# bincount reads its input's max); nonzero_static, topk and sort have static shapes and do not
_ALWAYS_SYNC = frozenset({_aten._local_scalar_dense, _aten.nonzero, _aten.masked_select, _aten._unique,
                          _aten._unique2, _aten.unique_dim, _aten.unique_consecutive, _aten.bincount,
                          _aten.equal, _aten.allclose})
_INDEX_PUT = frozenset({_aten.index_put, _aten.index_put_, _aten._index_put_impl_})
_WATCHED = _ALWAYS_SYNC | _INDEX_PUT | {_aten.index, _aten.repeat_interleave, _aten.lift_fresh}


@dataclass(frozen=True)
class SyncSite:
    """Where a synchronising op was called: the innermost frame in methods/ (else in bench/: the
    trainer's backward of a method's masked indexing, say), and ``via`` the innermost frame in
    bench/ under it (the data path a ``ctx.fetch`` runs). An allowance names a site by file,
    function and source, not by line number: an edit above a site, which other work on the file
    makes often, moves its number but not what it is."""

    op: str
    path: str
    line: int
    function: str
    code: str
    via: str = ""

    def __str__(self) -> str:
        via = f" (via {self.via})" if self.via else ""
        return f"{self.path}:{self.line} in {self.function} [{self.op}]{via}: {self.code}"


def _is_bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncRecorder(TorchDispatchMode):
    """Records the ops that would block the host on CUDA, run on the CPU: those of
    ``_ALWAYS_SYNC``, boolean-mask indexing (``x[mask]``; ``x[mask] = v`` unless ``v`` is a
    Python scalar, which CUDA turns into a sync-free masked_fill), ``repeat_interleave`` without
    ``output_size``, and ``Tensor.tolist``/``numpy``/``cpu`` (patched by :func:`record_syncs`:
    they do not dispatch on the CPU). Left out: ops called by torch.optim (its step counters are
    CPU tensors on CUDA too) and the range checks of ``F.one_hot`` with a class count, which only
    its CPU kernel reads (CUDA relies on a device assert)."""

    def __init__(self, roots: tuple[str, ...] = _PROJECT) -> None:
        super().__init__()
        self.roots = roots  # the folders whose frames a site is attributed to, the method's first
        self.sites: list[SyncSite] = []
        self.muted = 0  # > 0: inside a call whose CPU-only syncs are not counted
        self.lifted: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> tensor of a Python scalar

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No dynamo ``disable`` wrapper around :meth:`__torch_dispatch__`: it imports dynamo (2 s)
        and costs every op; the steps recorded run eagerly."""
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet not in _WATCHED:  # nearly every op: the recorder runs on all of a step's
            return out
        if packet is _aten.lift_fresh:
            self.lifted[id(out)] = out  # made from a Python scalar (a CPU tensor on CUDA too)
        elif self._syncs(func, packet, args, kwargs):
            self.note(str(packet).removeprefix("aten."))
        return out

    def _syncs(self, func: Any, packet: Any, args: tuple, kwargs: dict) -> bool:
        if packet is _aten.index:
            return _is_bool_index(args[1])
        if packet in _INDEX_PUT:
            value = args[2]
            return _is_bool_index(args[1]) and not (self.lifted.get(id(value)) is value and value.numel() == 1)
        if packet is _aten.repeat_interleave:
            return func is _aten.repeat_interleave.Tensor and kwargs.get(
                "output_size", args[1] if len(args) > 1 else None) is None
        return True  # _ALWAYS_SYNC

    def note(self, op: str) -> None:
        if self.muted:
            return
        frames = [f for f, _ in traceback.walk_stack(sys._getframe(2)) if f.f_code.co_filename != __file__]
        project = [f for f in frames if f.f_code.co_filename.startswith(self.roots)]  # innermost first
        if not project or any("/torch/optim/" in f.f_code.co_filename for f in frames[:frames.index(project[0])]):
            return
        own = [f for f in project if f.f_code.co_filename.startswith(self.roots[0])]
        site = own[0] if own else project[0]
        via = "" if site is project[0] else _where(project[0])
        path, line = site.f_code.co_filename, site.f_lineno
        code = linecache.getline(path, line).strip()
        self.sites.append(SyncSite(op, os.path.relpath(path, ROOT), line, site.f_code.co_name, code, via))


def _where(frame: Any) -> str:
    return f"{os.path.relpath(frame.f_code.co_filename, ROOT)}:{frame.f_lineno} in {frame.f_code.co_name}"


@contextlib.contextmanager
def record_syncs(recorder: SyncRecorder) -> Iterator[SyncRecorder]:
    """``recorder`` active, with ``Tensor.tolist``/``numpy``/``cpu`` reporting to it,
    ``F.one_hot`` muting it where CUDA does not sync, and the views a step fetches made with the
    RandAugment dispatch CUDA gets (``auto`` is ``batched`` off the CPU; the CPU's ``subset``
    gathers each op's images by a mask, and the two give the same bits)."""
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy", "cpu")}
    one_hot = torch.nn.functional.one_hot

    def patched(name: str) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            recorder.note(name)
            return originals[name](self, *args, **kwargs)
        return method

    def muted_one_hot(tensor: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
        if num_classes < 0:  # the class count read from the data: a sync on CUDA too
            return one_hot(tensor, num_classes)
        recorder.muted += 1
        try:
            return one_hot(tensor, num_classes)
        finally:
            recorder.muted -= 1

    for name in originals:
        setattr(torch.Tensor, name, patched(name))
    torch.nn.functional.one_hot = muted_one_hot
    try:
        with recorder, augment.use_dispatch("batched"):
            yield recorder
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        torch.nn.functional.one_hot = one_hot


def record_step_syncs(monkeypatch: Any, cls: type) -> SyncRecorder:
    """A recorder of the syncs in method class ``cls``'s ``train_step`` and ``after_step``, what
    ``Trainer._step`` runs of the method, for the first instance that steps in the test (a resumed
    run's method runs the same code again; recording costs a few tenths of a second a run). The
    trainer's backward and optimiser step around them are not recorded: a sync there comes from
    an op of the method's forward, seen already (the backward of ``x[mask]`` is a masked
    ``index_put``), or from the trainer itself. Neither are the epoch hooks
    (``on_epoch_start``/``on_epoch_end``, ``phases``, a phase's ``select``): whole-data work once
    per epoch may read the device."""
    recorder, first = SyncRecorder(), []

    def recorded(fn: Any) -> Any:
        def call(self: Any, *args: Any) -> Any:
            first[:] = first or [self]
            if first[0] is not self:
                return fn(self, *args)
            with record_syncs(recorder):
                return fn(self, *args)
        return call

    for name in ("train_step", "after_step"):
        monkeypatch.setattr(cls, name, recorded(getattr(cls, name)))
    return recorder


def setting_defaults(cls: type, dataset: str, noise: str = "sym", rate: float | None = None, classes: int = 10,
                     epochs: int = 200, pretrained: bool = False) -> dict[str, Any]:
    """The per-setting defaults (bench.common.defaults) of method ``cls`` for a setting, by option."""
    from bench.common.defaults import RunSetting, fill_defaults, per_setting

    filled = fill_defaults(cls.Options(), RunSetting(dataset, noise, rate, classes, epochs, pretrained))
    return {name: getattr(filled, name) for name in per_setting(cls.Options)}


def setting_default(cls: type, option: str, dataset: str, noise: str = "sym", rate: float | None = None,
                    classes: int = 10, epochs: int = 200, pretrained: bool = False, **options: Any) -> Any:
    """One option's per-setting default of method ``cls`` (the others' tables are not asked), with
    the other ``options`` as given."""
    from bench.common.defaults import RunSetting, per_setting

    s = RunSetting(dataset, noise, rate, classes, epochs, pretrained)
    return per_setting(cls.Options)[option](s, cls.Options(**options))
