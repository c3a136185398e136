"""Shared test helpers: run the command line in-process, read metric curves back from MLflow,
build a trainer on a small Fashion-MNIST subset, and check that resume equals no interruption."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.training.config import Placement, RunConfig
from bench.training.resolve import RunSpec
from bench.training.trainer import Trainer
from methods.base import Generators


def tracking_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp}/m.db"


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
