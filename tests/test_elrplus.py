"""ELR+ mechanics on the fact sheet's hand-checkable values (worked from the paper and official code) and a
short run: targets from the peer's weight average, the averaging weight's ramp, the global step."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from bench.common.defaults import RunSetting
from methods.elrplus import (
    DECAY_SHARE,
    ELRPlus,
    ELRPlusOptions,
    elr_plus_loss,
    update_targets,
)
from methods.ema import ema_decay, make_ema, sigmoid_rampup, update_ema
from tests.helpers import make_trainer, setting_defaults


def test_elr_term_by_hand():
    # t = [.6, .3, .1], p = [.7, .2, .1]: <t, p> = 0.49, ln 0.51 = -0.67334, x lambda 3 = -2.02003
    t = torch.tensor([[0.6, 0.3, 0.1]])
    logits = torch.tensor([[0.7, 0.2, 0.1]]).log()
    onehot = torch.tensor([[1.0, 0.0, 0.0]])
    loss, terms = elr_plus_loss(logits, onehot, t, lam=3.0, coef=1.0, target_ce=False)
    assert terms["loss_elr"].item() == pytest.approx(-0.67334, abs=1e-5)
    assert loss.item() == pytest.approx(-math.log(0.7) - 2.02003, abs=1e-5)
    # the ramp coefficient scales only the ELR term
    loss0, _ = elr_plus_loss(logits, onehot, t, lam=3.0, coef=0.0, target_ce=False)
    assert loss0.item() == pytest.approx(-math.log(0.7), abs=1e-6)


def test_cifar100_cross_entropy_target_is_the_label_times_the_target():
    t = torch.tensor([[0.6, 0.3, 0.1]])
    y_mix = torch.tensor([[0.75, 0.25, 0.0]])
    logits = torch.tensor([[1.0, 0.5, -1.0]])
    _, terms = elr_plus_loss(logits, y_mix, t, lam=0.0, coef=1.0, target_ce=True)
    target = torch.tensor([0.45, 0.075, 0.0]) / 0.525  # normalize(y_mix * q)
    expected = -(target * torch.log_softmax(logits, dim=1)[0]).sum()
    assert terms["loss_ce"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_target_update_by_hand():
    target = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    teacher = torch.tensor([[0.2, 0.7, 0.1]]).log()  # softmax(o) = [.2, .7, .1]
    update_targets(target, torch.tensor([1]), teacher, beta=0.7)
    assert torch.allclose(target[1], torch.tensor([0.48, 0.42, 0.10]), atol=1e-6)
    assert torch.equal(target[0], torch.zeros(3))  # only the visited dataset index moves


@pytest.mark.parametrize("step,alpha", [(1, 0.00672), (10000, 0.05989), (20000, 0.28568), (40000, 0.997),
                                        (90000, 0.997)])
def test_averaging_weight_ramp_by_hand(step, alpha):
    assert ema_decay(step, 0.997, True, 40000) == pytest.approx(alpha, abs=1e-5)


def test_averaging_weight_without_ramp_and_the_ramp_edges():
    assert ema_decay(0, 0.9999, False, 0) == 0.0  # min(1 - 1/1, gamma)
    assert ema_decay(9, 0.9999, False, 0) == pytest.approx(0.9)
    assert ema_decay(10 ** 6, 0.9999, False, 0) == 0.9999
    assert sigmoid_rampup(5, 0) == 1.0 and sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))


def test_update_ema_averages_parameters_not_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = make_ema(copy.deepcopy(net))  # a network of its own, as ctx.make_backbone() gives
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(5.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, net, 0.25)
    for e, b, p in zip(ema.parameters(), before, net.parameters(), strict=True):
        assert torch.allclose(e, 0.25 * b + 0.75 * p)
    assert torch.equal(ema[1].running_mean, torch.zeros(2))


# the official configs (config_*.json): beta, lambda, mixup_alpha, ema_alpha, ema_update, the ramps
# (ema_step, coef_step) as shares of the official run's steps, and the lr milestone's share of the epochs
C10_RAMP, C100_RAMP = 40000 / 70400, 40000 / 88000
CIFAR10_SYM = dict(beta=0.7, lam=3.0, alpha=1.0, gamma=0.997, ema_update=True, ema_ramp=C10_RAMP, coef_ramp=0.0)
CIFAR10_ASYM = {**CIFAR10_SYM, "beta": 0.9, "lam": 1.0}
CIFAR100 = dict(beta=0.9, lam=7.0, alpha=1.0, gamma=0.997, ema_update=True, ema_ramp=C100_RAMP, coef_ramp=C100_RAMP)
CLOTHING1M = dict(beta=0.7, lam=3.0, alpha=1.0, gamma=0.9999, ema_update=False, ema_ramp=0.0, coef_ramp=0.0)
WEBVISION = dict(beta=0.7, lam=3.0, alpha=1.5, gamma=0.997, ema_update=False, ema_ramp=0.0, coef_ramp=0.0)


@pytest.mark.parametrize("dataset,noise,classes,expected,decay", [
    ("cifar10", "sym", 10, CIFAR10_SYM, 150 / 200), ("cifar10", "asym", 10, CIFAR10_ASYM, 150 / 200),
    ("cifar100", "sym", 100, CIFAR100, 200 / 250), ("clothing1m", "real", 14, CLOTHING1M, 7 / 15),
    ("webvision", "real", 50, WEBVISION, 50 / 100), ("fashion-mnist", "pairflip", 10, CIFAR10_ASYM, 150 / 200),
    ("fashion-mnist", "instance", 10, CIFAR10_SYM, 150 / 200), ("cifar100n", "real", 100, CIFAR100, 200 / 250)])
def test_per_setting_defaults(dataset, noise, classes, expected, decay):
    got = setting_defaults(ELRPlus, dataset, noise, None, classes)
    assert got == pytest.approx(expected)
    assert DECAY_SHARE(RunSetting(dataset, noise, None, classes, 200)) == pytest.approx(decay)


@pytest.mark.parametrize("key,value", [("beta", 1.0), ("gamma", -0.1), ("lam", -1.0), ("alpha", 0.0),
                                       ("ema_ramp", 1.5), ("coef_ramp", -0.1)])
def test_invalid_options_raise(key, value):
    with pytest.raises(ValueError, match=key):
        ELRPlusOptions(**{key: value})


def test_short_run_targets_from_the_peer_average_and_the_global_step(tmp_path):
    tr = make_trainer(tmp_path, method="elr_plus", noise="sym", noise_rate=0.4, subset=200, epochs=2, batch_size=64,
                      test_subset=500)
    m = tr.method
    assert m.ema_step == pytest.approx(40000 / 70400 * 2 * 4)  # the official share of this run's 8 steps
    net2_before = {k: v.clone() for k, v in m.models["net2"].state_dict().items()}
    ema1_before = [p.clone() for p in m.models["ema1"].parameters()]
    seen: dict[str, list] = {"net1": [], "net2": []}
    step = type(m).train_step

    def spy(self, batch, epoch, phase):
        seen[phase.name].append(self.global_step + self._batches.get(phase.name, 0) + 1)
        return step(self, batch, epoch, phase)

    type(m).train_step = spy
    try:
        metrics = tr.run_epoch(0)
    finally:
        type(m).train_step = step
    assert seen == {"net1": [1, 2, 3, 4], "net2": [1, 2, 3, 4]}  # both nets share the step values
    assert m.global_step == 4  # advanced by net 1's batch count
    assert m._step == 4  # the step the last averaging used: counted from 1
    assert m.decay_epoch == round(0.75 * 2)  # lr / 10 at 150 of 200 epochs, as a share
    lr0 = m.base_lr["net1"][0]
    m.on_epoch_start(m.decay_epoch - 1)
    assert m.optimizers["net1"].param_groups[0]["lr"] == pytest.approx(lr0)
    m.on_epoch_start(m.decay_epoch)
    assert m.optimizers["net1"].param_groups[0]["lr"] == pytest.approx(lr0 * 0.1)
    m.on_epoch_start(0)
    assert m.optimizers["net2"].param_groups[0]["lr"] == pytest.approx(lr0)
    assert math.isfinite(metrics["loss_elr"]) and math.isfinite(metrics["clean_auc"])
    # every sample visited once by each network: every target row is a distribution scaled by 1 - beta
    for k in ("1", "2"):
        sums = m.state[f"target{k}"].sum(dim=1)
        assert torch.allclose(sums, torch.full_like(sums, 1 - m.beta), atol=1e-5)
    # the two histories come from different teachers
    assert not torch.allclose(m.state["target1"], m.state["target2"])
    # each averaged copy moved towards its own network
    assert any(not torch.equal(a, b) for a, b in zip(ema1_before, m.models["ema1"].parameters(), strict=True))
    assert any(not torch.equal(net2_before[k], v) for k, v in m.models["net2"].state_dict().items())
