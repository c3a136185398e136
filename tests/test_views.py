"""Augmentation-controlled views (`--views shared|official`): under `shared` a method's own
views start from the run's `--augment` (with `--augment none` the weak view is the plain one
and the strong view RandAugment of the un-augmented images); under `official` they are the
methods' published crop + flip (+ RandAugment); with `--augment crop-flip` the two policies
give the same batches draw for draw; the policy is part of what decides a run (hashed, kept on
resume); a sweep can vary it for the methods that have views of their own."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.training.augment import rand_augment
from bench.training.config import RunConfig
from bench.training.data import VIEWS, make_view_maker, random_crop, random_flip
from bench.training.disk import file_transforms

CPU = torch.device("cpu")


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (6, 3, 12, 12), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def maker(augment: str, policy: str):
    return make_view_maker((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU, augment, False, policy=policy)


def draw(vm, x: torch.Tensor, view: str, seed: int = 7) -> torch.Tensor:
    return vm(x, view, torch.Generator().manual_seed(seed))


def test_shared_views_on_no_augmentation_are_the_plain_view_and_randaugment_of_it():
    x, vm = batch(), maker("none", "shared")
    torch.testing.assert_close(draw(vm, x, "weak"), draw(vm, x, "plain"), rtol=0, atol=0)
    torch.testing.assert_close(draw(vm, x, "weak2"), draw(vm, x, "plain"), rtol=0, atol=0)
    expected = vm.normalise(rand_augment(x, torch.Generator().manual_seed(7)))  # the same generator state
    torch.testing.assert_close(draw(vm, x, "strong"), expected, rtol=0, atol=0)


def test_official_views_are_crop_and_flip_whatever_the_run_augments():
    x, vm = batch(), maker("none", "official")
    g = torch.Generator().manual_seed(7)
    expected = vm.normalise(random_flip(random_crop(x, 4, g), g))
    torch.testing.assert_close(draw(vm, x, "weak"), expected, rtol=0, atol=0)
    assert not torch.equal(draw(vm, x, "weak"), draw(vm, x, "plain"))
    g = torch.Generator().manual_seed(7)
    strong = vm.normalise(rand_augment(random_flip(random_crop(x, 4, g), g), g))
    torch.testing.assert_close(draw(vm, x, "strong"), strong, rtol=0, atol=0)
    # the shared training view still follows --augment
    torch.testing.assert_close(draw(vm, x, "train"), draw(vm, x, "plain"), rtol=0, atol=0)


@pytest.mark.parametrize("view", VIEWS)
def test_with_crop_flip_the_two_policies_give_identical_views(view):
    x = batch(1)
    shared, official = draw(maker("crop-flip", "shared"), x, view), draw(maker("crop-flip", "official"), x, view)
    torch.testing.assert_close(shared, official, rtol=0, atol=0)


@pytest.mark.parametrize("policy", ["shared", "official"])
def test_autoaugment_views_start_from_the_policys_base(policy):
    """UNICON's strong views: the policy's base (none under shared here, crop + flip under
    official), then AutoAugment (CIFAR-10 policy) on uint8, then normalisation; two draws differ."""
    from bench.training.augment import auto_augment

    x, vm = batch(3), maker("none", policy)
    g = torch.Generator().manual_seed(7)
    base = x if policy == "shared" else random_flip(random_crop(x, 4, g), g)
    torch.testing.assert_close(draw(vm, x, "autoaug"), vm.normalise(auto_augment(base, g)), rtol=0, atol=0)
    g = torch.Generator().manual_seed(7)
    first, second = vm(x, "autoaug", g), vm(x, "autoaug2", g)
    assert not torch.equal(first, second)


def test_shared_views_follow_another_base_augmentation():
    x, vm = batch(2), maker("flip", "shared")
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(draw(vm, x, "weak"), vm.normalise(random_flip(x, g)), rtol=0, atol=0)


def test_image_file_views_follow_the_policy_too(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    shared, official = file_transforms(20, None, "none", "shared"), file_transforms(20, None, "none", "official")
    torch.manual_seed(0)
    assert torch.equal(shared["weak"](img), shared["plain"](img))  # no augmentation: the plain image
    outs = set()
    for s in range(5):  # crop + flip: the image moves
        torch.manual_seed(s)
        outs.add(official["weak"](img).numpy().tobytes())
    assert len(outs) > 1
    same = [file_transforms(20, None, "crop-flip", p) for p in ("shared", "official")]
    for view in ("weak", "strong"):
        torch.manual_seed(3)
        a = same[0][view](img)
        torch.manual_seed(3)
        assert torch.equal(a, same[1][view](img)), view


@pytest.mark.slow
def test_the_policy_decides_the_result_and_resume_keeps_it(tmp_path, capsys):
    assert RunConfig(method="ce", views="shared").hash() != RunConfig(method="ce", views="official").hash()
    assert main(["run", "--method", "ce", "--views", "both"]) == 2
    assert "--views both: valid values are shared, official" in capsys.readouterr().err
    out = tmp_path / "runs"
    code = main(["run", "--method", "wrongevent", "--views", "official", "--subset", "60", "--epochs", "3",
                 "--stop-after", "1", "--set", "stage1_epochs=1", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--augment", "none"])
    assert code == 0
    run_dir = next(out.iterdir())
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--views", "shared"]) == 2
    assert "drop --views" in capsys.readouterr().err
    from bench.training.resolve import resolve_resume

    assert resolve_resume(run_dir, {}).config.views == "official"


def test_a_sweep_varies_the_policy_only_where_it_changes_the_batches(tmp_path):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["sweep", "--methods", "ce,wrongevent,dividemix", "--noise", "sym:0.4",
                     "--views", "shared,official", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                     "--out", str(tmp_path / "runs")])
    assert code == 0
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("new")]
    labels = sorted(line.split(None, 1)[1].strip() for line in lines)
    assert labels == ["ce sym:0.4 seed 1 views shared", "dividemix sym:0.4 seed 1 views official",
                      "dividemix sym:0.4 seed 1 views shared", "wrongevent sym:0.4 seed 1 views official",
                      "wrongevent sym:0.4 seed 1 views shared"]


def test_list_shows_each_methods_views_under_both_policies(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "views: train (--augment); weak: shared = --augment, official = crop + flip; strong: shared = " \
           "--augment + RandAugment n=2 m=10, official = crop + flip + RandAugment n=2 m=10" in out
    assert "views: train (--augment) only (--views changes nothing)" in out
