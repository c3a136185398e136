"""Co-teaching+: the fact sheet's hand values (double softmax 0.69950 vs 0.23954; the disagreement
selection example), the official quirks (double softmax, the 1 / num_remember scale, the empty-D'
rule) against the paper default, the per-data-set init_epoch, the decay start, option validation,
and a short Fashion-MNIST run: Co-teaching on the whole batch before init_epoch, only
disagreement samples after it."""
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
from methods.coteachingplus import CoteachingPlus, peer_update


def fake_method(nets=None, num_train: int = 8, epochs: int = 10, noise_rate: float | None = 0.4,
                num_classes: int = 3, dataset: str = "fake", **opts) -> CoteachingPlus:
    nets = iter(nets or [torch.nn.Linear(4, num_classes), torch.nn.Linear(4, num_classes)])
    ctx = fake_context(
        num_classes=num_classes, num_train=num_train, epochs=epochs, noise_rate=noise_rate, dataset=dataset,
        make_backbone=lambda: next(nets), make_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    m = CoteachingPlus(build_options(CoteachingPlus, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def ce(row: list[float], label: int) -> float:
    m = max(row)
    return -(row[label] - m - math.log(sum(math.exp(v - m) for v in row)))


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def batch_of(ids: list[int], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"train": torch.tensor(ids, dtype=torch.float64)[:, None], "label": torch.tensor(labels),
            "index": torch.tensor(ids)}


# --- the fact sheet's hand values -----------------------------------------------------------------------

def test_double_softmax_value():
    p = softmax([2.0, 0.0, 0.0])
    np.testing.assert_allclose(p, [0.78699, 0.10651, 0.10651], atol=1e-5)
    assert ce(p, 0) == pytest.approx(0.69950, abs=1e-5) and ce([2.0, 0.0, 0.0], 0) == pytest.approx(0.23954, abs=1e-5)
    # one disagreement sample; int(0.5 * 1) = 0 kept: official keeps all of D', paper at least one
    # net 1 predicts 1, net 2 predicts 0: net 2 is trained on the sample with its logits [2, 0, 0]
    for loss, expected in (("official", 0.69950), ("paper", 0.23954)):
        m = fake_method([TableNet([[0.0, 2.0, 0.0]]), TableNet([[2.0, 0.0, 0.0]])], num_train=1, forget_rate=0.5,
                        tk=1, init_epoch=0, loss=loss)
        m.on_epoch_start(3)
        out = m.train_step(batch_of([0], [0]), 3, Phase())
        assert out.terms["loss_net2"].item() == pytest.approx(expected, abs=1e-5), loss


def test_selection_example_of_the_fact_sheet():
    # D' = {1, 3, 5}; tau 0.5 keeps int(1.5) = 1; net 1 picks 3 (0.7) -> net 2 trains on 3 (1.1),
    # net 2 picks 5 (0.6) -> net 1 trains on 5 (1.2)
    loss1, loss2 = torch.tensor([0.9, 0.7, 1.2]), torch.tensor([0.8, 1.1, 0.6])
    for official in (False, True):  # each loss = CE_mean / 1
        l1, l2, kept1 = peer_update(loss1, loss2, 0.5, official)
        assert kept1.tolist() == [1] and l1.item() == pytest.approx(1.2) and l2.item() == pytest.approx(1.1)


# label 0 everywhere; preds1 [0,1,2,0,1,2], preds2 [0,2,2,1,1,0]; on D' net 1's CE is smallest at 3,
# net 2's at 5
T1 = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]
T2 = [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("loss", ["paper", "official"])
def test_disagreement_step_trains_each_net_on_the_peers_pick(loss):
    m = fake_method([TableNet(T1), TableNet(T2)], num_train=6, forget_rate=0.5, tk=1, init_epoch=1, loss=loss)
    m.on_epoch_start(1)
    out = m.train_step(batch_of(list(range(6)), [0] * 6), 1, Phase())
    # official: the CE of the softmax probabilities (a double softmax) and / num_remember (= 1)
    f = (lambda r: ce(softmax(r), 0)) if loss == "official" else (lambda r: ce(r, 0))
    assert out.step and out.terms["loss_net1"].item() == pytest.approx(f(T1[5]), rel=1e-6)
    assert out.terms["loss_net2"].item() == pytest.approx(f(T2[3]), rel=1e-6)
    assert out.terms["disagree"].item() == pytest.approx(0.5)
    out.loss.backward()
    rows1 = m.models["net1"].table.grad.abs().sum(1).nonzero().squeeze(1).tolist()
    rows2 = m.models["net2"].table.grad.abs().sum(1).nonzero().squeeze(1).tolist()
    assert rows1 == [5] and rows2 == [3]
    assert m.state["disagree"].tolist() == [False, True, False, True, False, True]
    assert m.state["kept1"].tolist() == [False, False, False, True, False, False]  # net 1's own pick
    np.testing.assert_allclose(m.state["loss1"].tolist(), [ce(r, 0) for r in T1], rtol=1e-6)  # on logits


@pytest.mark.parametrize("loss", ["paper", "official"])
def test_before_init_epoch_it_is_coteaching_on_the_whole_batch(loss):
    m = fake_method([TableNet(T1), TableNet(T2)], num_train=6, forget_rate=0.5, tk=1, init_epoch=2, loss=loss)
    m.on_epoch_start(1)
    out = m.train_step(batch_of([0, 1, 3, 5], [0] * 4), 1, Phase())
    # int(0.5 * 4) = 2 kept by own CE on logits (official too: loss_coteaching gets logits, main.py:252)
    l1, l2 = [ce(T1[i], 0) for i in (0, 1, 3, 5)], [ce(T2[i], 0) for i in (0, 1, 3, 5)]
    kept1, kept2 = sorted(range(4), key=l1.__getitem__)[:2], sorted(range(4), key=l2.__getitem__)[:2]
    assert kept1 == [0, 2] and kept2 == [0, 3]  # sample 0, on which they agree, kept by both
    scale = 2 if loss == "official" else 1  # quirk (b): the mean divided once more by num_remember
    assert out.terms["loss_net1"].item() == pytest.approx(sum(l1[j] for j in kept2) / 2 / scale, rel=1e-6)
    assert out.terms["loss_net2"].item() == pytest.approx(sum(l2[j] for j in kept1) / 2 / scale, rel=1e-6)
    assert m.state["kept1"][[0, 3]].all() and int(m.state["kept1"].sum()) == 2


def test_empty_disagreement_set():
    agree = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # both nets predict alike
    batch = batch_of([0, 1], [0, 1])
    m = fake_method([TableNet(agree), TableNet(agree)], num_train=2, forget_rate=0.5, tk=1, init_epoch=0)
    m.on_epoch_start(2)
    out = m.train_step(batch, 2, Phase())
    assert not out.step and out.loss.item() == 0.0  # paper: no update
    assert not m.state["kept1"].any()

    m = fake_method([TableNet(agree), TableNet(agree)], num_train=2, forget_rate=0.5, tk=1, init_epoch=0,
                    loss="official")
    expected = (ce(softmax(agree[0]), 0) + ce(softmax(agree[1]), 1)) / 2  # mean CE on probabilities
    m.on_epoch_start(100)
    out = m.train_step(batch, 100, Phase())  # batch 0: step 100 * 0 < 5000
    assert out.step and out.terms["loss_net1"].item() == pytest.approx(expected, rel=1e-6)
    m.batch_idx = 50  # the 51st batch of epoch 100: 100 * 50 = 5000, not < 5000
    out = m.train_step(batch, 100, Phase())
    assert out.step and out.loss.item() == 0.0 and out.loss.requires_grad  # a zero loss, still stepped
    assert m.batch_idx == 51
    m.on_epoch_start(101)  # the count restarts each epoch
    assert m.batch_idx == 0
    assert m.train_step(batch, 101, Phase()).loss.item() == pytest.approx(2 * expected, rel=1e-6)


# --- defaults, schedules and validation ---------------------------------------------------------------

@pytest.mark.parametrize("dataset,classes,epochs,expected", [
    ("cifar10", 10, 200, 20), ("cifar100", 100, 200, 5), ("mnist", 10, 200, 0), ("tiny-imagenet", 200, 200, 100),
    ("fashion-mnist", 10, 30, 3), ("cifar10n", 10, 100, 10), ("clothing1m", 14, 40, 1), ("animal10n", 10, 50, 5)])
def test_init_epoch_default(dataset, classes, epochs, expected):
    assert setting_default(CoteachingPlus, "init_epoch", dataset, "sym", 0.4, classes, epochs) == expected


def test_resolved_options_and_forget_rate():
    m = fake_method(dataset="cifar10", num_classes=10, epochs=50)
    assert m.resolved_options()["init_epoch"] == 5 and m.resolved_options()["forget_rate"] == 0.4
    assert fake_method(init_epoch=7, forget_rate=0.25).resolved_options()["init_epoch"] == 7
    assert fake_method(noise_rate=None, forget_rate=0.3).forget_rate == 0.3
    with pytest.raises(UsageError, match="coteaching_plus needs --set forget_rate=R on fake: its noise is real"):
        fake_method(noise_rate=None)


def test_forget_rate_ramp_and_lr_plan():
    m = fake_method(epochs=10, num_classes=100, tk=5)
    assert m.decay_start == 4  # main.py:35: 80 of 200 for every data set (Co-teaching: 100 for CIFAR-100)
    rates = [m.on_epoch_start(e)["forget_rate"] for e in range(10)]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4] + [0.4] * 5)  # linspace(0, 0.4, 5), no exponent
    m.on_epoch_start(7)
    assert [(g["lr"], g["betas"][0]) for o in m.optimizers.values() for g in o.param_groups] == \
        [(pytest.approx(5e-4), 0.1)] * 2
    assert not m.schedulers


@pytest.mark.parametrize("key,value", [("forget_rate", "1.0"), ("tk", "0"), ("init_epoch", "-1"),
                                       ("loss", "softmax"), ("lr_schedule", "cosine")])
def test_invalid_options_raise(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(CoteachingPlus, {key: value})


def test_search_space_holds_the_defaults():
    space = CoteachingPlus.search_space(Setting(noise_rate=0.4, epochs=30))
    assert space["forget_rate"].contains(0.4)
    assert space["init_epoch"].grid == (0, 1, 3, 15)  # 0, 5, 20, 100 of 200, scaled to 30
    assert space["tk"].contains(10)


# --- a short run on a Fashion-MNIST subset -------------------------------------------------------------

def test_short_run_coteaching_then_disagreement(tmp_path):
    tr = make_trainer(tmp_path, method="coteaching_plus", noise="sym", noise_rate=0.4, subset=300, epochs=3,
                      batch_size=64, test_subset=500, augment="none", method_options={"tk": 1, "init_epoch": 2})
    m, seen = tr.method, []
    step = m.train_step

    def spy(batch, epoch, phase):
        seen.append(batch["index"].clone())
        return step(batch, epoch, phase)

    m.train_step = spy
    logs = []
    for epoch in range(3):
        seen.clear()
        logs.append(tr.run_epoch(epoch))
        kept, dis = m.state["kept1"], m.state["disagree"]
        counts = [(int(kept[i].sum()), len(i), int(dis[i].sum())) for i in seen]
        assert logs[-1]["disagree"] == pytest.approx(dis.float().mean().item(), rel=1e-5)
        if epoch == 0:  # forget rate 0: every sample kept
            assert kept.all()
        elif epoch == 1:  # Co-teaching: the small-loss share of every whole batch, agreed samples too
            assert [k for k, _, _ in counts] == [int(0.6 * b) for _, b, _ in counts]
            assert (kept & ~dis).any()
        else:  # disagreement: int(0.6 |D'|) (at least one) of each batch's D', nothing outside it
            assert [k for k, _, _ in counts] == [max(int(0.6 * d), 1) if d else 0 for _, _, d in counts]
            assert not (kept & ~dis).any() and 0 < dis.sum() < len(dis)
    assert [log["forget_rate"] for log in logs] == pytest.approx([0.0, 0.4, 0.4])
    for log in logs:
        for key in ("clean_auc", "clean_precision", "clean_recall", "loss_net1", "loss_net2", "test_acc"):
            assert math.isfinite(log[key]), key
