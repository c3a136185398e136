"""DivideMix: GMM division, co-divide, refinement, co-guessing, sharpening, mixup loss,
lambda_u ramp-up, per-setting defaults, a short run, and resume."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FixedLogits, assert_resume_equals_uninterrupted, fake_generators, make_trainer

from bench.common.options import build_options
from methods.base import Phase
from methods.dividemix import DivideMix, dividemix_defaults
from methods.mixmatch import linear_rampup, mixmatch_loss, sharpen


def fake_dividemix(n: int = 8, noise_rate: float = 0.4, **opts) -> DivideMix:
    ctx = SimpleNamespace(
        num_classes=3, num_train=n, device=torch.device("cpu"), epochs=20, batch_size=4, noise_rate=noise_rate,
        dataset="fashion-mnist", noise="sym", pretrained=False,
        make_backbone=lambda: torch.nn.Linear(2, 3), make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        make_scheduler=lambda opt, e: None, generators=fake_generators, given_labels=torch.zeros(n, dtype=torch.long),
        artifact_dir=Path("."), epoch_pool=lambda: None)
    m = DivideMix(build_options(DivideMix, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def test_sharpen_by_hand():
    out = sharpen(torch.tensor([[0.2, 0.8], [0.5, 0.5]]), 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.04 / 0.68, 0.64 / 0.68], [0.5, 0.5]]))


def test_mixmatch_loss_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    target = torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.2, 0.8]])
    loss, terms = mixmatch_loss(logits, target, n_labeled=2, lam_u=10.0)
    ls = F.log_softmax(logits, 1)
    lx = -((ls[0] * target[0]).sum() + (ls[1] * target[1]).sum()) / 2
    lu = ((torch.tensor([0.5, 0.5]) - target[2]) ** 2).mean()
    pm = F.softmax(logits, 1).mean(0)
    pen = sum(0.5 * math.log(0.5 / pm[k].item()) for k in range(2))
    assert terms["loss_x"].item() == pytest.approx(lx.item())
    assert terms["loss_u"].item() == pytest.approx(lu.item())
    assert terms["penalty"].item() == pytest.approx(pen, rel=1e-5)  # float32
    assert loss.item() == pytest.approx(lx.item() + 10 * lu.item() + pen, rel=1e-5)


def test_lambda_u_ramps_linearly_over_16_epochs_after_warmup():
    assert linear_rampup(5.0, 10, 25) == 0.0
    assert linear_rampup(10.0, 10, 25) == 0.0
    assert linear_rampup(18.0, 10, 25) == pytest.approx(12.5)
    assert linear_rampup(26.0, 10, 25) == 25.0 and linear_rampup(40.0, 10, 25) == 25.0


@pytest.mark.parametrize("dataset,noise,rate,classes,expected", [
    ("cifar10", "sym", 0.2, 10, {"lambda_u": 0.0, "p_threshold": 0.5, "warmup_epochs": 10, "alpha": 4.0}),
    ("cifar10", "sym", 0.5, 10, {"lambda_u": 25.0, "p_threshold": 0.5}),
    ("cifar10", "sym", 0.9, 10, {"lambda_u": 50.0, "p_threshold": 0.6}),
    ("cifar10", "asym", 0.4, 10, {"lambda_u": 0.0}),
    ("cifar100", "sym", 0.2, 100, {"lambda_u": 25.0, "warmup_epochs": 30}),
    ("cifar100", "sym", 0.8, 100, {"lambda_u": 150.0}),
    ("clothing1m", "none", None, 14, {"lambda_u": 0.0, "warmup_epochs": 1, "alpha": 0.5}),
    ("fashion-mnist", "sym", 0.4, 10, {"lambda_u": 25.0, "warmup_epochs": 10}),  # nearest: 50%
])
def test_per_setting_defaults(dataset, noise, rate, classes, expected):
    got = dividemix_defaults(dataset, noise, rate, classes)
    assert {k: got[k] for k in expected} == expected


def test_clean_probability_is_the_lower_mean_component():
    m = fake_dividemix(n=200)
    rng = np.random.default_rng(0)
    loss = torch.tensor(np.concatenate([rng.normal(0.1, 0.03, 150), rng.normal(0.8, 0.05, 50)]),
                        dtype=torch.float32)
    prob = m._fit_gmm("1", loss)
    assert prob[:150].min() > 0.9 and prob[150:].max() < 0.1


def test_co_divide_uses_the_other_network_split():
    m = fake_dividemix(n=8)
    m.state["prob1"] = torch.tensor([0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1])
    m.state["prob2"] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    p1, p2 = m.phases(epoch=15)
    assert (p1.name, p1.optimizers, p1.indices.tolist()) == ("net1", ("net1",), [4, 5, 6, 7])  # net 2's split
    assert (p2.name, p2.optimizers, p2.indices.tolist()) == ("net2", ("net2",), [0, 2, 4, 6])  # net 1's split
    assert p1.batch_size == 2  # half the run's batch size: labeled + unlabeled halves
    warm = m.phases(epoch=0)
    assert [p.optimizers for p in warm] == [("net1",), ("net2",)] and warm[0].indices is None


def test_refinement_and_co_guessing_by_hand():
    m = fake_dividemix(n=8, temperature=0.5)
    t1 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t2 = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    net, other = FixedLogits(t1), FixedLogits(t2)
    batch = {"weak": torch.tensor([[0.0], [1.0]]), "weak2": torch.tensor([[1.0], [1.0]]),
             "label": torch.tensor([0, 2])}
    w = torch.tensor([0.75, 0.0])
    got, weak = m._refine(net, batch, w)
    torch.testing.assert_close(weak, t1)  # the first view's logits, for train_acc
    p = F.softmax(t1, 1)
    px0 = 0.75 * torch.tensor([1.0, 0, 0]) + 0.25 * (p[0] + p[1]) / 2
    px1 = (p[1] + p[1]) / 2  # w = 0: the net's own prediction only
    torch.testing.assert_close(got, sharpen(torch.stack([px0, px1]), 0.5))
    ub = {"weak": torch.tensor([[0.0]]), "weak2": torch.tensor([[1.0]])}
    pu = (F.softmax(t1, 1)[0] + F.softmax(t1, 1)[1] + F.softmax(t2, 1)[0] + F.softmax(t2, 1)[1]) / 4
    torch.testing.assert_close(m._co_guess(net, other, ub), sharpen(pu[None], 0.5))


def test_mix_step_refines_with_the_peer_probabilities_and_mixes_unlabeled():
    m = fake_dividemix(n=8)
    m.models["net1"], m.models["net2"] = FixedLogits(torch.eye(3)), FixedLogits(torch.eye(3))
    m.state["prob2"] = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    m.state["prob1"] = torch.zeros(8)
    seen = {}
    orig = m._refine

    def spy(net, batch, w):
        seen["w"] = w.clone()
        return orig(net, batch, w)

    m._refine = spy
    fetched = {}
    m.ctx.fetch = lambda idx, views: fetched.setdefault("idx", idx) is not None and {
        v: (idx.float() % 3)[:, None] for v in views}
    phase = Phase("net1", optimizers=("net1",), indices=torch.tensor([1, 3, 5, 7]), batch_size=2)
    batch = {"index": torch.tensor([3, 7]), "label": torch.tensor([0, 1]),
             "weak": torch.tensor([[0.0], [1.0]]), "weak2": torch.tensor([[0.0], [1.0]])}
    out = m.train_step(batch, 15, phase)
    assert seen["w"].tolist() == [1.0, 1.0]  # prob2 of indices 3 and 7: the peer's division
    assert set(fetched["idx"].tolist()) <= {0, 2, 4, 6}  # unlabeled = not in the labeled set
    assert torch.isfinite(out.loss) and out.terms["loss_u"] >= 0
    # train_acc after the warm-up too: net 1's logits of the labeled samples' weak view
    torch.testing.assert_close(out.logits, torch.eye(3)[[0, 1]])


# --- a short run on a Fashion-MNIST subset, and resume -------------------------------------------

def test_short_run_logs_division_metrics(tmp_path):
    tr = make_trainer(tmp_path, method="dividemix", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=100,
                      method_options={"warmup_epochs": 1})
    m1, m2 = tr.run_epoch(0), tr.run_epoch(1)
    assert "clean_auc" not in m1 and m1["train_acc"] >= 0
    for key in ("clean_auc", "clean_precision", "clean_recall", "clean_auc_net2", "divide_eval_s", "divide_gmm_s",
                "loss_x", "loss_u", "penalty", "labeled_frac_net1", "train_time_s", "train_acc"):
        assert math.isfinite(m2[key]), key
    assert 0 < m2["labeled_frac_net1"] < 1


def test_resume_equals_uninterrupted(tmp_path):
    args = ("--method", "dividemix", "--noise", "sym", "--noise-rate", "0.4", "--subset", "300",
            "--batch-size", "100", "--epochs", "3", "--set", "warmup_epochs=1")
    ka, kb = assert_resume_equals_uninterrupted(
        tmp_path, args, 2, ("test_acc", "loss_x", "loss_u", "clean_auc", "labeled_frac_net1"))
    assert set(ka["models"]) == {"net1", "net2"}
    assert torch.equal(ka["state"]["prob1"], kb["state"]["prob1"])


def test_with_an_epoch_sample_only_its_samples_are_divided_and_unlabeled():
    """Clothing1M-style epochs: the evaluation pass, GMM and unlabeled set cover the epoch's
    sample only (official dataloader_clothing1M.py eval_train draws the sample too)."""
    m = fake_dividemix(n=8, warmup_epochs=0)
    pool = torch.tensor([1, 2, 5, 6])
    m.ctx.epoch_pool = lambda: pool
    asked = {}

    def predict_train(model, indices=None):
        asked["indices"] = indices
        return torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]])  # 1, 2 right; 5, 6 wrong

    m.ctx.predict_train = predict_train
    m.on_epoch_start(0)
    assert torch.equal(asked["indices"], pool)
    prob = m.state["prob1"]
    assert torch.all(prob[[0, 3, 4, 7]] == 0)  # outside the sample: neither labeled nor scored
    assert prob[1] > 0.5 and prob[2] > 0.5 and prob[5] < 0.5 and prob[6] < 0.5
    phase = m.phases(0)[0]
    assert sorted(phase.indices.tolist()) == [1, 2]
    unlabeled = torch.cat([m._next_unlabeled(phase, 1) for _ in range(4)])
    assert sorted(set(unlabeled.tolist())) == [5, 6]
