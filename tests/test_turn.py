"""TURN: the class-balanced selection by hand (the paper's Algorithm 1), the frozen
linear probing, the classifier lookup, options, and a short run through LP, selection and FFT."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_trainer

from bench.backbones import create_backbone
from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.shared import classifier_of
from methods.turn import TURN, class_balanced_selection


def separated(clean: int, noisy: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.normal(0.2, 0.05, clean), rng.normal(3.0, 0.2, noisy)])


def test_selection_keeps_the_smallest_clean_count_of_every_class():
    # per-class clean counts {A: 30, B: 12, C: 25}: 12 lowest-loss samples of each class, 36 in all
    rng = np.random.default_rng(0)
    losses = np.concatenate([separated(30, 10, rng), separated(12, 20, rng), separated(25, 5, rng)])
    labels = np.repeat([0, 1, 2], [40, 32, 30])
    kept, p_clean, counts = class_balanced_selection(losses, labels, 3, 0.5)
    assert counts == {0: 30, 1: 12, 2: 25} and kept.sum() == 36
    for c in range(3):
        members = np.flatnonzero(labels == c)
        assert kept[members].sum() == 12
        assert losses[members][kept[members]].max() <= losses[members][~kept[members]].min()  # lowest losses
    assert (p_clean[:30] > 0.5).all() and (p_clean[30:40] < 0.5).all()


def test_with_one_class_it_is_the_gmm_rule():
    rng = np.random.default_rng(1)
    losses = separated(50, 20, rng)
    kept, p_clean, counts = class_balanced_selection(losses, np.zeros(70, dtype=int), 1, 0.5)
    np.testing.assert_array_equal(kept, p_clean > 0.5)
    assert counts == {0: 50}


def test_classifier_is_the_last_linear_layer_or_timms():
    small = create_backbone("smallcnn", 10, 1, 28, False)
    assert classifier_of(small, "turn") is [m for m in small.modules() if isinstance(m, torch.nn.Linear)][-1]
    with pytest.raises(UsageError, match="no linear classifier"):
        classifier_of(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), "turn")


@pytest.mark.parametrize("key,value", [("q", "0"), ("p_threshold", "1"), ("lp_epochs", "0")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(TURN, {key: value})


@pytest.mark.slow
def test_linear_probing_moves_only_the_classifier_then_fft_moves_everything(tmp_path):
    tr = make_trainer(tmp_path, method="turn", noise="sym", noise_rate=0.4, subset=300, epochs=3, batch_size=100,
                      method_options={"lp_epochs": "1"})
    net = tr.method.models["net"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m0 = tr.run_epoch(0)
    after = net.state_dict()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("head.3") for k in moved), moved  # smallcnn's last Linear; no BN stats
    assert m0["turn_pretrained"] == 0.0 and "clean_auc" not in m0
    m1 = tr.run_epoch(1)
    assert 0 < m1["turn_kept_frac"] <= 1 and "clean_auc" in m1
    kept = tr.method.state["kept"]
    assert tr.method.phases(1)[0].indices.tolist() == torch.nonzero(kept).squeeze(1).tolist()
    moved = {k for k in after if not torch.equal(before[k], net.state_dict()[k])}
    assert any(not k.startswith("head.3") for k in moved)


def test_lp_epochs_must_leave_fine_tuning(tmp_path):
    with pytest.raises(UsageError, match="lp_epochs"):
        make_trainer(tmp_path, method="turn", noise="sym", noise_rate=0.4, subset=100, epochs=2,
                     method_options={"lp_epochs": "2"})
