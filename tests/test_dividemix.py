"""DivideMix: GMM division, co-divide, refinement, co-guessing, sharpening, mixup loss,
lambda_u ramp-up, per-setting defaults, a short run, and resume."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import FixedLogits, assert_resume_equals_uninterrupted, fake_context, make_trainer, setting_defaults

from bench.common.options import build_options
from methods.base import Phase
from methods.dividemix import DivideMix
from methods.mixmatch import linear_rampup, mixmatch_loss, sharpen


def fake_dividemix(n: int = 8, noise_rate: float | None = 0.4, dataset: str = "fashion-mnist", noise: str = "sym",
                   num_classes: int = 3, batch_size: int = 4, **opts) -> DivideMix:
    ctx = fake_context(
        num_classes=num_classes, num_train=n, epochs=20, batch_size=batch_size, noise_rate=noise_rate,
        dataset=dataset, noise=noise, make_backbone=lambda: torch.nn.Linear(2, 3))
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
    got = setting_defaults(DivideMix, dataset, noise, rate, classes)
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

@pytest.mark.slow
def test_short_run_logs_division_metrics(tmp_path):
    tr = make_trainer(tmp_path, method="dividemix", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=100,
                      method_options={"warmup_epochs": 1})
    m1, m2 = tr.run_epoch(0), tr.run_epoch(1)
    assert "clean_auc" not in m1 and m1["train_acc"] >= 0
    for key in ("clean_auc", "clean_precision", "clean_recall", "clean_auc_net2", "divide_eval_s", "divide_gmm_s",
                "loss_x", "loss_u", "penalty", "labeled_frac_net1", "train_time_s", "train_acc"):
        assert math.isfinite(m2[key]), key
    assert 0 < m2["labeled_frac_net1"] < 1


@pytest.mark.slow
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
    assert sorted(m._unlabeled[phase.name].pool.tolist()) == [5, 6]  # the rest of the epoch's sample


# --- the Clothing1M / WebVision step (2B rows mixed) and warm-up (confidence penalty) ---------------

class RowNet(torch.nn.Module):
    """A tiny net with BatchNorm (so the rows forwarded together change the output) that records
    the rows of each forward and whether it builds a graph."""

    def __init__(self, features: int, classes: int, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = torch.nn.Sequential(torch.nn.Linear(features, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                            torch.nn.Linear(8, classes))
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.body(x)


def clothing_step(mix_rows: str | None, b: int = 4, n: int = 16, classes: int = 5, features: int = 3):
    """A post-warm-up step of network 1 on "clothing1m" (noise none, lambda_u 0, alpha 0.5), B = ``b``
    labeled + ``b`` unlabeled samples: (method, step output, inputs the official recomputation needs)."""
    opts = {} if mix_rows is None else {"mix_rows": mix_rows}
    m = fake_dividemix(n=n, noise_rate=None, dataset="clothing1m", noise="none", num_classes=classes,
                       batch_size=2 * b, **opts)
    gen = torch.Generator().manual_seed(1)
    views = {v: torch.randn(n, features, generator=gen) for v in ("weak", "weak2")}
    labels = torch.randint(0, classes, (n,), generator=gen)
    m.state["prob2"] = torch.where(torch.arange(n) % 2 == 1, 0.55 + 0.4 * torch.rand(n, generator=gen), 0.1)
    nets = (RowNet(features, classes, 1), RowNet(features, classes, 2))
    m.models["net1"], m.models["net2"] = nets
    fetched = []

    def fetch(idx, vs):
        fetched.append(idx.clone())
        return {v: views[v][idx] for v in vs}

    m.ctx.fetch = fetch
    phase = m.phases(epoch=2)[0]  # net 1 on net 2's division (the odd indices)
    idx = phase.indices[:b]
    batch = {"index": idx, "label": labels[idx], "weak": views["weak"][idx], "weak2": views["weak2"][idx]}
    init = {k: {n_: t.clone() for n_, t in net.state_dict().items()} for k, net in zip(("net1", "net2"), nets,
                                                                                           strict=True)}
    out = m.train_step(batch, 2, phase)
    return m, out, SimpleNamespace(views=views, labels=labels, idx=idx, u_idx=fetched[0], init=init,
                                   prob=m.state["prob2"], classes=classes, features=features)


def official_clothing_loss(r, rows: str) -> tuple[torch.Tensor, torch.nn.Module]:
    """Train_clothing1M.py:60-109 (rows "labeled") or Train_cifar.py:62-113 with lambda_u 0
    ("all"), line by line, from the same inputs and generators (fake_generators: numpy and torch
    seeded 0; np.random.beta and torch.randperm there); the loss and the network it trained."""
    net, net2 = RowNet(r.features, r.classes, 0), RowNet(r.features, r.classes, 0)
    net.load_state_dict(r.init["net1"])
    net2.load_state_dict(r.init["net2"])
    net.train()
    net2.eval()
    T, alpha = 0.5, 0.5  # Train_clothing1M.py --T 0.5, --alpha 0.5
    inputs_x, inputs_x2 = r.views["weak"][r.idx], r.views["weak2"][r.idx]
    inputs_u, inputs_u2 = r.views["weak"][r.u_idx], r.views["weak2"][r.u_idx]
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, r.classes).scatter_(1, r.labels[r.idx].view(-1, 1), 1)
    w_x = r.prob[r.idx].view(-1, 1).float()
    with torch.no_grad():
        pu = (torch.softmax(net(inputs_u), dim=1) + torch.softmax(net(inputs_u2), dim=1)
              + torch.softmax(net2(inputs_u), dim=1) + torch.softmax(net2(inputs_u2), dim=1)) / 4
        ptu = pu ** (1 / T)
        targets_u = ptu / ptu.sum(dim=1, keepdim=True)
        px = (torch.softmax(net(inputs_x), dim=1) + torch.softmax(net(inputs_x2), dim=1)) / 2
        px = w_x * labels_x + (1 - w_x) * px
        ptx = px ** (1 / T)
        targets_x = ptx / ptx.sum(dim=1, keepdim=True)
    lam = np.random.default_rng(0).beta(alpha, alpha)
    lam = max(lam, 1 - lam)
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
    all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)
    idx = torch.randperm(all_inputs.size(0), generator=torch.Generator().manual_seed(0))
    input_a, input_b = all_inputs, all_inputs[idx]
    target_a, target_b = all_targets, all_targets[idx]
    keep = batch_size * 2 if rows == "labeled" else all_inputs.size(0)
    mixed_input = lam * input_a[:keep] + (1 - lam) * input_b[:keep]
    mixed_target = lam * target_a[:keep] + (1 - lam) * target_b[:keep]
    logits = net(mixed_input)
    lx = -torch.mean(torch.sum(F.log_softmax(logits[:batch_size * 2], dim=1) * mixed_target[:batch_size * 2], dim=1))
    prior = torch.ones(r.classes) / r.classes
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    penalty = torch.sum(prior * torch.log(prior / pred_mean))
    return lx + penalty, net  # Train_cifar.py: + lamb * Lu, lamb = 0 (lambda_u 0)


def test_clothing1m_step_mixes_and_forwards_the_labeled_2b_rows_as_the_official():
    m, out, r = clothing_step(None)  # the clothing1m default
    assert m.mix_rows == "labeled" and m.lambda_u == 0.0
    ref, ref_net = official_clothing_loss(r, "labeled")
    torch.testing.assert_close(out.loss, ref)
    assert out.terms["loss_u"].item() == 0.0
    # the same gradient, so the same step
    out.loss.backward()
    ref.backward()
    for (name, p), q in zip(m.models["net1"].named_parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    # the forwards in the official order (co-guessing, then refinement, then the mixed rows): the
    # same BatchNorm running statistics, which the division pass and the test read
    for name, buf in m.models["net1"].named_buffers():
        torch.testing.assert_close(buf, dict(ref_net.named_buffers())[name], msg=name)
    # network 1: 4 no-grad forwards of B rows (refinement, co-guessing), one of 2B with a graph
    calls = m.models["net1"].calls
    assert sorted(c for c in calls if not c[1]) == [(4, False)] * 4 and [c for c in calls if c[1]] == [(8, True)]
    assert m.models["net2"].calls == [(4, False), (4, False)]  # co-guessing only


def test_mix_rows_all_is_the_4b_step_and_differs():
    _, lab, r_lab = clothing_step("labeled")
    m, out, r = clothing_step("all")
    assert torch.equal(r.u_idx, r_lab.u_idx)  # the same unlabeled batch, the same draws
    ref, _ = official_clothing_loss(r, "all")
    torch.testing.assert_close(out.loss, ref)
    assert [c for c in m.models["net1"].calls if c[1]] == [(16, True)]  # all 4B rows forwarded
    assert abs(out.loss.item() - lab.loss.item()) > 1e-3, (out.loss.item(), lab.loss.item())


def test_clothing1m_step_does_not_sync():
    from helpers import SyncRecorder, record_syncs

    m = fake_dividemix(n=16, noise_rate=None, dataset="clothing1m", noise="none", num_classes=5, batch_size=8)
    m.models["net1"], m.models["net2"] = RowNet(3, 5, 1), RowNet(3, 5, 2)
    m.state["prob2"] = torch.where(torch.arange(16) % 2 == 1, 0.9, 0.1)
    m.ctx.fetch = lambda idx, vs: {v: torch.ones(len(idx), 3) * idx[:, None] for v in vs}
    phase = m.phases(epoch=2)[0]
    idx = phase.indices[:4]
    batch = {"index": idx, "label": idx % 5, "weak": torch.ones(4, 3), "weak2": -torch.ones(4, 3)}
    with record_syncs(SyncRecorder()) as rec:
        m.train_step(batch, 2, phase)
    assert not rec.sites, [str(s) for s in rec.sites]


LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]


@pytest.mark.parametrize("dataset,noise,opts,penalised", [
    ("clothing1m", "none", {}, True),  # Train_clothing1M.py:127-130: always
    ("webvision", "none", {}, False),  # Train_webvision.py:128-131: commented out
    ("fashion-mnist", "sym", {}, False),  # Train_cifar.py:132-136: asym only
    ("fashion-mnist", "pairflip", {}, True),
    ("cifar10", "asym", {}, True),
    ("cifar10", "none", {}, False),
    ("clothing1m", "none", {"warmup_penalty": "never"}, False),
    ("fashion-mnist", "sym", {"warmup_penalty": "always"}, True),
    ("webvision", "none", {"warmup_penalty": "class-dependent"}, False),
])
def test_warmup_confidence_penalty_per_data_set(dataset, noise, opts, penalised):
    m = fake_dividemix(noise_rate=None if noise == "none" else 0.4, dataset=dataset, noise=noise, **opts)
    m.models["net1"] = FixedLogits(torch.tensor(LOGITS))
    batch = {"train": torch.tensor([[0.0], [1.0]]), "label": torch.tensor([1, 2])}
    out = m.train_step(batch, 0, Phase("warmup1", optimizers=("net1",)))

    def softmax(row):
        z = sum(math.exp(v) for v in row)
        return [math.exp(v) / z for v in row]

    ce = -(math.log(softmax(LOGITS[0])[1]) + math.log(softmax(LOGITS[1])[2])) / 2
    neg_entropy = sum(sum(q * math.log(q) for q in softmax(row)) for row in LOGITS) / 2  # mean sum p log p
    assert out.loss.item() == pytest.approx(ce + neg_entropy if penalised else ce, rel=1e-6)
    assert ("penalty" in out.terms) == penalised


@pytest.mark.parametrize("dataset,noise,opts,expected", [
    ("clothing1m", "none", {}, ("labeled", "always")),
    ("webvision", "none", {}, ("labeled", "never")),
    ("fashion-mnist", "sym", {}, ("all", "class-dependent")),
    ("cifar100", "asym", {}, ("all", "class-dependent")),
    ("clothing1m", "none", {"mix_rows": "all", "warmup_penalty": "never"}, ("all", "never")),
    ("cifar10", "sym", {"mix_rows": "labeled"}, ("labeled", "class-dependent")),
])
def test_resolved_options_show_the_per_data_set_step_and_warmup(dataset, noise, opts, expected):
    m = fake_dividemix(noise_rate=None if noise == "none" else 0.4, dataset=dataset, noise=noise, **opts)
    got = m.resolved_options()
    assert (got["mix_rows"], got["warmup_penalty"]) == expected
    assert {k: setting_defaults(DivideMix, dataset, noise, 0.4, 10)[k] for k in ("mix_rows", "warmup_penalty")} == {
        "mix_rows": "labeled" if dataset in ("clothing1m", "webvision") else "all",
        "warmup_penalty": {"clothing1m": "always", "webvision": "never"}.get(dataset, "class-dependent")}


@pytest.mark.parametrize("key,value,fragment", [
    ("mix_rows", "unlabeled", "valid values are all, labeled"),
    ("warmup_penalty", "asym", "valid values are always, never, class-dependent"),
])
def test_bad_step_and_warmup_options_are_rejected(key, value, fragment, tmp_path, capsys):
    from bench.cli import main
    from bench.common.errors import UsageError
    from methods.dividemix import DivideMixOptions

    with pytest.raises(UsageError, match=fragment):
        build_options(DivideMix, {key: value})
    with pytest.raises(ValueError, match=f"{key} '{value}' must be one of"):
        DivideMixOptions(**{key: value})  # built in code, not from --set
    code = main(["run", "--method", "dividemix", "--set", f"{key}={value}", "--out", str(tmp_path / "out"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bench: error:") and fragment in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("order,sizes", [("partial", [4, 4, 2, 4, 4, 2]), ("drop", [4, 4, 4, 4, 4, 4])])
def test_unlabeled_stream_keeps_the_partial_batch_of_each_pass_as_the_official_loader(order, sizes):
    """10 unlabeled samples, batches of 4: the official loader (shuffle, no drop_last, a fresh
    pass when exhausted) gives 4, 4, 2, then a new pass; with ``drop`` the 2 are skipped."""
    from itertools import islice

    from methods.streams import index_batches

    batches = list(islice(index_batches(torch.arange(10), 4, order, torch.Generator().manual_seed(0)), 6))
    assert [len(b) for b in batches] == sizes
    if order == "partial":  # each pass is a permutation of the whole pool
        assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))
        assert sorted(torch.cat(batches[3:]).tolist()) == list(range(10))
    small = index_batches(torch.arange(3), 4, order, torch.Generator().manual_seed(0))
    assert [len(next(small)) for _ in range(3)] == [3, 3, 3]  # a pool smaller than a batch: whole


def test_unlabeled_batch_is_the_loaders_size_beside_a_partial_labeled_batch():
    """The official unlabeled loader's batch size is the labeled loader's, whatever the size of
    the labeled batch at hand (the last of an epoch is partial)."""
    m, _, r = clothing_step(None, b=4, n=40)
    phase = m.phases(epoch=2)[0]
    assert phase.batch_size == 4
    idx = phase.indices[:2]  # a partial labeled batch of 2
    sizes = []
    m.ctx.fetch = lambda i, vs: sizes.append(len(i)) or {v: r.views[v][i] for v in vs}
    batch = {"index": idx, "label": r.labels[idx], "weak": r.views["weak"][idx], "weak2": r.views["weak2"][idx]}
    m.train_step(batch, 2, phase)
    assert sizes == [4]
