"""DISC: the end-of-epoch update by hand (algorithms/DISC.py:328-360 of github.com/JackYFL/DISC),
GCE, the defaults of the official branches (DISC.py:57-113), the strong view's mechanics, the
skipped zero-loss step, a short run and resume."""
from __future__ import annotations

import pytest
import torch
from helpers import make_trainer, setting_defaults

from bench.common.augment import cutout_abs, rand_augment_mc
from bench.common.errors import UsageError
from bench.common.options import build_options
from methods.disc import DISC, end_of_epoch, gce


def test_end_of_epoch_update_by_hand():
    w = torch.tensor([[.7, .2, .1], [.3, .6, .1], [.05, .9, .05], [.4, .35, .25]])
    s = torch.tensor([[.6, .3, .1], [.5, .4, .1], [.02, .96, .02], [.3, .4, .3]])
    y = torch.tensor([0, 0, 0, 1])
    tau_w, tau_s = torch.tensor([.5, .5, .4, .5]), torch.tensor([.5, .45, .4, .5])
    out = end_of_epoch(w, s, y, tau_w, tau_s, 0.5, 0.99)
    assert out["clean"].tolist() == [True, False, False, False]
    assert out["hard"].tolist() == [False, True, False, False]  # via the strong view
    assert out["corrected"].tolist() == [False, False, True, False]  # 0.93 > min(0.4 + 0.5, 0.99)
    assert out["weak_labels"].tolist() == [0, 0, 1, 1] and out["weak"].tolist() == [True, True, True, False]
    torch.testing.assert_close(out["tau_w"], torch.tensor([.502, .501, .405, .499]))
    torch.testing.assert_close(out["tau_s"], torch.tensor([.501, .4505, .4056, .499]))


def test_gce_by_hand():
    assert gce(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0]), 0.7).item() == pytest.approx(0.354614, abs=1e-6)


@pytest.mark.parametrize("dataset,noise,rate,classes,expected", [
    ("cifar10", "sym", 0.2, 10, (20, 0.99, 1.0)), ("cifar10", "sym", 0.8, 10, (20, 0.95, 0.2)),
    ("cifar10", "asym", 0.4, 10, (20, 0.95, 1.0)), ("cifar100", "asym", 0.4, 100, (20, 0.95, 1.0)),
    ("fashion-mnist", "pairflip", 0.4, 10, (20, 0.95, 1.0)), ("cifar100n", "none", None, 100, (20, 0.99, 1.0)),
    ("clothing1m", "none", None, 14, (10, 0.95, 1.0)), ("food101n", "none", None, 101, (10, 0.95, 1.0)),
    ("webvision", "none", None, 50, (15, 0.99, 1.0)), ("tiny-imagenet", "asym", 0.4, 200, (15, 0.95, 1.0)),
    ("tiny-imagenet", "sym", 0.8, 200, (15, 0.99, 1.0)),  # no rate rule outside CIFAR
])
def test_defaults_by_setting(dataset, noise, rate, classes, expected):
    d = setting_defaults(DISC, dataset, noise, rate, classes)
    assert (d["warmup_epochs"], d["momentum"], d["lambda_h"]) == expected


@pytest.mark.parametrize("dataset,noise,rate,classes,expected", [
    # CIFAR-100's percent == 0.8 branch sets start_epoch 20 after the ins rule's 15 (DISC.py:80-81, 87-90)
    ("cifar100", "instance", 0.8, 100, (20, 0.95, 0.2)), ("cifar100", "instance", 0.6, 100, (15, 0.95, 0.2)),
    ("cifar100", "instance", 0.4, 100, (15, 0.99, 1.0)), ("cifar100", "instance", 0.2, 100, (15, 0.99, 1.0)),
    ("cifar100", "sym", 0.8, 100, (20, 0.95, 0.2)), ("cifar100", "sym", 0.6, 100, (20, 0.95, 0.2)),
    # CIFAR-10 has no such branch: ins stays 15 at 80% (DISC.py:68-73)
    ("cifar10", "instance", 0.8, 10, (15, 0.95, 0.2)), ("cifar10", "instance", 0.6, 10, (15, 0.95, 0.2)),
    ("cifar10", "instance", 0.4, 10, (15, 0.99, 1.0)),
    # other data sets take the CIFAR branch of their class count
    ("cifar100n", "instance", 0.8, 100, (20, 0.95, 0.2)), ("fashion-mnist", "instance", 0.8, 10, (15, 0.95, 0.2)),
])
def test_instance_noise_warm_up_and_the_cifar100_80_percent_branch(dataset, noise, rate, classes, expected):
    d = setting_defaults(DISC, dataset, noise, rate, classes)
    assert (d["warmup_epochs"], d["momentum"], d["lambda_h"]) == expected


@pytest.mark.parametrize("key,value", [("momentum", "1"), ("q", "0"), ("alpha", "0"), ("warmup_epochs", "-1")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key):
        build_options(DISC, {key: value})


def test_strong_view_ops_and_grey_cutout():
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = cutout_abs(x, torch.Generator().manual_seed(0), 4)
    for img in out:
        grey = (img == 127).all(0)
        rows, cols = grey.any(1).nonzero().squeeze(1), grey.any(0).nonzero().squeeze(1)
        assert 1 <= len(rows) <= 5 and 1 <= len(cols) <= 5 and grey.sum() == len(rows) * len(cols)
    assert (out == 127).any(dim=(1, 2, 3)).all()
    # each op applies with p = 1/2: some images of a batch stay untouched by both slots
    y = torch.randint(0, 256, (256, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    aug = rand_augment_mc(y, torch.Generator().manual_seed(2))
    same = (aug == y).flatten(1).all(1).float().mean().item()
    assert 0.15 < same < 0.5  # (1/2)^2 untouched, plus ops that change nothing on these images


@pytest.mark.slow
def test_warm_up_then_sets_and_skipped_zero_loss(tmp_path):
    tr = make_trainer(tmp_path, method="disc", noise="sym", noise_rate=0.4, subset=300, epochs=3, batch_size=100,
                      method_options={"warmup_epochs": "1"})
    m0 = tr.run_epoch(0)
    st = tr.method.state
    assert st["w_probs"].sum(1).allclose(torch.ones(300)) and st["s_probs"].sum(1).allclose(torch.ones(300))
    assert 0 <= m0["disc_clean_frac"] <= 1 and "clean_auc" in m0
    m1 = tr.run_epoch(1)
    assert m1["train_loss"] >= 0
    # a batch of samples in no set has loss 0 and takes no step
    st["clean"][:] = st["hard"][:] = st["weak"][:] = False
    batch = next(tr.train_loader.iterate(("weak", "strong-mc"), torch.Generator().manual_seed(0)))
    out = tr.method.train_step(batch, 2, None)
    assert out.loss.item() == 0 and not out.step

