"""PLC: the likelihood-ratio correction by hand (utils.py lrt_correction on a worked example), the
threshold rule, the official Clothing1M rule, state by dataset index, defaults, a short
Fashion-MNIST run; sampled epochs (Clothing1M): samples without a record keep their label, each
sample's record is its own last roll_window visits, full epochs keep the official epoch % window
record, no host syncs in the step, and resume through the command line."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    FixedLogits,
    SyncRecorder,
    TableNet,
    assert_resume_equals_uninterrupted,
    fake_context,
    make_trainer,
    record_syncs,
)

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.base import Phase
from methods.plc import PLC, likelihood_ratio, lrt_correction, prob_correction

F_X = torch.tensor([[.7, .2, .1], [.1, .8, .1], [.25, .35, .4], [.5, .45, .05]])


def fake_method(num_train: int = 4, net=None, dataset: str = "fashion-mnist", given=None, num_classes: int = 3,
                pool=None, **opts) -> PLC:
    """A PLC on a fake context; ``pool``: the indices of a sampled epoch (None: full epochs)."""
    net = net or torch.nn.Linear(1, 3)
    given = torch.zeros(num_train, dtype=torch.long) if given is None else given
    ctx = fake_context(
        num_classes=num_classes, num_train=num_train, epoch_pool=lambda: pool, epochs=3, noise_rate=0.4,
        dataset=dataset, make_backbone=lambda: net, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        given_labels=given)
    m = PLC(build_options(PLC, {k: str(v) for k, v in opts.items()}), ctx)
    m.setup()
    return m


def test_likelihood_ratio_correction_by_hand():
    # the sheet: LR = [.2857, 1, .625, .9]; y [1,1,0,1] -> [0,1,0,1]; 1 correction >= 0.001 n: delta stays
    y = torch.tensor([1, 1, 0, 1])
    torch.testing.assert_close(likelihood_ratio(F_X, y), torch.tensor([.2 / .7, 1.0, .625, .9]))
    new, delta, count = lrt_correction(y, F_X, 0.3, 0.1)
    assert new.tolist() == [0, 1, 0, 1] and count == 1 and delta == 0.3


def test_threshold_rises_when_nothing_is_corrected_and_stops_at_0_9():
    y = torch.tensor([0, 1, 2, 0])  # every label is the argmax or close: LR >= 0.625
    _, delta, count = lrt_correction(y, F_X, 0.3, 0.1)
    assert count == 0 and delta == pytest.approx(0.4)
    assert lrt_correction(y, F_X, 0.85, 0.1)[1] == 0.9
    # a sample with no record yet (zero row) keeps its label and is not counted
    f = torch.cat([F_X, torch.zeros(1, 3)])
    new, _, count = lrt_correction(torch.tensor([1, 1, 0, 1, 2]), f, 0.3, 0.1)
    assert new[-1] == 2 and count == 1


def test_official_clothing_rule_softmaxes_again_and_raises_delta_uncapped():
    p = torch.softmax(F_X, dim=1)  # [[.4640, .2814, .2546], ...]: top >= 0.1 everywhere
    y = torch.tensor([1, 1, 0, 1])
    ratio = p.gather(1, y[:, None]).squeeze(1) / p.max(1).values
    assert ratio[0] == pytest.approx(math.exp(.2 - .7), rel=1e-6)  # 0.6065: above 0.3, no correction
    new, delta, count = prob_correction(y, F_X, 0.3, 0.1)
    assert new.tolist() == [1, 1, 0, 1] and count == 0 and delta == pytest.approx(0.4)
    # ratios exp(f_y - f_max): [.607, 1, .861, .951]
    new, delta, count = prob_correction(y, F_X, 0.95, 0.1)
    assert new.tolist() == [0, 1, 2, 1] and count == 2 and delta == 0.95
    new, delta, count = prob_correction(y, F_X, 0.96, 0.1)
    assert new.tolist() == [0, 1, 2, 0] and count == 3 and delta == 0.96
    assert prob_correction(torch.tensor([0, 1, 2, 0]), F_X, 1.0, 0.1)[1] == pytest.approx(1.1)  # no cap
    # a top value under thd: the label becomes the top class, uncounted
    new, _, count = prob_correction(torch.tensor([1]), torch.tensor([[0.5, 0.4, 0.1]]), 0.3, 0.1, thd=0.9)
    assert new.tolist() == [0] and count == 0


def test_record_is_written_by_dataset_index_in_the_epoch_slot_and_corrections_compound():
    table = [[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    m = fake_method(num_train=6, net=TableNet(table), given=torch.tensor([1, 1, 1, 1, 1, 1]), warmup_epochs=0,
                    roll_window=2)
    batch = {"train": torch.tensor([[0.0], [1.0]], dtype=torch.float64), "label": torch.tensor([1, 1]),
             "index": torch.tensor([5, 2])}
    out = m.train_step(batch, 3, Phase())
    p = torch.softmax(torch.tensor(table), dim=1)
    torch.testing.assert_close(m.state["record"][1, [5, 2]], p)  # slot 3 % 2
    assert m.state["record"][0].abs().sum() == 0 and m.state["record"][1, [0, 1, 3, 4]].abs().sum() == 0
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(torch.tensor(table), torch.tensor([1, 1])))
    metrics = m.on_epoch_end(3)
    assert m.state["labels"].tolist() == [1, 1, 2, 1, 1, 0] and metrics["plc_corrected"] == 2
    assert metrics["plc_relabelled"] == pytest.approx(2 / 6)
    # the next step trains on the corrected labels
    out = m.train_step(batch, 4, Phase())
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(torch.tensor(table), torch.tensor([0, 2])))
    det = m.detections(3)[0]
    assert det.selected.tolist() == [True, True, False, True, True, False]


def test_no_correction_during_warm_up_and_defaults_per_data_set():
    m = fake_method(warmup_epochs=2)
    m.state["record"][0] = F_X
    assert m.on_epoch_end(1) == {} and torch.equal(m.state["labels"], torch.zeros(4, dtype=torch.long))
    assert m.on_epoch_end(2)["plc_corrected"] == 1  # given 0: LR [1, .125, .625, 1], only sample 1 < 0.3
    assert m.state["labels"].tolist() == [0, 1, 0, 0]
    assert fake_method().resolved_options()["delta"] == 0.3
    c = fake_method(dataset="clothing1m")
    assert (c.resolved_options()["delta"], c.warmup) == (0.7, 1) and not c.official
    assert fake_method(dataset="clothing1m", correction="official").official
    assert not fake_method(correction="official").official  # the official rule is Clothing1M's only


@pytest.mark.parametrize("key,value", [("delta", "0"), ("delta", "1.5"), ("inc", "-1"), ("roll_window", "0"),
                                       ("correction", "lrt")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key if key != "correction" else "paper"):
        build_options(PLC, {key: value})


@pytest.mark.slow
def test_short_run_corrects_labels(tmp_path):
    tr = make_trainer(tmp_path, method="plc", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=100,
                      method_options={"warmup_epochs": "0"})
    m0, m1 = tr.run_epoch(0), tr.run_epoch(1)
    assert m0["plc_delta"] >= 0.3 and 0 <= m1["plc_relabelled"] <= 1
    assert tr.method.state["record"][:2].sum(dim=2).allclose(torch.ones(2, 300))  # every sample, both slots



# --- sampled epochs (Clothing1M, WebVision): a record of each sample's own visits ---------------

def visit(m: PLC, ids: list[int], rows: list[int], epoch: int) -> None:
    """One training step on dataset indices ``ids``, the net's logits its table's ``rows``."""
    m.train_step({"train": torch.tensor(rows, dtype=torch.float64)[:, None], "index": torch.tensor(ids),
                  "label": torch.zeros(len(ids), dtype=torch.long)}, epoch, Phase())


def test_a_sample_without_a_record_keeps_its_label_under_both_rules():
    # the official rule on 14 classes: a zero row's softmax is uniform, 1/14 < thd 0.1, so before
    # this fix the top-class branch relabelled it to the argmax of a tie, class 0
    f = torch.zeros(3, 14)
    f[0] = 0.1 / 13
    f[0, 4] = 0.9  # row 0: a confident prediction of class 4 (second softmax: top 0.158 >= 0.1)
    y = torch.tensor([7, 7, 3])
    new, delta, count = prob_correction(y, f, 0.7, 0.1)
    assert new.tolist() == [4, 7, 3] and count == 1 and delta == 0.7
    # 3 classes: a zero row's top 1/3 >= thd and its ratio 1, under a delta grown past 1 (uncapped);
    # row 0's ratio 1 < 1.2 counts as a correction to its own label, as the official count does
    new, _, count = prob_correction(torch.tensor([2, 1]), torch.tensor([[0.1, 0.1, 0.8], [0.0, 0.0, 0.0]]), 1.2, 0.1)
    assert new.tolist() == [2, 1] and count == 1
    new, _, count = lrt_correction(y, f, 0.9, 0.1)
    assert new.tolist() == [4, 7, 3] and count == 1

    # through the method, an epoch sampled from 6 samples: only 0 and 1 are visited
    table = torch.full((2, 14), -2.0)
    table[0, 4] = table[1, 9] = 3.0
    given = torch.tensor([5, 5, 7, 7, 3, 3])
    for rule in ("official", "paper"):
        m = fake_method(num_train=6, num_classes=14, net=FixedLogits(table), dataset="clothing1m", given=given,
                        pool=torch.tensor([0, 1]), correction=rule, warmup_epochs=0)
        m.on_epoch_start(0)
        visit(m, [0, 1], [0, 1], 0)
        metrics = m.on_epoch_end(0)
        assert m.state["labels"].tolist() == [4, 9, 7, 7, 3, 3], rule
        assert metrics["plc_recorded"] == pytest.approx(2 / 6) and metrics["plc_relabelled"] == pytest.approx(2 / 6)
        assert m.state["visits"].tolist() == [1, 1, 0, 0, 0, 0]
        det = m.detections(0)[0]
        assert det.score[2:].tolist() == [0.0] * 4 and det.selected.tolist() == [False, False, True, True, True, True]


def test_sampled_visits_average_only_each_samples_last_roll_window():
    # logits by visit: the table's row r for the r-th visit made below
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(40, 3, generator=gen) * 3
    m = fake_method(num_train=5, net=FixedLogits(table), pool=torch.arange(3), roll_window=2, warmup_epochs=99)
    m.on_epoch_start(0)
    assert m.sampled
    # sample 0 three times (its first visit drops out), sample 1 once (a mean of one, not halved),
    # sample 2 twice in one batch, then once more; sample 3 three times in one batch; 4 never
    steps = [(0, [0, 1, 2, 2], [0, 1, 2, 3]), (1, [0, 3, 3, 3], [4, 5, 6, 7]), (4, [2, 0], [8, 9])]
    for epoch, ids, rows in steps:
        visit(m, ids, rows, epoch)
    p = torch.softmax(table, dim=1)
    expected = torch.stack([(p[4] + p[9]) / 2, p[1], (p[3] + p[8]) / 2, (p[6] + p[7]) / 2, torch.zeros(3)])
    torch.testing.assert_close(m.average(), expected)
    assert m.state["visits"].tolist() == [3, 1, 3, 3, 0]
    # each sample's ring: visit v in slot v % 2
    torch.testing.assert_close(m.state["record"][:, 0], torch.stack([p[9], p[4]]))
    torch.testing.assert_close(m.state["record"][:, 3], torch.stack([p[7], p[6]]))
    assert m.state["record"][1, 1].abs().sum() == 0 and m.state["record"][:, 4].abs().sum() == 0

    # random visits with replacement, copies in a batch included, against a list of each sample's visits
    n, w = 7, 3
    m = fake_method(num_train=n, net=FixedLogits(table), pool=torch.arange(2), roll_window=w, warmup_epochs=99)
    m.on_epoch_start(0)
    seen: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for step in range(8):
        ids = torch.randint(n, (6,), generator=gen)
        rows = torch.randint(40, (6,), generator=gen)
        visit(m, ids.tolist(), rows.tolist(), step // 2)
        for i, r in zip(ids.tolist(), rows.tolist(), strict=True):
            seen[i].append(p[r])
    expected = torch.stack([torch.stack(v[-w:]).mean(0) if v else torch.zeros(3) for v in seen])
    torch.testing.assert_close(m.average(), expected)
    assert m.state["visits"].tolist() == [len(v) for v in seen]


def test_full_epochs_keep_the_official_epoch_slots():
    """A straightforward re-computation of cifar/train.py:202,207-212: f_record[epoch % W, idx],
    f_record.mean(0), lrt_correction after each epoch from warm_up on."""
    n, w, epochs, gen = 9, 3, 6, torch.Generator().manual_seed(5)
    table = torch.randn(epochs * n, 3, generator=gen) * 2
    given = torch.randint(3, (n,), generator=gen)
    full = fake_method(num_train=n, net=FixedLogits(table), given=given, roll_window=w, warmup_epochs=1, delta=0.6)
    # every sample visited once an epoch through the sampled-epoch record: the same record
    ring = fake_method(num_train=n, net=FixedLogits(table), given=given, pool=torch.arange(n), roll_window=w,
                       warmup_epochs=1, delta=0.6)
    f_record, labels, delta, changed = torch.zeros(w, n, 3), given.clone(), 0.6, 0
    p = torch.softmax(table, dim=1)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for m in (full, ring):
            m.on_epoch_start(epoch)
            for part in order.split(4):
                visit(m, part.tolist(), (epoch * n + part).tolist(), epoch)
        f_record[epoch % w] = p[epoch * n:(epoch + 1) * n]
        assert not full.sampled and ring.sampled
        torch.testing.assert_close(full.state["record"], f_record, rtol=0, atol=0)
        torch.testing.assert_close(ring.state["record"], f_record, rtol=0, atol=0)
        assert full.state["visits"].tolist() == [epoch + 1] * n  # visit v is epoch v: slot v % W = epoch % W
        if epoch >= 1:
            labels, delta, count = lrt_correction(labels, f_record.mean(0), delta, 0.1)
            changed += count
        for m in (full, ring):
            m.on_epoch_end(epoch)
            assert m.state["labels"].tolist() == labels.tolist() and float(m.state["delta"]) == delta
    assert changed > 0  # the comparison saw corrections


def test_the_step_makes_no_host_sync_in_either_record():
    table = torch.randn(6, 3)
    for pool in (None, torch.arange(3)):
        m = fake_method(num_train=6, net=FixedLogits(table), pool=pool)
        m.on_epoch_start(0)
        with record_syncs(SyncRecorder()) as rec:
            visit(m, [0, 5, 5, 2], [0, 1, 2, 3], 0)
        assert rec.sites == [], rec.sites


@pytest.mark.slow
def test_sampled_clothing1m_run_corrects_only_visited_samples_and_resumes_bit_equal(tmp_path):
    from tests.fixtures_data import make_clothing1m

    made = make_clothing1m(tmp_path / "data")  # 28 training images, 14 classes
    args = ("--method", "plc", "--dataset", "clothing1m", "--data-root", str(tmp_path / "data"),
            "--backbone", "timm:test_resnet", "--no-pretrained", "--image-size", "32", "--epochs", "3",
            "--workers", "0", "--batch-size", "7", "--test-subset", "7", "--set", "samples_per_epoch=14",
            "--set", "correction=official")
    full, resumed = assert_resume_equals_uninterrupted(tmp_path, args, 2, ("train_loss", "plc_corrected",
                                                                           "plc_recorded", "plc_delta"))
    for key, value in full["state"].items():
        assert torch.equal(value, resumed["state"][key]), key
    st, given = full["state"], torch.as_tensor(made.train_labels)
    assert int(st["visits"].sum()) == 3 * 14 and int(st["visits"].max()) <= 3
    unvisited = st["visits"] == 0
    assert 0 < int(unvisited.sum()) < 28 - 14  # three samples of 14 out of 28: some never drawn
    assert torch.equal(st["labels"][unvisited], given[unvisited])
    assert st["record"][:, unvisited].abs().sum() == 0
