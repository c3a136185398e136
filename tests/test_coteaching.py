"""Co-teaching: the official forget-rate and lr/beta1 schedules, the cross update against a hand
computation (loss and gradient), the forget-rate default, a short Fashion-MNIST run with its
diagnostics, and resume through the command line."""
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
    metric_curve,
    tracking_uri,
)
from mlflow.tracking import MlflowClient

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.base import Phase
from methods.coteaching import Coteaching
from methods.cotraining import forget_rate_at, official_lr_plan

# --- the forget-rate schedule ---------------------------------------------------------------------


def official_rate_schedule(n_epoch: int, forget_rate: float, num_gradual: int, exponent: float) -> np.ndarray:
    """main.py, verbatim in substance."""
    rate_schedule = np.ones(n_epoch) * forget_rate
    rate_schedule[:num_gradual] = np.linspace(0, forget_rate ** exponent, num_gradual)
    return rate_schedule


@pytest.mark.parametrize("forget_rate,tk,exponent", [(0.2, 10, 1.0), (0.45, 5, 1.0), (0.5, 10, 2.0),
                                                     (0.8, 15, 0.5), (0.3, 1, 1.0)])
def test_forget_rate_equals_the_official_schedule(forget_rate, tk, exponent):
    n = 40
    expected = official_rate_schedule(n, forget_rate, tk, exponent)
    got = [forget_rate_at(t, forget_rate, tk, exponent) for t in range(n)]
    assert got == expected.tolist()
    assert got[0] == 0.0
    assert all(r == forget_rate for r in got[tk:])  # reaches the forget rate at epoch tk and stays
    assert all(a <= b for a, b in zip(got[:tk - 1], got[1:tk], strict=True))  # ramps up before


def test_forget_rate_with_fewer_epochs_than_tk():
    # the official array would not even build (n_epoch < num_gradual); the per-epoch value still does
    assert forget_rate_at(2, 0.4, 10, 1.0) == pytest.approx(0.4 * 2 / 9)


# --- a fake context with nets whose per-sample logits are parameters -----------------------------------


def fake_method(nets=None, num_train: int = 8, epochs: int = 10, noise_rate: float | None = 0.4,
                num_classes: int = 3, optimizer: str = "adam", scheduler=None, **opts) -> Coteaching:
    nets = iter(nets or [torch.nn.Linear(4, num_classes), torch.nn.Linear(4, num_classes)])

    def make_optimizer(params):
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=1e-3)
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    ctx = fake_context(
        num_classes=num_classes, num_train=num_train, epochs=epochs, noise_rate=noise_rate,
        make_backbone=lambda: next(nets), make_optimizer=make_optimizer,
        make_scheduler=scheduler or (lambda opt, n: None))
    m = Coteaching(build_options(Coteaching, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def ce(row: list[float], label: int) -> float:
    m = max(row)
    return -(row[label] - m - math.log(sum(math.exp(v - m) for v in row)))


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


T1 = [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [2.0, 1.0, 0.0], [0.5, 0.0, 0.0]]
T2 = [[0.0, 0.0, 4.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]]


def test_each_net_learns_from_what_its_peer_kept():
    m = fake_method([TableNet(T1), TableNet(T2)], num_train=8, forget_rate=0.3, tk=1)
    m.on_epoch_start(1)  # tk = 1: the full rate from epoch 1
    assert m.rate == 0.3
    ids, labels, index = [0, 1, 2, 3], [0, 1, 2, 1], [7, 3, 5, 0]
    batch = {"train": torch.tensor(ids, dtype=torch.float64)[:, None], "label": torch.tensor(labels),
             "index": torch.tensor(index)}
    out = m.train_step(batch, 1, Phase())
    # by hand: num_keep = int(0.7 * 4) = int(2.8) = 2 (truncation, loss.py)
    l1 = [ce(T1[i], y) for i, y in zip(ids, labels, strict=True)]
    l2 = [ce(T2[i], y) for i, y in zip(ids, labels, strict=True)]
    kept1 = sorted(range(4), key=lambda j: l1[j])[:2]
    kept2 = sorted(range(4), key=lambda j: l2[j])[:2]
    assert kept1 == [0, 1] and kept2 == [1, 2]  # the tables make the two selections differ
    exp1 = sum(l1[j] for j in kept2) / 2
    exp2 = sum(l2[j] for j in kept1) / 2
    # (the method computes the loss in float32, as it would under autocast)
    assert out.terms["loss_net1"].item() == pytest.approx(exp1, rel=1e-6)
    assert out.terms["loss_net2"].item() == pytest.approx(exp2, rel=1e-6)
    assert out.loss.item() == pytest.approx(exp1 + exp2, rel=1e-6)
    assert torch.equal(out.logits, m.models["net1"].table[:4])  # net 1's logits for train accuracy

    out.loss.backward()
    g1, g2 = m.models["net1"].table.grad, m.models["net2"].table.grad
    for j in range(4):  # d(loss_net1)/d(logits_j) = (softmax - onehot) / num_keep for a kept sample, else 0
        exp_g1 = [(p - (c == labels[j])) / 2 if j in kept2 else 0.0 for c, p in enumerate(softmax(T1[j]))]
        exp_g2 = [(p - (c == labels[j])) / 2 if j in kept1 else 0.0 for c, p in enumerate(softmax(T2[j]))]
        np.testing.assert_allclose(g1[j].tolist(), exp_g1, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(g2[j].tolist(), exp_g2, rtol=1e-5, atol=1e-8)
    assert g1[4].abs().sum() == 0 and g2[4].abs().sum() == 0  # not in the batch

    # per-sample state by dataset index: net 1's loss and its own selection
    np.testing.assert_allclose(m.state["loss1"][index].tolist(), l1, rtol=1e-6)
    assert m.state["kept1"].tolist() == [False, False, False, True, False, False, False, True]


def test_num_keep_is_never_zero():
    m = fake_method([TableNet(T1), TableNet(T2)], num_train=8, forget_rate=0.4, tk=1)
    m.on_epoch_start(1)
    batch = {"train": torch.tensor([[4.0]], dtype=torch.float64), "label": torch.tensor([0]),
             "index": torch.tensor([6])}  # a last batch of one: int(0.6 * 1) = 0
    out = m.train_step(batch, 1, Phase())
    assert torch.isfinite(out.loss) and out.terms["loss_net1"].item() == pytest.approx(ce(T1[4], 0))


# --- defaults and validation ------------------------------------------------------------------------

def test_forget_rate_defaults_to_the_noise_rate():
    assert fake_method(noise_rate=0.4).forget_rate == 0.4
    assert fake_method(noise_rate=0.4, forget_rate=0.25).forget_rate == 0.25
    assert fake_method(noise_rate=None, forget_rate=0.3).forget_rate == 0.3
    with pytest.raises(UsageError, match="coteaching needs --set forget_rate=R on fake: its noise is real"):
        fake_method(noise_rate=None)
    # the context carries no clean labels to estimate a realised rate from (official: the nominal rate)
    assert not hasattr(fake_method().ctx, "clean_labels")


@pytest.mark.parametrize("key,value", [("forget_rate", "1.0"), ("forget_rate", "-0.1"), ("tk", "0"),
                                       ("exponent", "0"), ("lr_schedule", "cosine")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(Coteaching, {key: value})


# --- the official lr / beta1 plan --------------------------------------------------------------------

def test_official_plan_matches_main_py_at_200_epochs():
    lr = 1e-3
    alpha_plan, beta1_plan = [lr] * 200, [0.9] * 200  # main.py
    for i in range(80, 200):
        alpha_plan[i] = float(200 - i) / (200 - 80) * lr
        beta1_plan[i] = 0.1
    for t in range(200):
        assert official_lr_plan(t, 200, lr, 80) == (pytest.approx(alpha_plan[t], rel=1e-15), beta1_plan[t])


def test_official_plan_applied_to_both_optimisers():
    m = fake_method(epochs=10)  # decay from round(0.4 * 10) = 4
    assert m.decay_start == 4 and not m.schedulers

    def seen(epoch):
        m.on_epoch_start(epoch)
        return [(g["lr"], g["betas"]) for o in m.optimizers.values() for g in o.param_groups]

    assert seen(0) == seen(3) == [(1e-3, (0.9, 0.999))] * 2  # before the decay
    assert seen(4) == [(1e-3, (0.1, 0.999))] * 2  # decay start: full lr, beta1 0.1
    assert seen(7) == [(pytest.approx(5e-4), (0.1, 0.999))] * 2  # mid-decay: 1e-3 * 3 / 6
    assert seen(9) == [(pytest.approx(1e-3 / 6), (0.1, 0.999))] * 2  # last epoch: lr / (E - D)
    assert seen(2) == [(1e-3, (0.9, 0.999))] * 2  # derived from the epoch, never accumulated (resume)
    assert fake_method(epochs=10, num_classes=100).decay_start == 5  # main.py: cifar100 100 of 200


def test_official_plan_with_sgd_decays_lr_only():
    m = fake_method(epochs=10, optimizer="sgd")
    m.on_epoch_start(7)
    g = m.optimizers["net1"].param_groups[0]
    assert g["lr"] == pytest.approx(0.05) and "betas" not in g


def test_trainer_schedule_is_left_alone():
    sched = lambda opt, n: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)  # noqa: E731
    m = fake_method(epochs=10, scheduler=sched, lr_schedule="trainer")
    assert set(m.schedulers) == {"net1", "net2"}
    m.on_epoch_start(9)
    assert [o.param_groups[0]["lr"] for o in m.optimizers.values()] == [1e-3, 1e-3]
    assert m.optimizers["net1"].param_groups[0]["betas"] == (0.9, 0.999)


# --- a short run on a Fashion-MNIST subset --------------------------------------------------------------

@pytest.mark.slow
def test_short_run_logs_diagnostics(tmp_path):
    tr = make_trainer(tmp_path, method="coteaching", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=100,
                      method_options={"tk": 1})
    m1, m2 = tr.run_epoch(0), tr.run_epoch(1)
    realised = tr.noise.rate_realized  # the default forget rate: the nominal 0.4 (main.py), not the realised
    assert realised != 0.4
    assert m1["forget_rate"] == 0.0 and m2["forget_rate"] == pytest.approx(0.4)
    for m in (m1, m2):
        for key in ("clean_auc", "clean_precision", "clean_recall", "forget_rate", "loss_net1", "loss_net2"):
            assert math.isfinite(m[key]), key
        assert 0 <= m["clean_auc"] <= 1
    assert m1["clean_recall"] == 1.0  # rate 0: every sample kept
    kept = tr.method.state["kept1"]
    assert int(kept.sum()) == 3 * int((1 - 0.4) * 100)  # three batches of 100


# --- resume ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    # 3 epochs, tk 2: after the interruption the forget rate goes 0 -> 0.3, beta1 0.9 -> 0.1 (decay
    # from round(0.4 * 3) = 1) and the lr 1e-3 -> 5e-4
    args = ("--method", "coteaching", "--noise", "pairflip", "--noise-rate", "0.3", "--subset", "300",
            "--batch-size", "100", "--epochs", "3", "--set", "tk=2", "--set", "forget_rate=0.3")
    names = ("test_acc", "train_loss", "loss_net1", "loss_net2", "forget_rate", "lr", "clean_auc",
             "clean_precision", "clean_recall")
    ka, kb = assert_resume_equals_uninterrupted(tmp_path, args, 1, names)
    runs = {r.data.tags["run_dir"]: r.info.run_id for r in MlflowClient(tracking_uri(tmp_path)).search_runs(["1"])}
    run_id = next(iter(runs.values()))
    for name in names:
        assert len(metric_curve(tmp_path, run_id, name)) == 3, name
    assert metric_curve(tmp_path, run_id, "forget_rate") == [0.0, 0.3, 0.3]
    assert metric_curve(tmp_path, run_id, "lr") == [1e-3, 1e-3, 5e-4]
    for net in ("net1", "net2"):
        assert kb["optimizers"][net]["param_groups"][0]["betas"] == (0.1, 0.999)  # set again after resume
    for key in ("loss1", "kept1"):
        assert torch.equal(ka["state"][key], kb["state"][key]), key
