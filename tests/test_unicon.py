"""UNICON: hand-checked values (JSD, threshold, uniform selection and its departure from the
official index-0 padding, the MixMatch terms, sharpening, ramp-up), the SimCLR loss against a
literal transcription of ``SupConLoss``, the projection head, the second selection made after
network 1 trains, a short run on a Fashion-MNIST subset with its detection metrics, and the
per-data-set defaults. Resume is the registry's test (tests/test_registry_entries.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer, setting_defaults

from bench.backbones import create_backbone
from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.mixmatch import linear_rampup, mixmatch_loss, sharpen
from methods.unicon import (
    UNICON,
    ProjectedNet,
    js_divergence,
    jsd_threshold,
    refinement_weight,
    simclr_loss,
    uniform_selection,
)


def test_jsd_by_hand():
    """Jensen_Shannon (Train_cifar.py:278-287): logits [[2,1,0],[0,0,3]], labels [0,0] -> JSD [0.132958, 0.599936]."""
    p = F.softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]), dim=1)
    torch.testing.assert_close(p[0], torch.tensor([0.665241, 0.244728, 0.090031]), atol=1e-6, rtol=0)
    jsd = js_divergence(p, torch.eye(3)[[0, 0]])
    torch.testing.assert_close(jsd, torch.tensor([0.132958, 0.599936]), atol=1e-6, rtol=0)
    assert float(jsd.max()) < math.log(2)  # natural log: never above ln 2, so never above d_u = 0.7


def test_threshold_ratio_and_uniform_selection_by_hand():
    jsd = torch.tensor([0.05, 0.40, 0.60, 0.10, 0.20, 0.65])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    thr = jsd_threshold(jsd, 0.7, 5.0)
    assert thr == pytest.approx(1 / 3, abs=1e-6)
    ratio = float((jsd < thr).float().mean())
    assert ratio == 0.5
    chosen = uniform_selection(jsd, labels, 2, ratio)  # quota int(0.5 * 6 / 2) = 1 per class
    assert sorted(chosen.tolist()) == [0, 3]
    torch.testing.assert_close(refinement_weight(jsd[chosen]), torch.ones(2))
    assert int(64 / (2 * ratio)) == 64  # the unlabeled batch


def test_threshold_moves_down_only_above_d_u():
    jsd = torch.tensor([0.5, 0.9, 1.0])  # base-2 values: mean 0.8 > 0.7
    assert jsd_threshold(jsd, 0.7, 5.0) == pytest.approx(0.8 - (0.8 - 0.5) / 5)
    assert jsd_threshold(jsd, 0.9, 5.0) == pytest.approx(0.8)


def test_uniform_selection_takes_the_lowest_per_class_and_all_of_a_short_class():
    jsd = torch.tensor([0.3, 0.1, 0.2, 0.9, 0.05, 0.6, 0.4])
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    chosen = uniform_selection(jsd, labels, 3, 6 / 7)  # quota int(6/7 * 7 / 3) = 2
    assert sorted(chosen.tolist()) == [1, 2, 4, 5, 6]  # class 1 has one sample: it gives it, no index 0 padding


def _official_labeled_list(jsd: list[float], labels: list[int], num_class: int, ratio: float) -> list[int]:
    """dataloader_cifar.py:139-156 (github.com/nazmul-karim170/UNICON), transcribed."""
    num_sample = len(jsd)
    pred_idx = np.zeros(int(ratio * num_sample))
    class_len = int(ratio * num_sample / num_class)
    size_pred = 0
    for i in range(num_class):
        class_indices = [k for k, x in enumerate(labels) if x == i]
        prob1 = np.argsort(np.array(jsd)[class_indices])
        try:
            chosen = np.array(class_indices)[prob1[0:class_len].astype(int)].squeeze()
            pred_idx[size_pred:size_pred + class_len] = chosen
            size_pred += class_len
        except ValueError:
            pred_idx[size_pred:size_pred + len(class_indices)] = np.array(class_indices)
            size_pred += len(class_indices)
    return [int(x) for x in pred_idx]


def test_uniform_selection_has_no_index_0_padding_when_int_sr_n_is_not_a_multiple_of_c():
    # no class is short (4 samples each, quota int(5/8 * 8 / 2) = 2), but int(5/8 * 8) = 5 is odd
    jsd = [0.9, 0.1, 0.2, 0.3, 0.15, 0.05, 0.5, 0.6]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    official = _official_labeled_list(jsd, labels, 2, 5 / 8)
    assert official == [1, 2, 5, 4, 0]  # the fifth slot stays index 0, a sample neither class chose
    chosen = uniform_selection(torch.tensor(jsd), torch.tensor(labels), 2, 5 / 8)
    assert sorted(chosen.tolist()) == [1, 2, 4, 5]  # here: the selected samples only


def test_refinement_weight_by_hand():
    torch.testing.assert_close(refinement_weight(torch.tensor([0.1, 0.5, 0.6])), torch.tensor([1.0, 0.5, 0.4]))


def test_mixmatch_terms_sharpening_and_rampup_by_hand():
    """Lx 0.495495, Lu 0.222222, penalty 0.041779 over the three rows, sharpening, lambda_u = 15."""
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.8, 0.1, 0.1], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    _, terms = mixmatch_loss(logits, target, 2, 1.0)
    assert terms["loss_x"].item() == pytest.approx(0.495495, abs=1e-6)
    assert terms["loss_u"].item() == pytest.approx(0.222222, abs=1e-6)
    assert terms["penalty"].item() == pytest.approx(0.041779, abs=1e-6)
    torch.testing.assert_close(sharpen(torch.tensor([[0.6, 0.3, 0.1]]), 0.5),
                               torch.tensor([[0.782609, 0.195652, 0.021739]]), atol=1e-6, rtol=0)
    assert linear_rampup(18.0, 10, 30.0) == pytest.approx(15.0)


def supcon_transcribed(features: torch.Tensor, temperature: float, base_temperature: float) -> torch.Tensor:
    """Contrastive_loss.py's SupConLoss with labels=None, contrast_mode='all', step by step."""
    bsz, views = features.shape[0], features.shape[1]
    mask = torch.eye(bsz)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    dot = contrast @ contrast.T / temperature
    logits = dot - dot.max(dim=1, keepdim=True).values
    mask = mask.repeat(views, views)
    logits_mask = torch.ones_like(mask)
    logits_mask[torch.arange(bsz * views), torch.arange(bsz * views)] = 0
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).view(views, bsz).mean()


@pytest.mark.parametrize("t,base", [(0.05, 0.05), (0.5, 0.07)])
def test_simclr_loss_equals_supcon_without_labels(t, base):
    g = torch.Generator().manual_seed(0)
    f1 = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    f2 = F.normalize(f1 + 0.3 * torch.randn(7, 5, generator=g), dim=1)
    ours = simclr_loss(f1, f2, t, base)
    torch.testing.assert_close(ours, supcon_transcribed(torch.stack([f1, f2], dim=1), t, base), atol=1e-5, rtol=1e-5)
    # positives that are the same point score lower than unrelated ones
    assert simclr_loss(f1, f1, t, base) < simclr_loss(f1, F.normalize(torch.randn(7, 5, generator=g), dim=1), t, base)


def test_projection_head_on_the_penultimate_features():
    net = ProjectedNet(create_backbone("smallcnn", 10, 1, 28, False))
    x = torch.randn(4, 1, 28, 28)
    proj, logits = net.project(x)
    assert proj.shape == (4, 128) and logits.shape == (4, 10)
    net.eval()
    torch.testing.assert_close(net(x), net.backbone(x))
    assert any(k.startswith("proj.") for k in net.state_dict())  # the head is checkpointed with the net


@pytest.mark.parametrize("dataset,classes,expected", [
    ("fashion-mnist", 10, {"warmup_epochs": 10, "lambda_u": 30.0, "alpha": 4.0}),
    ("cifar100", 100, {"warmup_epochs": 30, "lambda_u": 30.0, "alpha": 4.0}),
    ("clothing1m", 14, {"warmup_epochs": 0, "lambda_u": 0.0, "alpha": 0.5}),
    ("webvision", 50, {"warmup_epochs": 2, "lambda_u": 0.0, "alpha": 0.5}),
    ("tiny-imagenet", 200, {"warmup_epochs": 15, "lambda_u": 50.0, "alpha": 0.5}),
])
def test_per_data_set_defaults(dataset, classes, expected):
    assert setting_defaults(UNICON, dataset, "sym", 0.4, classes) == expected


@pytest.mark.parametrize("key,value", [("jsd_base", "10"), ("tau", "0"), ("lambda_c", "-1"), ("alpha", "0")])
def test_invalid_options_raise(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(UNICON, {key: value})


@pytest.mark.slow
def test_short_run_selects_network_2_after_network_1_trained(tmp_path):
    tr = make_trainer(tmp_path, method="unicon", noise="sym", noise_rate=0.4, subset=300, epochs=2, batch_size=64,
                      method_options={"warmup_epochs": "1"})
    m0 = tr.run_epoch(0)
    assert "clean_auc" not in m0
    m = tr.method
    before = {k: v.detach().clone() for k, v in m.models["net1"].state_dict().items()}
    m1 = tr.run_epoch(1)
    for key in ("clean_auc", "clean_precision", "clean_recall", "clean_auc_net2", "loss_x", "loss_u", "loss_c",
                "penalty", "select_s_net1", "select_s_net2", "jsd_threshold_net1", "unlabeled_batch_net1"):
        assert math.isfinite(m1[key]), key
    assert any(not torch.equal(before[k], v) for k, v in m.models["net1"].state_dict().items())
    # network 2's JSD comes from the networks after network 1's pass: it differs from network 1's
    assert not torch.equal(m.state["jsd1"], m.state["jsd2"])
    assert m1["jsd_threshold_net1"] < math.log(2)
    # uniform: every class contributes the same number of labeled samples (when it has them)
    given = tr.train_loader.labels
    counts = torch.bincount(given[m.state["labeled1"]], minlength=10)
    quota = int(m1["selection_ratio_net1"] * 300 / 10)
    assert all(c == quota or c == int((given == i).sum()) for i, c in enumerate(counts.tolist()))
    # after one warm-up epoch the selection is already cleaner than the data (40% noise)
    assert m1["clean_precision"] > 0.7


def test_simclr_loss_stays_fp32_under_autocast():
    g = torch.Generator().manual_seed(1)
    f1, f2 = (F.normalize(torch.randn(16, 8, generator=g), dim=1) for _ in range(2))
    exact = simclr_loss(f1.double(), f2.double(), 0.05, 0.05).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = simclr_loss(f1, f2, 0.05, 0.05)
    assert under.dtype == torch.float32 and under.item() == pytest.approx(exact, abs=1e-5)
