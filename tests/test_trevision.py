"""T-Revision: the reweighted loss and the official accumulation
bug on the sheet's hand-checked values, the three stages of a short run (T estimated after the
CE stage, beta detached while reweighting, dT learning while revising), and the stage split."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import make_trainer

from bench.common.errors import UsageError
from methods.trevision import reweighted_loss

T = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.2, 0.0, 0.8]])
Z = torch.tensor([[0.78699, 0.10651, 0.10651]]).log()


def test_reweighted_loss_by_hand():
    """(T^T p)_1 = 0.24260, beta = 0.43902, CE = 2.23954, loss = 0.98320."""
    loss, beta = reweighted_loss(Z, torch.tensor([1]), T, detach=True)
    assert beta.item() == pytest.approx(0.43902, abs=1e-5)
    assert loss.item() == pytest.approx(0.98320, abs=1e-4)


def test_official_accumulation_bug_by_hand():
    """With dT = 0.01: (T_i^T p)_1 = 0.25260, 0.26260, 0.27260 for samples 0, 1, 2 under the
    official loop; 0.25260 for all under the paper's loss."""
    z, y, d = Z.repeat(3, 1), torch.tensor([1, 1, 1]), torch.full((3, 3), 0.01)
    p1 = torch.softmax(z, 1)[:, 1]
    _, beta = reweighted_loss(z, y, T + d, detach=False, accumulate=d)
    torch.testing.assert_close(p1 / beta, torch.tensor([0.25260, 0.26260, 0.27260]), atol=1e-5, rtol=0)
    _, beta = reweighted_loss(z, y, T + d, detach=False)
    torch.testing.assert_close(p1 / beta, torch.full((3,), 0.25260), atol=1e-5, rtol=0)


def test_beta_is_detached_while_reweighting_and_carries_gradient_while_revising():
    d = torch.zeros(3, 3, requires_grad=True)
    z = Z.clone().requires_grad_(True)
    loss, _ = reweighted_loss(z, torch.tensor([1]), T + d, detach=False)
    loss.backward()
    assert d.grad is not None and d.grad.abs().sum() > 0
    d2 = torch.zeros(3, 3, requires_grad=True)
    loss, _ = reweighted_loss(Z, torch.tensor([1]), T + d2, detach=True)
    assert not loss.requires_grad or torch.autograd.grad(loss, d2, allow_unused=True)[0] is None


@pytest.mark.slow
def test_three_stages_in_a_short_run(tmp_path):
    tr = make_trainer(tmp_path, method="trevision", noise="pairflip", noise_rate=0.4, subset=300, epochs=3,
                      batch_size=100, method_options={"estimate_epochs": "1", "reweight_epochs": "1"})
    m = tr.method
    e0 = tr.run_epoch(0)
    assert e0["trevision_stage"] == 0 and "t_error" not in e0
    e1 = tr.run_epoch(1)
    assert e1["trevision_stage"] == 1 and math.isfinite(e1["t_error"]) and 0 < e1["beta_mean"]
    t_hat = m.state["T"].clone()
    torch.testing.assert_close(t_hat.sum(1), torch.ones(10))
    assert torch.count_nonzero(m.models["delta"].weight) == 0
    e2 = tr.run_epoch(2)
    assert e2["trevision_stage"] == 2 and torch.count_nonzero(m.models["delta"].weight) > 0  # dT learns
    assert torch.equal(m.state["T"], t_hat)  # T_hat stays; the estimate is T_hat + dT
    assert e2["t_error"] != e1["t_error"]


def test_stage_split_defaults_and_guard(tmp_path):
    tr = make_trainer(tmp_path / "a", method="trevision", noise="sym", noise_rate=0.4, subset=100, epochs=42,
                      batch_size=100)
    assert (tr.method.s1, tr.method.s2) == (2, 22)  # 20 : 200 : 200 of 42 epochs
    with pytest.raises(UsageError, match="no revision epoch"):
        make_trainer(tmp_path / "b", method="trevision", noise="sym", noise_rate=0.4, subset=100, epochs=3,
                     batch_size=100, method_options={"estimate_epochs": "1", "reweight_epochs": "2"})
