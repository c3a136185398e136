"""PLC: the likelihood-ratio correction by hand (methods-paper-set.md, section 3), the threshold
rule, the official Clothing1M rule, state by dataset index, defaults, a short Fashion-MNIST run
and resume through the command line."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TableNet, fake_generators, make_trainer

from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.base import Phase
from methods.plc import PLC, likelihood_ratio, lrt_correction, prob_correction

F_X = torch.tensor([[.7, .2, .1], [.1, .8, .1], [.25, .35, .4], [.5, .45, .05]])


def fake_method(num_train: int = 4, net=None, dataset: str = "fashion-mnist", given=None, **opts) -> PLC:
    net = net or torch.nn.Linear(1, 3)
    given = torch.zeros(num_train, dtype=torch.long) if given is None else given
    ctx = SimpleNamespace(
        num_classes=3, num_train=num_train, device=torch.device("cpu"), epochs=3, noise_rate=0.4,
        dataset=dataset, noise="sym", pretrained=False, make_backbone=lambda: net,
        make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1), make_scheduler=lambda opt, n: None,
        generators=fake_generators, given_labels=given, artifact_dir=Path("."))
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


def test_short_run_corrects_labels(tmp_path):
    tr = make_trainer(tmp_path, method="plc", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=100,
                      method_options={"warmup_epochs": "0"})
    m0, m1 = tr.run_epoch(0), tr.run_epoch(1)
    assert m0["plc_delta"] >= 0.3 and 0 <= m1["plc_relabelled"] <= 1
    assert tr.method.state["record"][:2].sum(dim=2).allclose(torch.ones(2, 300))  # every sample, both slots

