"""Tests every registry entry gets the moment it is registered, in timm's manner: each method
runs every one of its phases on a small in-memory data set with finite losses and its metrics
logged, and a run stopped after its first epoch and resumed ends bit-equal to an uninterrupted
one (CPU); each data set reads its fixture (tests/fixtures_data.py); each backbone's forward
shape is tested in tests/test_registry.py. The README's "Adding a method" example is run too."""
from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.training.catalogue import catalogue, method_class
from datasets.base import DATASETS
from tests.fixtures_data import MAKERS
from tests.helpers import assert_resume_equals_uninterrupted, metric_curve, spec_of, tracking_uri

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3


def run_args(name: str) -> tuple[str, ...]:
    sets = [a for k, v in method_class(name).smoke_options.items() for a in ("--set", f"{k}={v}")]
    return ("--method", name, "--noise", "sym", "--noise-rate", "0.4", "--subset", "120", "--batch-size", "40",
            "--epochs", str(EPOCHS), "--augment", "none", "--eval-batch-size", "4096", "--test-subset", "500", *sets)


@pytest.mark.parametrize("name", catalogue().methods.names())
def test_every_method_runs_its_phases_and_resumes_bit_equal(name, tmp_path, monkeypatch):
    cls = method_class(name)
    step, keys = cls.train_step, set()

    def spy(self, batch, epoch, phase):  # what a method is handed: never the clean labels
        keys.update(batch)
        return step(self, batch, epoch, phase)

    monkeypatch.setattr(cls, "train_step", spy)
    full, resumed = assert_resume_equals_uninterrupted(tmp_path, run_args(name), 1, ("test_acc", "train_loss"))
    for key, value in full["state"].items():  # per-sample state (dataset-indexed) survives the resume too
        assert torch.equal(value, resumed["state"][key]), key
    assert keys and not any("clean" in k for k in keys), keys
    # the views it asked for are the shared ones and those it declares (`bench list` shows them)
    assert keys - {"index", "label"} <= {"train", "plain", *cls.own_views}, keys
    assert full["models"], "the method checkpoints its models"
    finished = MlflowClient(tracking_uri(tmp_path)).search_runs(["1"], "attributes.status = 'FINISHED'")
    assert len(finished) == 2  # the uninterrupted run and the resumed one
    for run in finished:
        losses = metric_curve(tmp_path, run.info.run_id, "train_loss")
        assert len(losses) == EPOCHS and all(math.isfinite(v) for v in losses), losses
        assert len(metric_curve(tmp_path, run.info.run_id, "test_acc")) == EPOCHS


def test_a_method_context_holds_no_clean_labels():
    import dataclasses

    from methods.base import MethodContext

    assert not [f.name for f in dataclasses.fields(MethodContext) if "clean" in f.name or "true" in f.name]


def test_every_data_set_has_a_fixture_of_its_real_layout():
    # Fashion-MNIST is read from Debian's dataset-fashion-mnist itself (tests/test_data.py)
    assert set(DATASETS.names()) - {"fashion-mnist"} == set(MAKERS)


def test_the_readme_example_method_trains(tmp_path):
    """The "Adding a method" example, exactly as README.md has it, registered and run."""
    from bench.training.trainer import Trainer
    from methods.base import METHODS

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Adding a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("readme_example")  # a module of its own, as methods/mymethod.py would be
    sys.modules[module.__name__] = module
    exec(compile(code, "README.md (Adding a method)", "exec"), module.__dict__)
    try:
        spec = spec_of(method="mymethod", noise="sym", noise_rate=0.4, subset=100, batch_size=50, epochs=2,
                       out=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                       method_options={"temperature": "2"})
        run_dir = tmp_path / "runs" / "r"
        run_dir.mkdir(parents=True)
        trainer = Trainer(spec, run_dir)
        summary = trainer.run()
        assert summary["status"] == "finished" and 0 <= summary["last_test_acc"] <= 1
        assert int(trainer.method.state["seen"].sum()) == 2 * 100  # every sample, each epoch, by its index
    finally:
        METHODS.remove("mymethod")
        del sys.modules[module.__name__]
