"""GJS: the loss by hand (losses.py:133-158 of github.com/ErikEnglesson/GJS), its defaults (GJS
and JS against every official config), its views (RandAugment n=1 m=3, the base augmentation,
Cutout) under both view policies, a short run."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import make_trainer, setting_default

from bench.common.augment import cutout, rand_augment
from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.training.data import make_view_maker, random_crop, random_flip
from methods.gjs import GJS, gjs_loss

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


# pi_1 = the first of js_weights in each official config (github.com/ErikEnglesson/GJS @1a3c9e0)
OFFICIAL_GJS = [  # scripts/<dir>/gjs-<rate>.yaml
    ("C10/sym/gjs-0", 0.5), ("C10/sym/gjs-20", 0.3), ("C10/sym/gjs-40", 0.9), ("C10/sym/gjs-60", 0.1),
    ("C10/sym/gjs-80", 0.1), ("C10/asym/gjs-20", 0.3), ("C10/asym/gjs-40", 0.3),
    ("C100/sym/gjs-0", 0.3), ("C100/sym/gjs-20", 0.3), ("C100/sym/gjs-40", 0.5), ("C100/sym/gjs-60", 0.9),
    ("C100/sym/gjs-80", 0.1), ("C100/asym/gjs-20", 0.5), ("C100/asym/gjs-40", 0.1),
    ("WebVision/gjs", 0.1),
]
OFFICIAL_JS = [  # scripts/<dir>/js-<rate>.yaml
    ("C10/sym/js-0", 0.1), ("C10/sym/js-20", 0.7), ("C10/sym/js-40", 0.7), ("C10/sym/js-60", 0.9),
    ("C10/sym/js-80", 0.9), ("C10/asym/js-20", 0.3), ("C10/asym/js-40", 0.3),
    ("C100/sym/js-0", 0.1), ("C100/sym/js-20", 0.1), ("C100/sym/js-40", 0.3), ("C100/sym/js-60", 0.5),
    ("C100/sym/js-80", 0.3), ("C100/asym/js-20", 0.5), ("C100/asym/js-40", 0.5),
    ("WebVision/js", 0.1),
]


def _setting(config: str) -> tuple[str, str, float | None, int]:
    """(data set, noise, rate, classes) of an official config's path under scripts/."""
    if config.startswith("WebVision"):
        return "webvision", "none", None, 50
    folder, kind, name = config.split("/")
    classes = 10 if folder == "C10" else 100
    return f"cifar{classes}", kind, int(name.split("-")[1]) / 100, classes


@pytest.mark.parametrize("views,config,expected",
                         [(2, c, e) for c, e in OFFICIAL_GJS] + [(1, c, e) for c, e in OFFICIAL_JS])
def test_defaults_equal_every_official_config(views, config, expected):
    dataset, noise, rate, classes = _setting(config)
    assert setting_default(GJS, "pi_label", dataset, noise, rate, classes, views=views) == expected


@pytest.mark.parametrize("dataset,noise,rate,classes,views,expected", [
    ("fashion-mnist", "pairflip", 0.4, 10, 2, 0.3), ("fashion-mnist", "instance", 0.4, 10, 2, 0.9),
    ("fashion-mnist", "instance", 0.4, 10, 1, 0.7), ("fashion-mnist", "none", 0.0, 10, 2, 0.5),
    ("fashion-mnist", "sym", 0.3, 10, 2, 0.3), ("fashion-mnist", "sym", 0.5, 10, 1, 0.7),  # ties: the lower
    ("fashion-mnist", "sym", 0.1, 10, 2, 0.5), ("cifar100", "sym", 0.9, 100, 1, 0.3),
    ("clothing1m", "none", None, 14, 2, 0.3), ("clothing1m", "none", None, 14, 1, 0.1),  # real noise: the 20% values
])
def test_defaults_outside_the_official_settings(dataset, noise, rate, classes, views, expected):
    assert setting_default(GJS, "pi_label", dataset, noise, rate, classes, views=views) == expected


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


def test_js_variant_resolves_the_js_configs_default(tmp_path):
    tr = make_trainer(tmp_path, method="gjs", noise="sym", noise_rate=0.4, subset=200, epochs=1, batch_size=100,
                      method_options={"views": "1"})
    assert tr.method.views(0) == ("ra-cutout",)
    assert tr.method.resolved_options()["pi_label"] == 0.7  # scripts/C10/sym/js-40.yaml, GJS's is 0.9
