"""Peer loss and CORES^2 phase 1: the sheet's
hand-checked values, the alpha and beta plans stretched over a run's epochs, the learning-rate
division, and short runs (the peer batch, the sieve's prior update and detection metrics)."""
from __future__ import annotations

import pytest
import torch
from helpers import make_trainer

from methods.cores import BETA_PLAN, cores_loss, official_epoch
from methods.peer import peer_alpha, stable_ce


def test_peer_term_by_hand():
    """z = [2, 0, 0], y = 0; peer z' = [0, 2, 0] with label 2; alpha 1: 0.23953 - 2.23945 = -1.99992."""
    ce = stable_ce(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    peer = stable_ce(torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([2]))
    assert (ce - peer).item() == pytest.approx(-1.99992, abs=1e-5)


@pytest.mark.parametrize("plan,epoch,expected", [("sparse", 19, 0.0), ("sparse", 39, 1.0), ("sparse", 89, 2.0),
                                                 ("sparse", 139, 5.0), ("uniform", 39, 0.1), ("uniform", 40, 1.0),
                                                 ("uniform", 139, 2.5)])
def test_peer_alpha_plans_at_official_epochs(plan, epoch, expected):
    assert peer_alpha(epoch, 300, plan, 10) == pytest.approx(expected)


def test_peer_alpha_stretched_over_the_run_and_cifar100_plan():
    assert peer_alpha(3, 30, "sparse", 10) == peer_alpha(30, 300, "sparse", 10)
    assert peer_alpha(99, 250, "uniform", 100) == 0 and peer_alpha(100, 250, "uniform", 100) == pytest.approx(0.95)


def test_cores_by_hand():
    """z = [2, 0, 0], pi = [0.5, 0.3, 0.2], beta 2: l = 0.23954 - 2 x 1.23954 = -2.23954; the sieve
    keeps y = 0 (score -1.33333) and drops y = 1 (0.66667)."""
    z, pi = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0.5, 0.3, 0.2])
    loss, kept, score = cores_loss(z, torch.tensor([0]), pi, 2.0, sieve=False)
    assert loss.item() == pytest.approx(-2.23954, abs=1e-5) and bool(kept)
    _, kept, score = cores_loss(z, torch.tensor([0]), pi, 2.0, sieve=True)
    assert bool(kept) and score.item() == pytest.approx(-1.33333, abs=1e-5)
    loss, kept, score = cores_loss(z, torch.tensor([1]), pi, 2.0, sieve=True)
    assert not bool(kept) and score.item() == pytest.approx(0.66667, abs=1e-5) and loss.item() == 0
    # lr at official epoch 25: 0.1 / (1 + 1.03448) = 0.04915
    assert 0.1 / (1 + BETA_PLAN[25]) == pytest.approx(0.04915, abs=1e-5)
    assert official_epoch(29, 30) == 96 and official_epoch(0, 30) == 0


@pytest.mark.slow
def test_peer_short_run_divides_the_lr_and_restores_it(tmp_path):
    tr = make_trainer(tmp_path, method="peer", noise="sym", noise_rate=0.4, subset=300, epochs=20, batch_size=100)
    m = tr.method
    assert m.plan == "uniform"  # 40%: the official "uniform/random" plan
    lr = m.optimizers["net"].param_groups[0]["lr"]
    e = 5  # official epoch 75: alpha in 1 -> 2
    metrics = tr.run_epoch(e)
    assert metrics["peer_alpha"] > 1 and metrics["lr"] == pytest.approx(lr / (1 + metrics["peer_alpha"]))
    assert "loss_peer" in metrics and m.optimizers["net"].param_groups[0]["lr"] == pytest.approx(lr)


@pytest.mark.slow
def test_cores_short_run_sieves_updates_the_prior_and_reports_detection(tmp_path):
    tr = make_trainer(tmp_path, method="cores", noise="sym", noise_rate=0.4, subset=300, epochs=3, batch_size=100)
    m = tr.method
    torch.testing.assert_close(m.state["prior"].sum(), torch.tensor(1.0))
    e0 = tr.run_epoch(0)
    assert e0["cores_beta"] == 0 and e0["cores_sieved_out"] == 0  # no sieve before official epoch 31
    e2 = tr.run_epoch(2)  # official epoch 66: sieve on, beta 2
    assert e2["cores_beta"] == 2.0 and 0 < e2["cores_sieved_out"] < 1
    assert "clean_auc" in e2 and "clean_precision" in e2
    assert not torch.allclose(m.state["prior"], m.prior0)  # the prior follows what the sieve kept
