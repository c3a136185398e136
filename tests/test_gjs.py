"""GJS: the loss by hand (methods-paper-set.md, section 6), its defaults, its views (RandAugment
n=1 m=3, the base augmentation, Cutout) under both view policies, a short run."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import make_trainer

from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.training.augment import rand_augment
from bench.training.data import cutout, make_view_maker, random_crop, random_flip
from methods.gjs import GJS, gjs_defaults, gjs_loss

V1 = torch.tensor([[2.0, 1, 0], [0, 0, 3]], dtype=torch.float64)
V2 = torch.tensor([[1.0, 1, 1], [0, 2, 1]], dtype=torch.float64)
Y = torch.tensor([0, 2])


def test_gjs_and_js_by_hand():
    # pi = (.3, .35, .35): unscaled 0.264311, 1/Z = 4.005248, GJS = 1.058631
    assert gjs_loss([V1, V2], Y, 0.3, scaled=False).item() == pytest.approx(0.264311, abs=1e-6)
    assert 1 / (-(0.7) * math.log(0.7)) == pytest.approx(4.005248, abs=1e-6)
    assert gjs_loss([V1, V2], Y, 0.3).item() == pytest.approx(1.058631, abs=1e-6)
    # JS (M = 2, pi = (.5, .5), view 1): unscaled 0.082708, 1/Z = 2.885390, JS = 0.238646
    assert gjs_loss([V1], Y, 0.5, scaled=False).item() == pytest.approx(0.082708, abs=1e-6)
    assert gjs_loss([V1], Y, 0.5).item() == pytest.approx(0.238646, abs=1e-6)
    # views that predict the label perfectly: about 0
    sure = torch.tensor([[50.0, 0, 0], [0, 0, 50.0]], dtype=torch.float64)
    assert gjs_loss([sure, sure], Y, 0.3).item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_flow_through_every_view():
    a, b = V1.clone().requires_grad_(), V2.clone().requires_grad_()
    gjs_loss([a, b], Y, 0.3).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize("dataset,noise,rate,classes,expected", [
    ("cifar10", "sym", 0.2, 10, 0.3), ("cifar10", "sym", 0.4, 10, 0.9), ("cifar10", "sym", 0.8, 10, 0.1),
    ("cifar10", "asym", 0.4, 10, 0.3), ("cifar100", "sym", 0.4, 100, 0.5), ("cifar100", "sym", 0.6, 100, 0.9),
    ("cifar100", "asym", 0.4, 100, 0.1), ("cifar100", "asym", 0.2, 100, 0.5),
    ("fashion-mnist", "pairflip", 0.4, 10, 0.3), ("fashion-mnist", "instance", 0.4, 10, 0.9),
    ("fashion-mnist", "sym", 0.3, 10, 0.3),  # between 0.2 and 0.4: the lower
    ("webvision", "none", None, 50, 0.1),
])
def test_defaults_by_setting(dataset, noise, rate, classes, expected):
    assert gjs_defaults(dataset, noise, rate, classes) == expected


@pytest.mark.parametrize("key,value", [("pi_label", "0"), ("pi_label", "1"), ("views", "3"), ("scaling", "none")])
def test_invalid_options_raise_one_line_errors(key, value):
    with pytest.raises(UsageError, match=key if key != "scaling" else "paper"):
        build_options(GJS, {key: value})


def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.ones(64, 3, 32, 32)
    out = cutout(x, torch.Generator().manual_seed(0))
    for img in out:
        zero = (img[0] == 0)
        assert torch.equal(zero, (img == 0).all(0))  # the same square in every channel
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # 16 px, clipped to at least half
        assert zero.sum() == len(rows) * len(cols)  # one rectangle
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()


@pytest.mark.parametrize("policy,base", [("shared", "none"), ("official", "crop-flip")])
def test_ra_cutout_view_is_randaugment_then_base_then_cutout(policy, base):
    x = torch.randint(0, 256, (6, 3, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    vm = make_view_maker((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"), "none", False, policy=policy)
    g = torch.Generator().manual_seed(7)
    y = rand_augment(x, g, 1, 3)
    if base == "crop-flip":
        y = random_flip(random_crop(y, 4, g), g)
    expected = cutout(vm.normalise(y), g)
    torch.testing.assert_close(vm(x, "ra-cutout", torch.Generator().manual_seed(7)), expected, rtol=0, atol=0)


def test_short_run_trains_on_its_two_views_and_logs_pi(tmp_path):
    tr = make_trainer(tmp_path, method="gjs", noise="sym", noise_rate=0.4, subset=200, epochs=1, batch_size=100)
    assert tr.method.views(0) == ("ra-cutout", "ra-cutout2")
    assert tr.method.resolved_options()["pi_label"] == 0.9 and tr.method.scaled
    m = tr.run_epoch(0)
    assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0
