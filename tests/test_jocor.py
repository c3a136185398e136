"""JoCoR: the fact sheet's hand values (2.69763, 0.04791, the batch of the two at tau 0.5), the
co-regularisation's gradient reaching both networks (no detach), the forget rate (halved for asym,
not pairflip), the README's co_lambda per data set, the one optimiser and its lr plan, option
validation, and a short Fashion-MNIST run with the kept counts and the one joint optimiser."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TableNet, fake_context, make_trainer, setting_default

from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.common.search import Setting
from methods.base import Phase
from methods.jocor import JoCoR, jocor_loss


def fake_method(nets=None, num_train: int = 4, epochs: int = 10, noise_rate: float | None = 0.4, noise: str = "sym",
                num_classes: int = 3, dataset: str = "fake", scheduler=None, **opts) -> JoCoR:
    nets = iter(nets or [torch.nn.Linear(4, num_classes), torch.nn.Linear(4, num_classes)])
    ctx = fake_context(
        num_classes=num_classes, num_train=num_train, epochs=epochs, noise_rate=noise_rate, dataset=dataset,
        noise=noise, make_backbone=lambda: next(nets), make_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        make_scheduler=scheduler or (lambda opt, n: None))
    m = JoCoR(build_options(JoCoR, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def batch_of(ids: list[int], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"train": torch.tensor(ids, dtype=torch.float64)[:, None], "label": torch.tensor(labels),
            "index": torch.tensor(ids)}


# --- the fact sheet's hand values -----------------------------------------------------------------------

def test_joint_loss_hand_values():
    z1 = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    loss, ce, kl = jocor_loss(z1, z2, torch.tensor([0, 0]), 0.9)
    # CE1 0.23954 + CE2 2.23954; KL(p2||p1) = KL(p1||p2) = 1.36096
    np.testing.assert_allclose(ce.tolist(), [2.47909, 2 * 0.23954], atol=1e-5)
    np.testing.assert_allclose(kl.tolist(), [2 * 1.36096, 0.0], atol=1e-5)
    np.testing.assert_allclose(loss.tolist(), [2.69763, 0.04791], atol=1e-5)


def test_the_batch_of_the_two_keeps_the_second():
    m = fake_method([TableNet([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), TableNet([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0]])],
                    num_train=2, forget_rate=0.5, co_lambda=0.9, tk=1)
    m.on_epoch_start(1)
    out = m.train_step(batch_of([0, 1], [0, 0]), 1, Phase())  # int(0.5 * 2) = 1 kept
    assert out.loss.item() == pytest.approx(0.04791, abs=1e-5)
    assert out.terms["loss_ce"].item() == pytest.approx(2 * 0.23954, abs=1e-5) and out.terms["loss_kl"].item() == 0
    assert m.state["kept"].tolist() == [False, True]
    np.testing.assert_allclose(m.state["loss"].tolist(), [2.69763, 0.04791], atol=1e-5)
    out.loss.backward()  # only the kept sample's rows get gradient, in both nets
    for net in ("net1", "net2"):
        g = m.models[net].table.grad
        assert g[0].abs().sum() == 0
        np.testing.assert_allclose(g[1].tolist(), [0.1 * (p - (c == 0)) for c, p in enumerate(softmax([2, 0, 0]))],
                                   rtol=1e-6)


def test_co_regularisation_reaches_both_networks():
    # lam = 1: only the two KL terms; without detach each net gets (p_own - p_peer) + p_own (d - <p_own, d>),
    # d = log p_own - log p_peer (a detached peer would leave p_own - p_peer)
    r1, r2 = [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]
    m = fake_method([TableNet([r1]), TableNet([r2])], num_train=1, forget_rate=0.2, co_lambda=1.0)
    m.on_epoch_start(0)  # rate 0: the one sample kept
    m.train_step(batch_of([0], [0]), 0, Phase()).loss.backward()
    for net, own, peer in (("net1", r1, r2), ("net2", r2, r1)):
        p, q = softmax(own), softmax(peer)
        d = [math.log(a) - math.log(b) for a, b in zip(p, q, strict=True)]
        pd = sum(a * b for a, b in zip(p, d, strict=True))
        expected = [a - b + a * (c - pd) for a, b, c in zip(p, q, d, strict=True)]
        np.testing.assert_allclose(m.models[net].table.grad[0].tolist(), expected, rtol=1e-6)


# --- defaults ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("noise,expected", [("sym", 0.4), ("asym", 0.2), ("pairflip", 0.4), ("instance", 0.4)])
def test_forget_rate_halved_for_asym_only(noise, expected):
    assert fake_method(noise=noise).forget_rate == expected  # jocor.py:20-26
    assert fake_method(noise=noise, forget_rate=0.3).forget_rate == 0.3


def test_real_noise_needs_a_forget_rate():
    with pytest.raises(UsageError, match="jocor needs --set forget_rate=R on fake: its noise is real"):
        fake_method(noise_rate=None, noise="none")
    assert fake_method(noise_rate=None, noise="none", forget_rate=0.2).forget_rate == 0.2


@pytest.mark.parametrize("dataset,classes,rate,expected", [
    ("cifar10", 10, 0.2, 0.9), ("cifar10", 10, 0.5, 0.9), ("cifar10", 10, 0.8, 0.65), ("cifar100", 100, 0.5, 0.85),
    ("mnist", 10, 0.2, 0.95), ("fashion-mnist", 10, 0.4, 0.9), ("fashion-mnist", 10, 0.8, 0.65),
    ("cifar10n", 10, None, 0.9), ("tiny-imagenet", 200, 0.4, 0.85), ("clothing1m", 14, None, 0.85)])
def test_co_lambda_default(dataset, classes, rate, expected):
    assert setting_default(JoCoR, "co_lambda", dataset, "sym", rate, classes) == expected


def test_resolved_options():
    m = fake_method(dataset="cifar100", num_classes=100, noise="asym", noise_rate=0.4)
    assert m.resolved_options()["co_lambda"] == 0.85 and m.resolved_options()["forget_rate"] == 0.2
    assert fake_method(co_lambda=0.5).resolved_options()["co_lambda"] == 0.5


def test_one_optimiser_and_the_official_plan():
    m = fake_method(epochs=10, num_classes=100, tk=4, exponent=2.0)
    assert list(m.optimizers) == ["joint"] and not m.schedulers
    params = {id(p) for g in m.optimizers["joint"].param_groups for p in g["params"]}
    assert params == {id(p) for net in m.models.values() for p in net.parameters()}
    assert m.decay_start == 5  # main.py:109: 100 of 200 for CIFAR-100
    assert m.on_epoch_start(2)["forget_rate"] == pytest.approx(0.4 ** 2 * 2 / 3)  # linspace(0, tau ** c, tk)
    assert m.on_epoch_start(4)["forget_rate"] == 0.4
    m.on_epoch_start(7)
    g = m.optimizers["joint"].param_groups[0]
    assert g["lr"] == pytest.approx(1e-3 * 3 / 5) and g["betas"] == (0.1, 0.999)
    assert fake_method(epochs=10, num_classes=10).decay_start == 4  # main.py:62,85: 80 of 200


def test_trainer_schedule_on_the_joint_optimiser():
    sched = lambda opt, n: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)  # noqa: E731
    m = fake_method(scheduler=sched, lr_schedule="trainer")
    assert list(m.schedulers) == ["joint"]
    m.on_epoch_start(9)
    assert m.optimizers["joint"].param_groups[0]["lr"] == 1e-3  # the plan leaves it alone


@pytest.mark.parametrize("key,value", [("forget_rate", "1.0"), ("co_lambda", "1.5"), ("tk", "0"), ("exponent", "0"),
                                       ("lr_schedule", "cosine")])
def test_invalid_options_raise(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(JoCoR, {key: value})


def test_search_space_holds_the_readme_values():
    space = JoCoR.search_space(Setting(noise_rate=0.4, epochs=30))
    assert all(space["co_lambda"].contains(v) for v in (0.65, 0.85, 0.9, 0.95))
    assert space["forget_rate"].contains(0.4) and space["forget_rate"].contains(0.2)
    assert space["tk"].grid == (5, 10, 15) and space["exponent"].contains(1.0)


# --- a short run on a Fashion-MNIST subset -------------------------------------------------------------

def test_short_run_one_optimiser_small_loss_share(tmp_path):
    tr = make_trainer(tmp_path, method="jocor", noise="asym", noise_rate=0.4, subset=300, epochs=2, batch_size=64,
                      test_subset=500, augment="none", method_options={"tk": 1})
    m, seen = tr.method, []
    assert m.co_lambda == 0.9 and m.forget_rate == 0.2  # fashion-mnist as CIFAR-10; asym halves
    assert list(m.optimizers) == ["joint"]
    step = m.train_step

    def spy(batch, epoch, phase):
        seen.append(batch["index"].clone())
        return step(batch, epoch, phase)

    m.train_step = spy
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in m.models.items()}
    logs = []
    for epoch in range(2):
        seen.clear()
        logs.append(tr.run_epoch(epoch))
    assert [log["forget_rate"] for log in logs] == pytest.approx([0.0, 0.2])
    kept = m.state["kept"]
    assert [int(kept[i].sum()) for i in seen] == [int(0.8 * len(i)) for i in seen]  # 51 of 64, 35 of 44
    for net, params in before.items():  # the one optimiser moved both networks
        assert any(not torch.equal(a, b) for a, b in zip(params, m.models[net].parameters(), strict=True)), net
    for log in logs:
        for key in ("clean_auc", "clean_precision", "clean_recall", "loss_ce", "loss_kl", "test_acc"):
            assert math.isfinite(log[key]), key
        # the logged loss is (1 - lam) CE + lam KL of the kept samples
        assert log["train_loss"] == pytest.approx(0.1 * log["loss_ce"] + 0.9 * log["loss_kl"], rel=1e-4)
