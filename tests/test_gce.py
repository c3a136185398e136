"""GCE: L_q by hand, its limits, and its options."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.gce import GCE
from methods.shared import lq_loss


def test_lq_by_hand():
    # z = [2, 0, 0], y = 0: p_y = 0.78699, L_q = (1 - p_y^0.7) / 0.7 = 0.22054
    logits, y = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    p = math.exp(2) / (math.exp(2) + 2)
    assert p == pytest.approx(0.78699, abs=1e-5)
    assert lq_loss(logits, y, 0.7).item() == pytest.approx(0.22054, abs=1e-5)
    assert lq_loss(logits, y, 1.0).item() == pytest.approx(1 - p)  # q = 1: MAE / 2


def test_lq_tends_to_cross_entropy_and_keeps_its_gradient_where_p_underflows():
    logits, y = torch.tensor([[1.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64), torch.tensor([2, 0])
    assert lq_loss(logits, y, 1e-6).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
    far = torch.tensor([[0.0, 200.0]], requires_grad=True)  # p_y = exp(-200): p**q would give NaN
    lq_loss(far, torch.tensor([0]), 0.7).backward()
    assert torch.isfinite(far.grad).all()


def test_q_must_lie_in_zero_one():
    assert build_options(GCE, {}).q == 0.7
    for bad in ("0", "1.5"):
        with pytest.raises(UsageError, match="outside"):
            build_options(GCE, {"q": bad})


def test_truncated_lq_and_pruning_by_hand():
    """z = [2, 0, 0], y = 0, w = 1: 0.22054 - L_q(0.5) = 0.22054 - 0.54918 = -0.32864; pruning
    keeps p_y = 0.787 (L_q 0.22 < 0.549) and drops p_y = 0.3 (L_q 0.81355 > 0.54918)."""
    from methods.gce import lq_of, truncated_lq

    out = truncated_lq(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), torch.ones(1), 0.7, 0.5)
    assert out.item() == pytest.approx(-0.32864, abs=1e-5)
    assert lq_of(torch.tensor(0.3), 0.7).item() == pytest.approx(0.81355, abs=1e-5)
    assert lq_of(torch.tensor(0.5), 0.7).item() == pytest.approx(0.54918, abs=1e-5)
    assert truncated_lq(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), torch.zeros(1), 0.7, 0.5).item() == 0


@pytest.mark.slow
def test_truncated_run_prunes_on_schedule(tmp_path):
    from helpers import make_trainer

    tr = make_trainer(tmp_path, method="gce", noise="sym", noise_rate=0.4, subset=300, epochs=12, batch_size=100,
                      method_options={"truncated": "true"})
    m = tr.method
    assert (m.start, m.every) == (4, 1)  # 40/120 and 10/120 of 12 epochs
    e0 = tr.run_epoch(0)
    assert e0["gce_kept"] == 1.0 and torch.all(m.state["w"] == 1)
    tr.run_epoch(1)
    tr.run_epoch(2)
    e3 = tr.run_epoch(3)  # epoch + 1 = start_prune: the first pruning
    assert e3["gce_kept"] < 1.0 and "clean_auc" in e3
