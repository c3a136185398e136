"""Robust losses of issue 15 on the reference sheet's hand-checkable values
(worked from the papers' formulas): SCE, GLS's label smoothing and negative
label smoothing, bootstrapping soft and hard, mixup; their options and defaults, and
the two-stage schedule of NLS. Short runs and resume: the registry's tests."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer, setting_defaults

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.bootstrap import Bootstrap, bootstrap_loss
from methods.gls import LabelSmoothing, NegativeLabelSmoothing, gls_loss
from methods.mixup import Mixup, mixup_loss
from methods.sce import SCE, sce_loss

Z = torch.tensor([[2.0, 0.0, 0.0]])  # p = [0.78699, 0.10651, 0.10651]
Y0 = torch.tensor([0])


def test_sce_by_hand():
    """CE 0.23954, RCE 9.21034 x 0.21301 = 1.96193; alpha 0.1 beta 1 -> 1.98589; 6 / 0.1 -> 1.63346."""
    loss, terms = sce_loss(Z, Y0, 0.1, 1.0)
    assert terms["loss_ce"].item() == pytest.approx(0.23954, abs=1e-5)
    assert terms["loss_rce"].item() == pytest.approx(1.96193, abs=1e-4)
    assert loss.item() == pytest.approx(1.98589, abs=1e-4)
    assert sce_loss(Z, Y0, 6.0, 0.1)[0].item() == pytest.approx(1.63346, abs=1e-4)
    # the reverse term is -ln(1e-4) (1 - p_y) whatever the logits
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0])
    p_y = F.softmax(z, dim=1)[torch.arange(5), y]
    rce = sce_loss(z, y, 0.0, 1.0)[0]
    assert rce.item() == pytest.approx((-math.log(1e-4) * (1 - p_y)).mean().item(), rel=1e-5)


@pytest.mark.parametrize("dataset,classes,expected", [("cifar10", 10, (0.1, 1.0)), ("fashion-mnist", 10, (0.1, 1.0)),
                                                      ("cifar100", 100, (6.0, 0.1)), ("webvision", 50, (6.0, 0.1))])
def test_sce_defaults(dataset, classes, expected):
    got = setting_defaults(SCE, dataset, classes=classes)
    assert (got["alpha"], got["beta"]) == expected


def test_gls_by_hand():
    """r = 0 -> CE 0.23954; r = 0.1 -> 0.37288; r = -0.4 -> -0.29379 (negative, as expected)."""
    assert gls_loss(Z, Y0, 0.0).item() == pytest.approx(0.23954, abs=1e-5)
    assert gls_loss(Z, Y0, 0.1).item() == pytest.approx(0.37288, abs=1e-5)
    assert gls_loss(Z, Y0, -0.4).item() == pytest.approx(-0.29379, abs=1e-5)
    # it is CE against the smoothed target (1 - r) onehot + r / C
    target = 0.9 * F.one_hot(Y0, 3) + 0.1 / 3
    assert gls_loss(Z, Y0, 0.1).item() == pytest.approx(-(target * F.log_softmax(Z, 1)).sum().item(), abs=1e-6)


def test_bootstrap_by_hand():
    """p = [0.78699, 0.10651, 0.10651], y = 1: soft (0.95) 2.16085, hard (0.8) 1.83954, CE 2.23954."""
    z = torch.tensor([[0.78699, 0.10651, 0.10651]]).log()
    y = torch.tensor([1])
    assert bootstrap_loss(z, y, 0.95, "soft").item() == pytest.approx(2.16085, abs=1e-4)
    assert bootstrap_loss(z, y, 0.8, "hard").item() == pytest.approx(1.83954, abs=1e-4)
    assert bootstrap_loss(z, y, 1.0, "soft").item() == pytest.approx(2.23954, abs=1e-4)


def test_bootstrap_soft_gradient_includes_the_entropy_term_unless_detached():
    z = torch.tensor([[1.0, 0.2, -0.5]], requires_grad=True)
    y = torch.tensor([1])
    g_keras = torch.autograd.grad(bootstrap_loss(z, y, 0.95, "soft"), z)[0]
    g_detached = torch.autograd.grad(bootstrap_loss(z, y, 0.95, "soft", detach=True), z)[0]
    assert not torch.allclose(g_keras, g_detached)
    # detached: exactly the gradient of CE against the fixed target
    q = F.softmax(z, 1).detach()
    target = 0.95 * F.one_hot(y, 3) + 0.05 * q
    g_ce = torch.autograd.grad(-(target * F.log_softmax(z, 1)).sum(), z)[0]
    torch.testing.assert_close(g_detached, g_ce, atol=1e-6, rtol=1e-5)


def test_mixup_loss_by_hand():
    """z = [2, 0, 0], y_a = 0, y_b = 1, lambda 0.7: 0.7 x 0.23954 + 0.3 x 2.23954 = 0.83954."""
    assert mixup_loss(Z, Y0, torch.tensor([1]), 0.7).item() == pytest.approx(0.83954, abs=1e-5)


def test_defaults_and_bad_options():
    assert build_options(Bootstrap, {}).variant == "soft"
    assert build_options(Mixup, {}).alpha == 1.0
    assert build_options(LabelSmoothing, {}).smooth_rate == 0.1
    nls = build_options(NegativeLabelSmoothing, {})
    assert nls.smooth_rate == -0.2 and nls.warmup_epochs is None
    for cls, key, value in [(SCE, "alpha", "-1"), (Bootstrap, "beta", "1.5"), (Bootstrap, "variant", "medium"),
                            (Mixup, "alpha", "-0.5"), (LabelSmoothing, "smooth_rate", "1")]:
        with pytest.raises(UsageError, match=key):
            build_options(cls, {key: value})


@pytest.mark.slow
def test_nls_warms_up_with_ce_then_smooths_at_a_tiny_lr(tmp_path):
    tr = make_trainer(tmp_path, method="nls", noise="sym", noise_rate=0.4, subset=200, epochs=4, batch_size=100)
    m = tr.method
    assert m.warmup == round(120 / 220 * 4) == 2
    lr = m.optimizers["net"].param_groups[0]["lr"]
    e0, e2 = tr.run_epoch(0), tr.run_epoch(2)
    assert e0["gls_stage"] == 0 and e2["gls_stage"] == 1
    assert e0["lr"] == lr and e2["lr"] == pytest.approx(lr * 1e-5)
    assert e0["train_loss"] > 0 and e2["train_loss"] < e0["train_loss"]  # r < 0 lowers the loss


def test_mixup_logs_its_lambda_and_no_train_accuracy(tmp_path):
    tr = make_trainer(tmp_path, method="mixup", noise="sym", noise_rate=0.4, subset=200, epochs=1, batch_size=100)
    m = tr.run_epoch(0)
    assert 0 <= m["mixup_lambda"] <= 1 and "train_acc" not in m
