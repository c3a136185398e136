"""ELR: target update, loss and gradient against a hand computation, targets stored by dataset
index, the per-setting defaults, a short Fashion-MNIST run and resume through the command line."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    TableNet,
    assert_resume_equals_uninterrupted,
    fake_context,
    make_trainer,
    setting_defaults,
    tracking_uri,
)
from mlflow.tracking import MlflowClient

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.base import Phase
from methods.elr import ELR, elr_loss

# --- by hand, in numpy ------------------------------------------------------------------------------


def np_clamped_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.clip(e / e.sum(axis=1, keepdims=True), 1e-4, 1 - 1e-4)


def np_loss(z: np.ndarray, y: list[int], t: np.ndarray, lam: float) -> tuple[float, float, float]:
    """CE + lam * mean log(1 - <t, p>) with t fixed; p the clamped softmax (not renormalised)."""
    m = z.max(axis=1, keepdims=True)
    logsm = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    ce = -np.mean([logsm[i, c] for i, c in enumerate(y)])
    reg = np.mean(np.log(1 - (t * np_clamped_softmax(z)).sum(axis=1)))
    return ce + lam * reg, ce, reg


def fake_method(num_train: int = 6, net=None, dataset: str = "fashion-mnist", noise: str = "sym",
                num_classes: int = 3, **opts) -> ELR:
    net = net or torch.nn.Linear(4, num_classes)
    ctx = fake_context(num_classes=num_classes, num_train=num_train, epochs=3, noise_rate=0.4, dataset=dataset,
                       noise=noise, make_backbone=lambda: net, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    m = ELR(build_options(ELR, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def test_target_update_and_loss_equal_the_formula():
    beta, lam = 0.7, 3.0
    z1 = np.array([[12.0, 0.0, -1.0], [0.5, 1.5, -0.5]])  # row 0: two probabilities below the clamp
    z2 = np.array([[1.0, 2.0, 0.0], [11.0, -2.0, 0.0]])
    y = [0, 2]
    target = torch.zeros(6, 3, dtype=torch.float64)

    # step 1: batch indices [5, 2]; the targets start at zero
    p1 = np_clamped_softmax(z1)
    t = np.zeros((6, 3))
    t[[5, 2]] = (1 - beta) * p1 / p1.sum(axis=1, keepdims=True)
    assert p1[0, 1] == 1e-4 and p1[0].sum() > 1  # the clamp bites, so the renormalisation matters
    loss, terms = elr_loss(torch.tensor(z1), torch.tensor(y), target, torch.tensor([5, 2]), beta, lam)
    exp_total, exp_ce, exp_reg = np_loss(z1, y, t[[5, 2]], lam)
    np.testing.assert_allclose(target.numpy(), t, rtol=1e-12, atol=0)
    assert loss.item() == pytest.approx(exp_total, rel=1e-12)
    assert terms["loss_ce"].item() == pytest.approx(exp_ce, rel=1e-12)
    assert terms["loss_elr"].item() == pytest.approx(exp_reg, rel=1e-12)

    # step 2: the same samples in the other order [2, 5]: each keeps its own running average
    p2 = np_clamped_softmax(z2)
    t[[2, 5]] = beta * t[[2, 5]] + (1 - beta) * p2 / p2.sum(axis=1, keepdims=True)
    z = torch.tensor(z2, requires_grad=True)
    loss, _ = elr_loss(z, torch.tensor(y), target, torch.tensor([2, 5]), beta, lam)
    np.testing.assert_allclose(target.numpy(), t, rtol=1e-12, atol=0)
    assert target[[0, 1, 3, 4]].abs().sum() == 0
    assert loss.item() == pytest.approx(np_loss(z2, y, t[[2, 5]], lam)[0], rel=1e-12)

    # the gradient: p in the regulariser carries it, the target does not (central differences)
    loss.backward()
    num = np.zeros_like(z2)
    for i in range(2):
        for c in range(3):
            hi, lo = z2.copy(), z2.copy()
            hi[i, c] += 1e-6
            lo[i, c] -= 1e-6
            num[i, c] = (np_loss(hi, y, t[[2, 5]], lam)[0] - np_loss(lo, y, t[[2, 5]], lam)[0]) / 2e-6
    np.testing.assert_allclose(z.grad.numpy(), num, rtol=1e-6, atol=1e-9)


def test_train_step_stores_targets_by_dataset_index():
    table = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]
    m = fake_method(num_train=6, net=TableNet(table), beta=0.5, lam=2)
    batch = {"train": torch.tensor([[0.0], [1.0]], dtype=torch.float64), "label": torch.tensor([0, 1]),
             "index": torch.tensor([5, 2])}
    out = m.train_step(batch, 0, Phase())
    p = np_clamped_softmax(np.array(table))
    expected = np.zeros((6, 3))
    expected[[5, 2]] = 0.5 * p / p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(m.state["target"].numpy(), expected, rtol=1e-6)
    assert out.loss.item() == pytest.approx(np_loss(np.array(table), [0, 1], expected[[5, 2]], 2.0)[0], rel=1e-6)
    assert set(out.terms) == {"loss_ce", "loss_elr"}


# --- defaults -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,noise,num_classes,expected", [
    ("cifar10", "sym", 10, (0.7, 3.0)),  # config_cifar10.json
    ("cifar-10", "asym", 10, (0.9, 1.0)),  # config_cifar10_asym.json
    ("cifar100", "sym", 100, (0.9, 7.0)),  # config_cifar100.json
    ("cifar100", "asym", 100, (0.9, 7.0)),
    ("fashion-mnist", "sym", 10, (0.7, 3.0)),  # no official value: CIFAR-10 of the noise type
    ("fashion-mnist", "asym", 10, (0.9, 1.0)),
    ("fashion-mnist", "pairflip", 10, (0.9, 1.0)),  # pair-flip is class-dependent noise too
    ("fashion-mnist", "instance", 10, (0.7, 3.0)),
    ("clothing1m", "none", 14, (0.9, 7.0)),  # more than 10 classes: CIFAR-100
])
def test_defaults_by_setting(dataset, noise, num_classes, expected):
    got = setting_defaults(ELR, dataset, noise, None, num_classes)
    assert (got["beta"], got["lam"]) == expected


def test_method_resolves_defaults_and_overrides():
    m = fake_method(noise="asym")
    assert (m.beta, m.lam) == (0.9, 1.0)
    assert m.on_epoch_start(0) == {"elr_beta": 0.9, "elr_lam": 1.0} and m.on_epoch_start(1) == {}
    m = fake_method(noise="sym", lam=5)
    assert (m.beta, m.lam) == (0.7, 5.0)
    assert m.state["target"].shape == (6, 3) and m.state["target"].abs().sum() == 0


@pytest.mark.parametrize("key,value", [("beta", "1.0"), ("beta", "-0.1"), ("lam", "-1")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(ELR, {key: value})


# --- a short run and resume -------------------------------------------------------------------------------

@pytest.mark.slow
def test_short_run_logs_terms_and_resolved_options(tmp_path):
    tr = make_trainer(tmp_path, method="elr", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=100)
    m1, m2 = tr.run_epoch(0), tr.run_epoch(1)
    assert (m1["elr_beta"], m1["elr_lam"]) == (0.7, 3.0) and "elr_beta" not in m2
    for m in (m1, m2):
        assert math.isfinite(m["loss_ce"]) and math.isfinite(m["loss_elr"]) and m["loss_elr"] <= 0
    t = tr.method.state["target"]
    assert torch.allclose(t.sum(1), torch.full((300,), 1 - 0.7 ** 2))  # every sample visited twice


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    args = ("--method", "elr", "--noise", "asym", "--noise-rate", "0.3", "--subset", "300",
            "--batch-size", "100", "--epochs", "2")
    ka, kb = assert_resume_equals_uninterrupted(
        tmp_path, args, 1, ("test_acc", "train_loss", "loss_ce", "loss_elr", "elr_beta", "elr_lam"))
    full = MlflowClient(tracking_uri(tmp_path)).search_runs(
        [MlflowClient(tracking_uri(tmp_path)).get_experiment_by_name("bench").experiment_id])
    assert all(r.data.metrics["elr_lam"] == 1.0 for r in full)  # asym: the CIFAR-10 asymmetric values
    assert torch.equal(ka["state"]["target"], kb["state"]["target"])
    assert ka["state"]["target"].abs().sum() > 0
