"""PES and PES-semi: the fact sheet's hand-checked values (worked by hand from the paper: the confident
rule, class weights, batch split, lambda_u ramp), the semi-supervised loss by hand, the block each
backbone re-creates, the seeded re-initialisation, per-setting defaults, options, and one short
run per method: epoch T1 trains only the re-created parameters, renew=official keeps them at their
refined values while renew=paper trains them, and later epochs visit only the confident set.
Resume is the registry's test (tests/test_registry_entries.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.backbones import create_backbone
from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.common.search import Setting
from methods.mixmatch import linear_rampup
from methods.pes import (
    PES,
    RAMPUP_EPOCHS,
    SEMI_EPOCHS,
    SEMI_WEIGHT_CLIP,
    PESSemi,
    check_resettable,
    class_weights,
    confident,
    cycled,
    last_stage,
    reinitialise,
    semi_batch_split,
    semi_loss,
)
from methods.shared import classifier_of
from tests.helpers import assert_resume_equals_uninterrupted, fake_context, make_trainer, setting_defaults


# --- the fact sheet's values -----------------------------------------------------------------------
def test_confident_rule_by_hand():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    assert confident(probs, torch.tensor([0, 1])).tolist() == [True, False]


def test_class_weights_by_hand():
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([60, 10, 2]))  # mean count 24
    torch.testing.assert_close(class_weights(labels, 3), torch.tensor([0.4, 2.4, 12.0]))
    torch.testing.assert_close(class_weights(labels, 3, SEMI_WEIGHT_CLIP), torch.tensor([0.4, 2.4, 3.0]))
    # an empty class weighs 0 and does not enter the mean
    torch.testing.assert_close(class_weights(labels + (labels > 0).long(), 4), torch.tensor([0.4, 0.0, 2.4, 12.0]))


@pytest.mark.parametrize("n_l,n_u,expected", [(30000, 20000, (77, 51)), (20000, 30000, (64, 64)),
                                              (50000, 0, (128, 0))])
def test_batch_split_by_hand(n_l, n_u, expected):
    assert semi_batch_split(n_l, n_u, 128) == expected


def test_lambda_u_ramp_is_half_at_t1_plus_8_of_300_epochs():
    ramp = RAMPUP_EPOCHS * 300 / SEMI_EPOCHS  # the method's ramp length on a 300-epoch run: 16
    assert linear_rampup(20 + 8 + 0 / 390, 20, 150.0, ramp) == 75.0
    assert linear_rampup(20, 20, 150.0, ramp) == 0.0 and linear_rampup(40, 20, 150.0, ramp) == 150.0
    assert RAMPUP_EPOCHS * 30 / SEMI_EPOCHS == pytest.approx(1.6)  # scaled with the run: 30 epochs -> 1.6


def test_t1_scaled_to_the_run():
    def t1(cls, classes, epochs):
        return setting_defaults(cls, "cifar10" if classes <= 10 else "cifar100", "sym", 0.4, classes, epochs)["T1"]

    assert t1(PES, 10, 200) == 25 and t1(PES, 100, 200) == 30
    assert t1(PES, 10, 30) == 4 and t1(PESSemi, 10, 30) == 2 and t1(PESSemi, 10, 3) == 1
    assert t1(PESSemi, 10, 300) == 20 and t1(PESSemi, 100, 300) == 35


@pytest.mark.parametrize("noise,rate,classes,expected", [
    ("instance", 0.4, 10, 15.0), ("pairflip", 0.45, 100, 50.0), ("asym", 0.4, 100, 50.0), ("sym", 0.5, 10, 150.0),
    ("pairflip", 0.45, 10, 150.0), ("instance", 0.4, 100, 150.0), ("none", None, 10, 5.0), ("none", None, 100, 75.0)])
def test_lambda_u_defaults(noise, rate, classes, expected):
    dataset = "cifar10" if classes <= 10 else "cifar100"
    assert setting_defaults(PESSemi, dataset, noise, rate, classes)["lambda_u"] == expected


def test_semi_loss_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    w = torch.tensor([2.0, 0.5])
    lx, lu = semi_loss(logits, target, 2, w)
    a, b = math.log(1 + math.e), math.log(1 + math.exp(-1))  # -log softmax of the larger / smaller logit
    # class 0: mean(b, 0.5 a) = (b + 0.5 a) / 2; class 1: mean(0, 0.5 b) = 0.25 b
    assert float(lx) == pytest.approx(2.0 * (b + 0.5 * a) / 2 + 0.5 * 0.25 * b, rel=1e-6)
    p = 1 / (1 + math.exp(-2))
    assert float(lu) == pytest.approx(((p - 0) ** 2 + (1 - p - 1) ** 2) / 2, rel=1e-6)
    assert float(semi_loss(logits[:2], target[:2], 2, w)[1]) == 0.0


def test_cycled_labeled_indices_cover_the_steps():
    pool = torch.tensor([3, 5, 9])
    out = cycled(pool, 8, torch.Generator().manual_seed(0))
    assert len(out) == 8 and out[:6].tolist() == [3, 5, 9, 3, 5, 9] and set(out[6:].tolist()) < {3, 5, 9}
    assert len(set(out[6:].tolist())) == 2


# --- what is re-created ----------------------------------------------------------------------------
def names_of(net: nn.Module, modules: list[nn.Module]) -> list[str]:
    names = {id(m): k for k, m in net.named_modules()}
    return [names[id(m)] for m in modules]


def test_last_stage_of_each_backbone():
    small = create_backbone("smallcnn", 10, 1, 28)
    assert names_of(small, last_stage(small, classifier_of(small, "pes"), "pes")) == ["head.1"]  # the hidden FC
    pre = create_backbone("preact_resnet18", 10, 3, 32)
    # the 512-channel pair (= layer4) and the final BN between it and the classifier
    assert names_of(pre, last_stage(pre, classifier_of(pre, "pes"), "pes")) == ["layers.6", "layers.7", "bn"]
    res = nn.Module()  # a ResNet's layout (timm, torchvision, the official networks/ResNet.py): layer4
    res.layer3, res.layer4 = nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))
    res.global_pool, res.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)
    assert names_of(res, last_stage(res, res.fc, "pes")) == ["layer4"]
    stack = nn.Sequential(nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)]),
                          nn.LayerNorm(4), nn.Linear(4, 2))  # constant width: the last block
    assert names_of(stack, last_stage(stack, stack[2], "pes")) == ["0.2", "1"]
    lone = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with pytest.raises(UsageError, match="no layer before"):
        last_stage(lone, lone[1], "pes")


def test_a_module_that_cannot_reset_itself_is_refused():
    class LayerScale(nn.Module):  # own parameter, no reset_parameters (timm's ConvNeXt block)
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(4))

    with pytest.raises(UsageError, match="cannot re-create LayerScale"):
        check_resettable([nn.Sequential(nn.Linear(4, 4), LayerScale())], "pes")
    check_resettable([create_backbone("preact_resnet18", 10, 3, 32)], "pes")


def test_reinitialisation_is_seeded_and_leaves_the_global_rng_alone():
    net = create_backbone("smallcnn", 10, 1, 28)
    before = torch.random.get_rng_state()
    reinitialise([net.head[1]], 7, torch.device("cpu"))
    first = net.head[1].weight.clone()
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.no_grad():
        net.head[1].weight.zero_()
    reinitialise([net.head[1]], 7, torch.device("cpu"))
    assert torch.equal(net.head[1].weight, first)
    reinitialise([net.head[1]], 8, torch.device("cpu"))
    assert not torch.equal(net.head[1].weight, first)


# --- options and defaults ------------------------------------------------------------------------
@pytest.mark.parametrize("method,key,value", [
    (PES, "T1", "0"), (PES, "PES_lr", "0"), (PES, "T2", "-1"), (PES, "renew", "both"),
    (PESSemi, "T1", "0"), (PESSemi, "lambda_u", "-1"), (PESSemi, "alpha_late", "0"), (PESSemi, "T2", "-1")])
def test_invalid_options_raise_one_line_errors(method, key, value):
    with pytest.raises(UsageError, match=key):
        build_options(method, {key: value})


def test_a_refinement_needs_a_pass():
    with pytest.raises(UsageError, match="T2 0 and T3 0"):
        build_options(PES, {"T2": "0", "T3": "0"})


def test_search_spaces_hold_the_published_values():
    pes = PES.search_space(Setting(0.4, 200))
    assert pes["T1"].grid == (25, 30) and pes["PES_lr"].contains(1e-4)
    semi = PESSemi.search_space(Setting(0.4, 300))
    assert semi["T1"].grid == (20, 35) and set(semi["lambda_u"].grid) == {5.0, 15.0, 50.0, 75.0, 150.0}


def test_t1_must_leave_an_epoch(tmp_path):
    with pytest.raises(UsageError, match="T1"):
        make_trainer(tmp_path, method="pes", noise="sym", noise_rate=0.4, subset=100, epochs=2,
                     method_options={"T1": "2"})


# --- short runs ------------------------------------------------------------------------------------
def params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def spy_indices(method) -> list[tuple[str, torch.Tensor]]:
    """Record (phase, dataset indices) of every step the trainer hands the method."""
    seen, step = [], method.train_step

    def spy(batch, epoch, phase):
        seen.append((phase.name, batch["index"].clone()))
        return step(batch, epoch, phase)

    method.train_step = spy
    return seen


def test_pes_refinement_renew_and_confident_epochs(tmp_path):
    tr = make_trainer(tmp_path, method="pes", noise="sym", noise_rate=0.4, subset=300, epochs=4, batch_size=64,
                      test_subset=500, method_options={"T1": "1", "T2": "2", "T3": "1", "renew": "official"})
    m = tr.method
    net = m.models["net"]
    renewed = {"head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"}  # smallcnn's hidden FC + classifier
    assert [p.name for p in m.phases(1)] == ["refine_block", "refine_block", "refine_head"]
    tr.run_epoch(0)
    after_ce = params(net)
    m1 = tr.run_epoch(1)  # the refinement: only the re-created parameters move
    refined = params(net)
    assert changed(after_ce, refined) == renewed
    assert "clean_auc" not in m1
    assert not any(p in m.optimizers["net"].state for p in (net.head[1].weight, net.head[3].weight))  # stale state
    seen = spy_indices(m)
    m2 = tr.run_epoch(2)  # renew=official: the re-created layers stay at their refined values
    after_2 = params(net)
    assert changed(refined, after_2) == {"features.0.weight", "features.0.bias", "features.3.weight",
                                         "features.3.bias"}
    chosen = torch.nonzero(m.state["confident"]).squeeze(1)
    visited = torch.cat([idx for _, idx in seen])
    assert {name for name, _ in seen} == {"confident"}
    assert sorted(visited.tolist()) == chosen.tolist()  # each confident sample once, nothing else
    assert 0 < len(chosen) < 300 and m2["confident_frac"] == pytest.approx(len(chosen) / 300)
    given = m.ctx.given_labels[chosen]
    torch.testing.assert_close(m._weights, class_weights(given, 10))
    for key in ("clean_auc", "clean_precision", "clean_recall"):
        assert math.isfinite(m2[key]), key
    m.opts.renew = "paper"  # the same run continued as the paper trains: now they move
    tr.run_epoch(3)
    assert renewed <= changed(after_2, params(net))


def test_pes_semi_refines_the_classifier_then_mixes_the_confident_and_the_rest(tmp_path):
    tr = make_trainer(tmp_path, method="pes_semi", noise="sym", noise_rate=0.4, subset=300, epochs=3, batch_size=64,
                      test_subset=500, method_options={"T1": "1", "T2": "1", "renew": "official"})
    m = tr.method
    net = m.models["net"]
    assert [p.name for p in m.phases(1)] == ["refine_head", "ssl"] and m.views(1) == ("train", "weak", "weak2")
    tr.run_epoch(0)
    after_ce = params(net)
    snapshots, select = [], m._select

    def snapshot_select(phase):  # when the SSL phase begins, after the refinement
        snapshots.append(params(net))
        return select(phase)

    m._select = snapshot_select
    seen = spy_indices(m)
    m1 = tr.run_epoch(1)
    assert changed(after_ce, snapshots[0]) == {"head.3.weight", "head.3.bias"}  # the classifier alone
    ssl = [idx for name, idx in seen if name == "ssl"]
    chosen = set(torch.nonzero(m.state["confident"]).squeeze(1).tolist())
    b_l = int(m1["labeled_batch"])
    assert len(ssl) == 300 // 64 and all(len(idx) == b_l for idx in ssl)  # int(N / B) steps of B_l
    assert set(torch.cat(ssl).tolist()) <= chosen
    assert (b_l, int(m1["unlabeled_batch"])) == semi_batch_split(len(chosen), 300 - len(chosen), 64)
    for key in ("loss_x", "loss_u", "lambda_u_ramped", "clean_auc", "clean_precision"):
        assert math.isfinite(m1[key]), key
    tr.run_epoch(2)  # renew=official: the classifier keeps its refined values; the rest trains
    moved = changed(snapshots[0], params(net))
    assert "head.3.weight" not in moved and "features.0.weight" in moved
    assert m.lambda_u == 150.0  # sym on 10 classes: PES_semi.py:37


def fake(cls, n: int = 2, epochs: int = 30, **opts):
    """A method on a hand-made context: a 2-4-3 MLP, two classes of given labels 0."""
    ctx = fake_context(
        num_classes=3, num_train=n, epochs=epochs, batch_size=4, noise_rate=0.4, dataset="fashion-mnist",
        make_backbone=lambda: nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3)))
    m = cls(build_options(cls, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def test_defaults_resolve_per_run():
    assert fake(PES).resolved_options()["T1"] == 4  # 25 of 200 -> 30 epochs
    semi = fake(PESSemi).resolved_options()
    assert semi["T1"] == 2 and semi["lambda_u"] == 150.0  # 20 of 300; PES_semi.py:37
    assert fake(PES, T1=7).t1 == 7  # given: not scaled


def test_confident_pass_averages_two_draws():
    """The mean softmax of two predictions (predict_train, eval mode) decides; the score is the
    mean probability of the given label."""
    m = fake(PES)
    draws = iter([torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.5, 0.0], [0.0, 3.0, 0.0]])])
    m.ctx.predict_train = lambda net, pool, view: next(draws)
    _, _, conf = m._confident_pass()
    p = (F.softmax(torch.tensor([3.0, 0.0, 0.0]), 0) + F.softmax(torch.tensor([0.0, 0.5, 0.0]), 0)) / 2
    assert conf.tolist() == [True, False] and m.state["confident"].tolist() == [True, False]
    assert float(m.state["score"][0]) == pytest.approx(float(p[0]))


@pytest.mark.parametrize("cls,expected", [
    (PES, [0.1, 0.1, 0.01, 0.001]),  # x 0.1 at 100 and 150 of 200 epochs: 2 and 3 of 4 (PES_cs.py:166)
    (PESSemi, [0.1, 0.08550, 0.0505, 0.01550]),  # cosine to lr / 100 (PES_semi.py:259-260)
])
def test_official_network_schedule_leaves_the_refinement_alone(cls, expected):
    m = fake(cls, epochs=4, T1=1)
    assert [m.official_lr(0.1, e) for e in range(4)] == pytest.approx(expected, abs=1e-5)
    assert m.schedulers == {}  # set per epoch from the epoch alone
    m.on_epoch_start(2)
    assert m.optimizers["net"].param_groups[0]["lr"] == pytest.approx(expected[2], abs=1e-5)
    assert m.optimizers["refine_head"].param_groups[0]["lr"] == 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name,sets", [("pes", ("--set", "T2=1", "--set", "T3=1")), ("pes_semi", ("--set", "T2=1",))])
def test_resume_after_the_refinement_keeps_the_frozen_layers_frozen(tmp_path, name, sets):
    """Stopped after the refinement epoch under renew=official and resumed, a run ends as an
    uninterrupted one: the freezing of the re-created layers and the optimiser states survive
    the checkpoint (the registry's resume test stops before the refinement)."""
    args = ("--method", name, "--noise", "sym", "--noise-rate", "0.4", "--subset", "120", "--batch-size", "40",
            "--epochs", "3", "--augment", "none", "--set", "T1=1", "--set", "renew=official", *sets)
    full, resumed = assert_resume_equals_uninterrupted(tmp_path, args, 2, ("test_acc", "train_loss"))
    for key, value in full["state"].items():
        assert torch.equal(value, resumed["state"][key]), key


@pytest.mark.slow
def test_pes_semi_mixes_all_2_bl_plus_bu_rows_with_alpha_4_then_0_75(tmp_path, monkeypatch):
    """Every SSL step mixes the 2 (B_l + B_u) rows of both views of the labeled and unlabeled
    batches; alpha is 4 before half of the epochs and 0.75 from there on (PES_semi.py:72-73)."""
    import methods.pes as pes

    tr = make_trainer(tmp_path, method="pes_semi", noise="sym", noise_rate=0.4, subset=300, epochs=4, batch_size=64,
                      test_subset=500, method_options={"T1": "1", "T2": "1"})
    m, seen, real = tr.method, [], pes.mixup

    def spy(inputs, targets, alpha, gens):
        seen.append((epoch, inputs.shape[0], alpha, m._stream.size))
        return real(inputs, targets, alpha, gens)

    monkeypatch.setattr(pes, "mixup", spy)
    for epoch in range(4):
        tr.run_epoch(epoch)
    assert {e for e, *_ in seen} == {1, 2, 3}  # SSL from T1 on, after the refinement passes
    for e, rows, alpha, b_u in seen:
        assert alpha == (4.0 if e < 2 else 0.75)
        assert 0 < b_u < 64 and rows == 2 * 64  # 2 (B_l + B_u) with B_l = B - B_u: both views of both sets
