"""Forward and backward correction: the losses and the anchor-point
estimate on the sheet's hand-checked values, forward correction with the true T recovering the
clean-label optimum where it is computable, the oracle option's guard, and a short run that
estimates T after the CE warm-up and logs its error against the realised T."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import make_trainer

from bench.common.errors import UsageError
from bench.training.diagnostics import transition_error
from methods.losscorrection import backward_loss, forward_loss
from methods.shared import anchor_transition

T = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.2, 0.0, 0.8]])
Q = torch.tensor([[0.78699, 0.10651, 0.10651]]).log()


def test_forward_and_backward_by_hand():
    """q T = [0.65089, 0.24260, 0.10651]; forward y = 1 -> 1.41633; backward y = 1 -> 2.08570,
    y = 0 -> -0.22199 (negative: the backward loss is unbounded below)."""
    assert forward_loss(Q, torch.tensor([1]), T).item() == pytest.approx(1.41633, abs=1e-4)
    t_inv = torch.linalg.inv(T)
    torch.testing.assert_close(t_inv[1], torch.tensor([0.07692, 1.23077, -0.30769]), atol=1e-5, rtol=0)
    assert backward_loss(Q, torch.tensor([1]), t_inv).item() == pytest.approx(2.08570, abs=1e-4)
    assert backward_loss(Q, torch.tensor([0]), t_inv).item() == pytest.approx(-0.22199, abs=1e-4)


def test_anchor_points_by_hand():
    eta = np.array([[.9, .05, .05], [.7, .2, .1], [.1, .8, .1], [.2, .6, .2], [.05, .15, .8], [.1, .2, .7]])
    np.testing.assert_allclose(anchor_transition(eta, False), [[.9, .05, .05], [.1, .8, .1], [.05, .15, .8]])
    # the 97th percentile of six values ('higher') is the column's maximum: each column drops it
    np.testing.assert_allclose(anchor_transition(eta, True), [[.7, .2, .1], [.2, .6, .2], [.1, .2, .7]])
    assert eta[0, 0] == .9  # filtered on a copy, not in place


@pytest.mark.slow
def test_forward_correction_with_the_true_t_recovers_the_clean_optimum():
    """One input whose true class follows pi; given labels follow pi T. The expected forward loss
    sum_j (pi T)_j (-log (q T)_j) is minimised at q = pi (T invertible); plain CE at q = pi T."""
    pi = torch.tensor([0.6, 0.3, 0.1])
    noisy = pi @ T
    z = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        loss = sum(noisy[j] * forward_loss(z, torch.tensor([j]), T) for j in range(3))
        loss.backward()
        opt.step()
    torch.testing.assert_close(torch.softmax(z, 1)[0], pi, atol=2e-3, rtol=0)
    assert (noisy - pi).abs().max() > 0.05  # CE's optimum, the noisy distribution, is elsewhere


def test_transition_error_is_relative_l1():
    assert transition_error(T, T.numpy()) == 0
    est = np.eye(3)
    assert transition_error(est, T.numpy()) == pytest.approx(np.abs(np.eye(3) - T.numpy()).sum() / 3)


@pytest.mark.slow
def test_short_run_estimates_t_after_the_warm_up_and_logs_its_error(tmp_path):
    tr = make_trainer(tmp_path, method="forward", noise="pairflip", noise_rate=0.4, subset=300, epochs=2,
                      batch_size=100)
    m0 = tr.run_epoch(0)
    assert m0["correction_stage"] == 0 and "t_error" not in m0
    m1 = tr.run_epoch(1)
    t = tr.method.state["T"]
    assert m1["correction_stage"] == 1 and bool(tr.method.state["t_ready"])
    torch.testing.assert_close(t.sum(1), torch.ones(10))
    assert math.isfinite(m1["t_error"]) and m1["t_error"] > 0


@pytest.mark.slow
def test_oracle_t_is_the_noise_models_nominal_t_and_refused_without_one(tmp_path):
    tr = make_trainer(tmp_path / "a", method="backward", noise="sym", noise_rate=0.4, subset=200, epochs=1,
                      batch_size=100, method_options={"t_source": "true"})
    t = tr.method.state["T"]
    assert t[0, 0].item() == pytest.approx(0.6) and t[0, 1].item() == pytest.approx(0.4 / 9)
    m = tr.run_epoch(0)
    assert m["t_error"] < 0.6 and m["t_pinv"] == 0  # the nominal T against the realised one on 200 samples
    with pytest.raises(UsageError, match="t_source=estimate"):
        make_trainer(tmp_path / "b", method="forward", noise="instance", noise_rate=0.4, subset=200, epochs=1,
                     batch_size=100, method_options={"t_source": "true"})
