"""SOP and SOP+: the fact sheet's hand example, where each term's gradient goes (u, v, the
network), the per-setting learning rates of u and v, option validation, and one short trainer run
per name checking that u and v change only at the visited dataset indices, with their own
unscheduled SGD (momentum 0, weight decay 0)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import fake_context, make_trainer, setting_defaults

from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.training.diagnostics import clean_auc
from methods.base import Phase
from methods.sop import SOP, SOPPlus, corrected_prediction, sop_loss

EPS = 1e-4


# --- by hand, in numpy --------------------------------------------------------------------------------

def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_terms(z_w, y, u, v, z_s=None) -> dict[str, float]:
    """The sheet's formulas, term by term (no detaching: callers differentiate what they may)."""
    onehot = np.eye(z_w.shape[1])[y]
    big_u = np.clip(u ** 2 * onehot, 0, 1)
    big_v = np.clip(v ** 2 * (1 - onehot), 0, 1)
    raw = np.maximum(np_softmax(z_w) + big_u - big_v, EPS)
    pred = np.clip(raw / np.maximum(raw.sum(axis=1, keepdims=True), EPS), EPS, 1)
    hard = np.eye(z_w.shape[1])[z_w.argmax(axis=1)]
    out = {"raw": raw, "pred": pred, "ce": -np.mean((onehot * np.log(pred)).sum(axis=1)),
           "mse": ((hard + big_u - big_v - onehot) ** 2).sum() / len(y),
           "bal": -(np.log(np.clip(pred.mean(axis=0), EPS, 1)) / z_w.shape[1]).sum()}
    if z_s is not None:
        p, q = np_softmax(z_w), np_softmax(z_s)
        out["cons"] = np.mean((p * (np.log(p) - np.log(q))).sum(axis=1))
    return out


def num_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[i] += h
        lo[i] -= h
        g[i] = (f(hi) - f(lo)) / (2 * h)
    return g


def t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


# --- the fact sheet's example and the gradient routing ----------------------------------------------

def test_hand_example_of_the_fact_sheet():
    z, u, v = np.array([[2.0, 0, 0]]), np.array([[0.5]]), np.array([[0, 0.3, 0.4]])
    ref = np_terms(z, [0], u, v)
    np.testing.assert_allclose(ref["raw"], [[1.03699, 0.01651, 1e-4]], atol=5e-6)  # before normalisation
    np.testing.assert_allclose(ref["pred"], [[0.98424, 0.01567, 1e-4]], atol=5e-6)  # after (last clamped back)
    big_u, big_v = (torch.tensor(a, dtype=torch.float64) for a in ([[0.25, 0, 0]], [[0, 0.09, 0.16]]))
    pred = corrected_prediction(torch.tensor(z), big_u, big_v)
    np.testing.assert_allclose(pred.numpy(), ref["pred"], rtol=1e-12)
    assert pred[0, 2].item() == 1e-4  # 0.0000949 after the division, clamped to the floor
    loss, terms = sop_loss(t(z), torch.tensor([0]), t(u), t(v))
    assert terms["loss_ce"].item() == pytest.approx(0.01589, abs=5e-6)
    assert terms["loss_mse"].item() == pytest.approx(0.0962, rel=1e-12)  # 0.25^2 + 0.09^2 + 0.16^2
    assert loss.item() == pytest.approx(0.11209, abs=5e-6)
    assert set(terms) == {"loss_ce", "loss_mse"}


def test_sop_gradients_v_from_mse_only_u_from_ce_and_mse_net_from_ce():
    z, u, v, y = np.array([[2.0, 0, 0]]), np.array([[0.5]]), np.array([[0, 0.3, 0.4]]), [0]
    zt, ut, vt = t(z), t(u), t(v)
    loss, _ = sop_loss(zt, torch.tensor(y), ut, vt)
    loss.backward()
    # v: only the MSE, 2 (hard + U - V - y)_c * (-2 v_c) / B = [0, 2*.09*.6, 2*.16*.8]; CE would add to v_1
    np.testing.assert_allclose(vt.grad.numpy(), [[0, 0.108, 0.256]], rtol=1e-12, atol=1e-15)
    # u: CE and MSE; the MSE alone gives 2 * 0.25 * 2u = 0.5, the CE pulls it down
    ref_u = num_grad(lambda a: (lambda r: r["ce"] + r["mse"])(np_terms(z, y, a, v)), u)
    np.testing.assert_allclose(ut.grad.numpy(), ref_u, rtol=1e-6)
    assert ut.grad.item() < 0.5 - 1e-3
    # the network: the CE only (the MSE's one-hot argmax carries no gradient)
    ref_z = num_grad(lambda a: np_terms(a, y, u, v)["ce"], z)
    np.testing.assert_allclose(zt.grad.numpy(), ref_z, rtol=1e-6, atol=1e-10)


def test_sop_plus_gradients_balance_and_consistency():
    """B = 2 (row 0: the sheet's sample): v still from the MSE only; u from CE, MSE and the balance
    term; the weak logits from CE and balance (the consistency target is detached); the strong
    logits from the consistency term only."""
    z_w = np.array([[2.0, 0, 0], [0.5, 1.0, -0.3]])
    z_s = np.array([[1.0, 0.2, -0.4], [-0.2, 0.4, 1.1]])
    u, v, y = np.array([[0.5], [0.7]]), np.array([[0, 0.3, 0.4], [0.2, 0.6, 0.1]]), [0, 2]
    r_bal, r_cons = 0.1, 0.9
    zw, zs, ut, vt = t(z_w), t(z_s), t(u), t(v)
    loss, terms = sop_loss(zw, torch.tensor(y), ut, vt, zs, r_bal=r_bal, r_cons=r_cons)
    ref = np_terms(z_w, y, u, v, z_s)
    assert set(terms) == {"loss_ce", "loss_mse", "loss_bal", "loss_cons"}
    for k in ("ce", "mse", "bal", "cons"):
        assert terms[f"loss_{k}"].item() == pytest.approx(ref[k], rel=1e-10), k
    assert loss.item() == pytest.approx(ref["ce"] + ref["mse"] + r_bal * ref["bal"] + r_cons * ref["cons"], rel=1e-12)
    loss.backward()
    # v from the MSE only: 2 r_c (-2 v_c) / B where V is unclamped and c != y
    onehot, hard = np.eye(3)[y], np.eye(3)[z_w.argmax(1)]
    r = hard + np.clip(u ** 2 * onehot, 0, 1) - np.clip(v ** 2 * (1 - onehot), 0, 1) - onehot
    np.testing.assert_allclose(vt.grad.numpy(), 2 * r * (-2 * v) * (1 - onehot) / 2, rtol=1e-12, atol=1e-15)

    def weak_side(zz, uu):
        rr = np_terms(zz, y, uu, v)
        return rr["ce"] + rr["mse"] + r_bal * rr["bal"]

    ref_u = num_grad(lambda a: weak_side(z_w, a), u)
    np.testing.assert_allclose(ut.grad.numpy(), ref_u, rtol=1e-6)
    no_bal = num_grad(lambda a: (lambda rr: rr["ce"] + rr["mse"])(np_terms(z_w, y, a, v)), u)
    assert np.abs(ref_u - no_bal).max() > 1e-4  # the balance term does reach u
    np.testing.assert_allclose(zw.grad.numpy(), num_grad(lambda a: weak_side(a, u), z_w), rtol=1e-6, atol=1e-10)
    ref_s = num_grad(lambda a: r_cons * np_terms(z_w, y, u, v, a)["cons"], z_s)
    np.testing.assert_allclose(zs.grad.numpy(), ref_s, rtol=1e-6, atol=1e-10)


def test_clamps_stop_u_and_v_gradients():
    """U and V are clamped to [0, 1]: past 1 neither u nor v learns (loss.py:73-74)."""
    ut, vt = t([[1.5]]), t([[0.0, 1.2, 0.3]])
    loss, _ = sop_loss(t([[0.0, 3.0, 0.0]]), torch.tensor([0]), ut, vt)
    loss.backward()
    assert ut.grad.item() == 0 and vt.grad[0, 1].item() == 0 and vt.grad[0, 2].item() != 0


# --- defaults, options, setup -------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,noise,num_classes,expected", [
    ("cifar10", "sym", 10, (10.0, 10.0)),  # NP-C SOP.py
    ("cifar10", "asym", 10, (10.0, 10.0)),
    ("cifar100", "sym", 100, (1.0, 10.0)),  # config_cifar100.json, README
    ("cifar100", "asym", 100, (0.1, 100.0)),  # README (paper: lr_u 1)
    ("cifar100", "pairflip", 100, (0.1, 100.0)),  # class-dependent like asym
    ("cifar100", "instance", 100, (1.0, 10.0)),
    ("cifar100n", "none", 100, (1.0, 10.0)),
    ("fashion-mnist", "asym", 10, (10.0, 10.0)),  # <= 10 classes: CIFAR-10
    ("clothing1m", "none", 14, (1.0, 10.0)),  # > 10 classes: CIFAR-100
    ("tiny-imagenet", "asym", 200, (0.1, 100.0)),
])
def test_defaults_by_setting(dataset, noise, num_classes, expected):
    for cls in (SOP, SOPPlus):
        got = setting_defaults(cls, dataset, noise, None, num_classes)
        assert (got["lr_u"], got["lr_v"]) == expected


def fake_method(cls=SOP, num_train: int = 8, noise: str = "sym", dataset: str = "cifar100", **opts):
    net = torch.nn.Linear(4, 3)
    ctx = fake_context(
        num_classes=3, num_train=num_train, epochs=3, noise_rate=0.4, dataset=dataset, noise=noise,
        make_backbone=lambda: net,
        make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        make_scheduler=lambda opt, n: torch.optim.lr_scheduler.CosineAnnealingLR(opt, n))
    m = cls(build_options(cls, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def test_setup_builds_u_v_and_their_optimisers():
    m = fake_method(noise="asym")
    assert list(m.optimizers) == ["net", "u", "v"]  # the net first: the trainer logs its lr
    assert list(m.schedulers) == []  # lr_schedule=official: set per epoch, on the net alone
    assert list(fake_method(lr_schedule="trainer").schedulers) == ["net"]  # nothing schedules u or v
    uv = m.models["uv"]
    assert uv.u.shape == (8, 1) and uv.v.shape == (8, 3) and uv.u.dtype == torch.float32
    assert 0 < uv.u.abs().max() < 1e-7 and 0 < uv.v.abs().max() < 1e-7  # N(0, 1e-8)
    assert torch.equal(uv.v, fake_method().models["uv"].v)  # drawn from the run's generator
    for key, lr in (("u", 0.1), ("v", 100.0)):  # CIFAR-100 asymmetric
        (group,) = m.optimizers[key].param_groups
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (lr, 0.0, 0.0)
    assert m.optimizers["u"].param_groups[0]["params"][0] is uv.u
    assert (m.lr_u, m.lr_v) == (0.1, 100.0) and m.resolved_options()["lr_v"] == 100.0
    assert m.on_epoch_start(0) == {"sop_lr_u": 0.1, "sop_lr_v": 100.0} and m.on_epoch_start(1) == {}
    m = fake_method(lr_u=3, init_std=0)
    assert m.optimizers["u"].param_groups[0]["lr"] == 3.0 and m.lr_v == 10.0
    assert m.models["uv"].u.abs().sum() == 0


def test_views_and_options_per_name():
    assert fake_method().views(0) == ("train",) and (fake_method().r_bal, fake_method().r_cons) == (0, 0)
    p = fake_method(SOPPlus)
    assert p.views(0) == ("weak", "autoaug-cutout") and (p.r_cons, p.r_bal) == (0.9, 0.1)
    assert fake_method(SOPPlus, r_cons=0).views(0) == ("weak",)  # no strong view without the KL term
    assert set(SOP.search_space(None)) == {"lr_u", "lr_v"}
    assert set(SOPPlus.search_space(None)) == {"lr_u", "lr_v", "r_cons", "r_bal"}


@pytest.mark.parametrize("cls,key,value", [(SOP, "lr_u", "0"), (SOP, "lr_v", "-1"), (SOP, "init_std", "-1e-8"),
                                           (SOPPlus, "r_cons", "-0.1"), (SOPPlus, "r_bal", "-1")])
def test_invalid_options_raise_one_line_errors(cls, key, value):
    with pytest.raises(UsageError, match=key):
        build_options(cls, {key: value})


def test_sop_has_no_weights_of_sop_plus():
    with pytest.raises(UsageError, match="r_cons"):
        build_options(SOP, {"r_cons": "0.5"})


@pytest.mark.parametrize("cls,classes,expected", [
    (SOP, 3, [0.1, 0.1, 0.01, 0.01, 0.001]),  # x 0.1 at 40 and 80 of 120 epochs: 2 and 4 of 6 (NP-C SOP.py)
    (SOPPlus, 3, [0.1, 0.09337, 0.07525, 0.0505, 0.02575]),  # cosine to lr / 100 (config_cifar100.json:98-108)
])
def test_official_network_schedule(cls, classes, expected):
    m = fake_method(cls)
    m.ctx.epochs = 6
    got = [m._official_lr(0.1, e) for e in range(5)]
    assert got == pytest.approx(expected, abs=1e-4)
    m.on_epoch_start(3)
    assert m.optimizers["net"].param_groups[0]["lr"] == pytest.approx(expected[3], abs=1e-4)
    assert m.optimizers["u"].param_groups[0]["lr"] == m.lr_u  # u and v keep their rates


# --- a short run per name ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sop", "sop_plus"])
def test_short_run_updates_u_v_only_at_visited_indices(tmp_path, name):
    tr = make_trainer(tmp_path, method=name, noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=64,
                      optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="cosine", test_subset=500,
                      method_options={"lr_schedule": "trainer"})
    m = tr.method
    visit = torch.arange(0, 300, 3)  # a third of the samples: the rest must keep their initial u and v
    m.phases = lambda epoch: [Phase(indices=visit)]
    u0, v0 = m.models["uv"].u.detach().clone(), m.models["uv"].v.detach().clone()
    metrics = tr.run_epoch(0)
    u1, v1 = m.models["uv"].u.detach(), m.models["uv"].v.detach()
    rest = torch.ones(300, dtype=torch.bool)
    rest[visit] = False
    assert torch.equal(u1[rest], u0[rest]) and torch.equal(v1[rest], v0[rest])
    assert (u1[visit] != u0[visit]).all()  # every visited u learns (its CE gradient is never 0)
    assert (v1[visit] != v0[visit]).any(dim=1).float().mean() > 0.3  # v where the argmax is not the label
    # u and v keep their rates (no scheduler, momentum 0, no weight decay); the network's decays
    for key, lr in (("u", 10.0), ("v", 10.0)):  # Fashion-MNIST: the CIFAR-10 values
        (group,) = m.optimizers[key].param_groups
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (lr, 0.0, 0.0)
        assert not m.optimizers[key].state or all("momentum_buffer" not in s or s["momentum_buffer"] is None
                                                  for s in m.optimizers[key].state.values())
    assert metrics["lr"] == 0.05 and m.optimizers["net"].param_groups[0]["lr"] < 0.05
    assert m.optimizers["net"].param_groups[0]["weight_decay"] == 5e-4
    assert (metrics["sop_lr_u"], metrics["sop_lr_v"]) == (10.0, 10.0)
    is_clean = tr.data.is_clean.cpu().numpy()
    assert metrics["clean_auc"] == clean_auc(-u1.pow(2).squeeze(1).double().numpy(), is_clean)  # the score is -u^2
    assert "clean_precision" not in metrics  # a score, no selected set
    assert 0 < metrics["sop_u2_mean"] < 1
    terms = {"loss_ce", "loss_mse"} | ({"loss_bal", "loss_cons"} if name == "sop_plus" else set())
    assert terms <= set(metrics) and all(math.isfinite(metrics[k]) for k in terms)
    assert not ({"loss_bal", "loss_cons"} & set(metrics)) or name == "sop_plus"
    assert metrics["train_loss"] == pytest.approx(
        metrics["loss_ce"] + metrics["loss_mse"] + 0.1 * metrics.get("loss_bal", 0) + 0.9 * metrics.get("loss_cons", 0),
        rel=1e-4)
    det = m.detections(0)[0]
    assert det.selected is None and torch.equal(det.score, -u1.pow(2).squeeze(1))
