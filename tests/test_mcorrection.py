"""M-Correction: the sheet's hand-checkable values (worked from the paper and official code), the Beta
mixture and its lookup against a numpy copy of the official ``BetaMixture1D``, the schedule,
the variants' defaults, a short Fashion-MNIST run of each variant, and resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_resume_equals_uninterrupted, fake_context, make_trainer, setting_defaults
from scipy import stats

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.mcorrection import (
    MCorrection,
    bootstrap_loss,
    fit_mixture,
    look_up,
    loss_range,
    make_lookup,
    normalise_losses,
    prior_penalty,
)
from methods.mixtures import MCORRECTION_GUARDS


def test_prior_penalty_by_hand():
    # reg_loss_class([.5, .3, .2], C=3) = 0.070240
    probs = torch.tensor([[.5, .3, .2]], dtype=torch.float64)
    assert prior_penalty(probs, 3).item() == pytest.approx(0.070240, abs=1e-6)


def test_loss_normalisation_and_bin_by_hand():
    # losses 1..20: p95 = 19.05, p5' = 1.95001; loss 10 -> 0.470760, lookup bin 47
    lo, hi, kept = loss_range(np.arange(1, 21, dtype=np.float64))
    assert (hi, lo) == (pytest.approx(19.05), pytest.approx(1.95001))
    assert kept.tolist() == list(range(2, 20))  # inside [5th, 95th]
    x = normalise_losses(np.array([10.0, 0.5, 30.0]), lo, hi)
    assert x[0] == pytest.approx(0.470760, abs=1e-6) and x[1] == 1e-3 and x[2] == 1 - 1e-3
    lookup = torch.arange(100, dtype=torch.float64)
    assert look_up(lookup, torch.tensor([x[0], 0.0, 1.0, 0.999])).tolist() == [47, 0, 99, 99]


def test_hard_bootstrapping_loss_by_hand():
    # log_softmax of [[2,0,0],[0,1,0]], y = [0,1], idx = [1,0], B = [.2,.9], z = [0,2], lam = .7: 1.160495
    logp = F.log_softmax(torch.tensor([[2.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64), dim=1)
    y, idx, b, z, lam = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([.2, .9], dtype=torch.float64), \
        torch.tensor([0, 2]), 0.7
    loss = lam * bootstrap_loss(logp, y, z, b) + (1 - lam) * bootstrap_loss(logp, y[idx], z[idx], b[idx])
    assert loss.item() == pytest.approx(1.160495, abs=1e-6)
    # soft targets: a one-hot distribution gives the hard loss
    assert bootstrap_loss(logp, y, F.one_hot(z, 3).double(), b).item() == pytest.approx(
        bootstrap_loss(logp, y, z, b).item())


class OfficialBMM:
    """numpy copy of the official BetaMixture1D (utils.py:662-742), floor 1e-12 included."""

    def __init__(self) -> None:
        self.a, self.b, self.w = np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.array([.5, .5])

    def wl(self, x, k):
        return self.w[k] * stats.beta.pdf(x, self.a[k], self.b[k])

    def fit(self, x, iters=10):
        x = np.clip(np.copy(x), 1e-4, 1 - 1e-4)
        for _ in range(iters):
            r = np.array([self.wl(x, k) for k in range(2)])
            r[r <= 1e-12] = 1e-12
            r /= r.sum(axis=0)
            for k in range(2):
                m = np.sum(r[k] * x) / np.sum(r[k])
                s2 = np.sum(r[k] * (x - m) ** 2) / np.sum(r[k])
                self.a[k] = m * (m * (1 - m) / s2 - 1)
                self.b[k] = self.a[k] * (1 - m) / m
            self.w = r.sum(axis=1) / r.sum()

    def lookup(self):
        x = np.linspace(1e-12, 1 - 1e-12, 100)
        post = self.wl(x, 1) / (self.wl(x, 0) + self.wl(x, 1) + 1e-12)
        post[np.argmax(post):] = post.max()
        return post


def official_fits() -> list[np.ndarray]:
    """Losses of two shapes: a noisy bump (noisy alpha > 1) and a noisy spread reaching down to
    the clean losses (noisy alpha < 1, its density unbounded towards 0)."""
    rng = np.random.default_rng(0)
    bump = np.concatenate([rng.gamma(1.0, 0.3, 800), rng.normal(3.0, 0.5, 200).clip(0)])
    rng = np.random.default_rng(6)
    spread = np.concatenate([rng.exponential(0.5, 700), rng.uniform(0, 4, 300)])
    return [bump, spread]


@pytest.mark.parametrize("shape", [0, 1], ids=["noisy-alpha-above-1", "noisy-alpha-below-1"])
def test_mixture_and_lookup_match_the_official_code(shape):
    losses = official_fits()[shape]
    lo, hi, kept = loss_range(losses)
    x = normalise_losses(kept, lo, hi)
    ref = OfficialBMM()
    ref.fit(x)
    assert (ref.a[1] < 1) == bool(shape)
    ours = fit_mixture(kept, lo, hi, 10, MCORRECTION_GUARDS)
    np.testing.assert_allclose(ours.alphas, ref.a, rtol=1e-9)
    np.testing.assert_allclose(ours.betas, ref.b, rtol=1e-9)
    # every bin, the end points 1e-12 and 1 - 1e-12 included
    np.testing.assert_allclose(make_lookup(ours), ref.lookup(), rtol=1e-9, atol=1e-300)
    exact = fit_mixture(kept, lo, hi, 10, None)  # the default: the same table but for the 1e-12 terms
    np.testing.assert_allclose(make_lookup(exact), ref.lookup(), rtol=1e-6, atol=1e-15)
    lookup = make_lookup(ours)
    assert np.all(np.diff(lookup[np.argmax(lookup):]) == 0) and lookup[-1] > 0.5 > lookup[0]
    if shape:  # bin 0 holds about a tenth of the samples; at 1e-6 its posterior is another
        assert (normalise_losses(losses, lo, hi) < 0.01).mean() > 0.05
        assert ours.posterior(np.array([1e-6]))[1][0] > 1.5 * lookup[0]


def test_schedule_scales_the_official_300_epochs_and_variant_follows_the_noise():
    def variant(rate):
        return setting_defaults(MCorrection, "cifar10", "sym", rate)["variant"]

    assert variant(0.4) == "hard" and variant(0.9) == "dynamic"
    assert variant(None) == "hard"
    tr300 = scaled(300)
    assert (tr300.boot, tr300.soft_hard, len(tr300.temps)) == (105, 110, 89)  # 1-based 106, 111; 200 - 111
    tr30 = scaled(30)
    assert (tr30.boot, tr30.soft_hard, len(tr30.temps)) == (10, 11, 9)
    assert tr30.temps[0] == 1.0 and tr30.temps[-1] == pytest.approx(0.001)


def scaled(epochs: int) -> MCorrection:
    ctx = fake_context(epochs=epochs, noise_rate=0.4, num_train=4, num_classes=3,
                       make_backbone=lambda: torch.nn.Linear(2, 3), make_optimizer=lambda p: torch.optim.SGD(p, 0.1))
    m = MCorrection(build_options(MCorrection, {}), ctx)
    m.setup()
    return m


@pytest.mark.parametrize("key,value", [("alpha", "0"), ("reg_term", "-1"), ("bootstrap_epoch", "-1"),
                                       ("bmm_iterations", "0"), ("variant", "static")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key if key != "variant" else "hard"):
        build_options(MCorrection, {key: value})


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["hard", "soft", "dynamic"])
def test_short_run_of_each_variant(tmp_path, variant):
    tr = make_trainer(tmp_path, method="mcorrection", noise="sym", noise_rate=0.4, subset=300, epochs=3,
                      batch_size=100, method_options={"variant": variant, "bootstrap_epoch": "1"})
    m0 = tr.run_epoch(0)
    assert "loss_boot" not in m0 and 0 < m0["bmm_weight_clean"] < 1  # mixup, then the first fit
    st = tr.method.state
    p = st["p_noisy"].clone()
    assert p.shape == (300,) and ((p >= 0) & (p <= 1)).all()
    # each sample's B is the lookup of its own tracked loss (state by dataset index)
    lo, hi = st["range"].tolist()
    bins = (100 * torch.from_numpy(normalise_losses(st["loss"].double().numpy(), lo, hi))).long().clamp(0, 99)
    torch.testing.assert_close(p, st["lookup"][bins].float())
    m1, m2 = tr.run_epoch(1), tr.run_epoch(2)
    if variant == "dynamic":  # epochs 1 guided, 2 soft-to-hard (soft_hard = boot + 1)
        assert "loss_boot" not in m1 and m2["temperature"] == 1.0
    else:
        assert math.isfinite(m1["loss_boot"]) and 0 < m1["mean_b"] < 1 and math.isfinite(m2["loss_reg"])


@pytest.mark.slow
def test_resume_of_the_dynamic_variant_equals_uninterrupted(tmp_path):
    args = ("--method", "mcorrection", "--noise", "sym", "--noise-rate", "0.4", "--subset", "300",
            "--batch-size", "100", "--epochs", "3", "--set", "variant=dynamic", "--set", "bootstrap_epoch=1")
    ka, kb = assert_resume_equals_uninterrupted(tmp_path, args, 1, ("test_acc", "train_loss", "bmm_alpha_clean"))
    for key in ("lookup", "range", "p_noisy", "loss"):
        assert torch.equal(ka["state"][key], kb["state"][key])
