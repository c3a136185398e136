"""Tests every registry entry gets the moment it is registered, in timm's manner: each method
runs every one of its phases on a small in-memory data set with finite losses and its metrics
logged, and a run stopped after its first epoch and resumed ends bit-equal to an uninterrupted
one (CPU); each data set reads its fixture (tests/fixtures_data.py); each backbone's forward
shape is tested in tests/test_registry.py. The README's "Adding a method" example goes through
these tests as a method module of its own (tests/test_readme_example.py)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.training.catalogue import catalogue, method_class
from datasets.base import DATASETS
from tests.fixtures_data import MAKERS
from tests.helpers import (
    SyncSite,
    assert_resume_equals_uninterrupted,
    metric_curve,
    record_step_syncs,
    tracking_uri,
)

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3

# The host-device syncs a method's step may keep: the trainer reads the device once per epoch,
# and on CUDA each sync inside the step loop stalls the launch queue (tests/helpers.py
# SyncRecorder says what counts). {method: (why, sites)}, each site "path:function: a piece of
# its source line". Any other sync in the method's train_step/after_step fails the method's
# test, and so does a site listed here that no longer syncs.
STEP_SYNCS: dict[str, tuple[str, set[str]]] = {
    "cores": ("an empty sieve takes no optimiser step (StepOutput.step, a Python bool; a zero-loss step would "
              "still apply momentum and weight decay); read only once the sieve is on",
              {"methods/cores.py:train_step: bool(kept.any())"}),
    "coteaching_plus": ("the disagreement set D' sets the kept count int((1 - tau) |D'|) and the peer losses are "
                        "means over it, and an empty D' takes no step (paper) or the official gate; a 0/1-weighted "
                        "static-shape form gives the same gradients but sums the logged loss in another order",
                        {"methods/coteachingplus.py:train_step: disagree.nonzero()"}),
    "disc": ("the clean/hard/weak sets' sizes (one read): the weak set's mixup forwards exactly its members, a "
             "data-dependent batch for the network (BatchNorm); and a zero loss takes no step (DISC.py:319-322)",
             {"methods/disc.py:train_step: torch.stack([clean.sum(), hard.sum(), weak.sum()]).tolist()",
              "methods/disc.py:train_step: loss.item() != 0"}),
    "promix": ("the chosen sets' sizes: mixup and FMix forward only the chosen samples, a data-dependent batch "
               "for the network (BatchNorm), skipped under 2",
               {"methods/promix.py:_promix_step: torch.stack([c.sum() for c in chosen]).tolist()"}),
}


def unexpected_syncs(name: str, sites: list[SyncSite]) -> tuple[list[str], set[str]]:
    """The sites of ``sites`` that STEP_SYNCS does not allow ``name`` (file:line, op, source) and
    the allowed sites that did not sync."""
    allowed = STEP_SYNCS.get(name, ("", set()))[1]

    def matches(site: SyncSite, entry: str) -> bool:
        where, piece = entry.split(": ", 1)
        return where == f"{site.path}:{site.function}" and piece in site.code

    bad = sorted({str(s) for s in sites if not any(matches(s, e) for e in allowed)})
    return bad, {e for e in allowed if not any(matches(s, e) for s in sites)}


def run_args(name: str) -> tuple[str, ...]:
    sets = [a for k, v in method_class(name).smoke_options.items() for a in ("--set", f"{k}={v}")]
    return ("--method", name, "--noise", "sym", "--noise-rate", "0.4", "--subset", "120", "--batch-size", "40",
            "--epochs", str(EPOCHS), "--augment", "none", "--eval-batch-size", "4096", "--test-subset", "500", *sets)


@pytest.mark.slow
@pytest.mark.parametrize("name", catalogue().methods.names())
def test_every_method_runs_its_phases_and_resumes_bit_equal(name, tmp_path, monkeypatch):
    cls = method_class(name)
    step, keys = cls.train_step, set()

    def spy(self, batch, epoch, phase):  # what a method is handed: never the clean labels
        keys.update(batch)
        return step(self, batch, epoch, phase)

    monkeypatch.setattr(cls, "train_step", spy)
    syncs = record_step_syncs(monkeypatch, cls)
    full, resumed = assert_resume_equals_uninterrupted(tmp_path, run_args(name), 1, ("test_acc", "train_loss"))
    bad, stale = unexpected_syncs(name, syncs.sites)
    assert not bad, ("host-device syncs inside the step loop (allow one in STEP_SYNCS only with a reason):\n"
                     + "\n".join(bad))
    assert not stale, f"STEP_SYNCS lists sites of {name} that no longer sync: {stale}"
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


def test_every_step_sync_allowance_names_a_method_and_why():
    names = set(catalogue().methods.names())
    for name, (why, sites) in STEP_SYNCS.items():
        assert name in names and len(why) > 40 and sites, name
        assert all(re.fullmatch(r"(methods|bench)/[\w/]+\.py:\w+: .+", e) for e in sites), sites


def test_a_method_context_holds_no_clean_labels():
    import dataclasses

    from methods.base import MethodContext

    assert not [f.name for f in dataclasses.fields(MethodContext) if "clean" in f.name or "true" in f.name]


def test_every_data_set_has_a_fixture_of_its_real_layout():
    # Fashion-MNIST is read from Debian's dataset-fashion-mnist itself (tests/test_data.py)
    assert set(DATASETS.names()) - {"fashion-mnist", "synthetic"} == set(MAKERS)
