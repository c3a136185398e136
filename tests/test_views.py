"""Augmentation-controlled views (`--views shared|official`): under `shared` a method's own
views start from the run's `--augment` (with `--augment none` the weak view is the plain one
and the strong view RandAugment of the un-augmented images); under `official` they are the
methods' published crop + flip (+ RandAugment); with `--augment crop-flip` the two policies
give the same batches draw for draw; the policy is part of what decides a run (hashed, kept on
resume); a sweep can vary it for the methods that have views of their own. Views are registered
(bench.common.views): a method's own by its module, read by the loaders, `bench list` and the
checks here; the training layer names none of them."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import methods
from bench.cli import main
from bench.common.augment import rand_augment
from bench.common.views import View, get_view, register_view, unregister_view, view_names
from bench.training.config import RunConfig
from bench.training.data import make_view_maker, random_crop, random_flip
from bench.training.disk import file_transforms
from methods.base import METHODS, Method

methods.load_all()  # every method module registers its views
VIEWS = view_names()
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


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
    from bench.common.augment import auto_augment

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


def test_every_method_view_is_registered_by_the_shared_registry_or_the_methods_own_module():
    """A method asks for the shared views or those its own module registers, never another
    method's; and the methods' views are all registered (nothing in the training layer)."""
    owners = {}
    for name in METHODS.names():
        cls = METHODS.get(name)
        if not cls.__module__.startswith("methods."):
            continue
        for view in cls.own_views:
            owner = get_view(view).owner
            assert owner in ("bench", cls.__module__), (name, view, owner)
            owners[view] = owner
    published = {"weak", "weak2", "strong", "ra-cutout", "strong-mc", "autoaug", "autoaug-cutout", "ra-promix"}
    assert published <= set(owners)
    method_owned = {v for v in VIEWS if get_view(v).owner != "bench"}
    assert method_owned and method_owned <= set(owners), method_owned - set(owners)


def test_the_training_layer_names_no_methods_view():
    """bench/training makes views from the registry: no method's view name appears in its code."""
    method_owned = [v for v in VIEWS if get_view(v).owner != "bench"]
    for path in sorted((ROOT / "bench" / "training").glob("*.py")):
        text = path.read_text()
        found = [v for v in method_owned if f'"{v}"' in text or f"'{v}'" in text]
        assert not found, (path.name, found)


def test_a_view_registered_by_a_module_reaches_both_loaders():
    """One register_view call: the in-memory ViewMaker and the on-disk transforms make it, in
    the registered order (op before the base, base, op after, normalisation, normalised op)."""
    view = View("test-invert", "{base} + inverted", "a test", owner="tests", after=lambda x, g: 255 - x,
                normalised=lambda x, g: x * 2)
    register_view(view)
    try:
        x, vm = batch(4), maker("none", "shared")
        torch.testing.assert_close(draw(vm, x, "test-invert"), vm.normalise(255 - x) * 2, rtol=0, atol=0)
        assert view.describe("shared") == "--augment + inverted"
        assert view.describe("official") == "crop + flip + inverted"
        img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
        assert "test-invert" in file_transforms(8, None, "none", "shared")
        assert torch.equal(file_transforms(8, None, "none", "shared")["test-invert"](img),
                           torch.zeros(3, 8, 8, dtype=torch.uint8))  # its op runs on the device, later
    finally:
        unregister_view("test-invert")
    with pytest.raises(ValueError, match="unknown view 'test-invert'"):
        get_view("test-invert")


def test_view_registration_checks_what_the_loaders_need():
    with pytest.raises(ValueError, match="needs its PIL form"):
        register_view(View("test-bad", "x", "a test", owner="tests", before=lambda x, g: x))
    with pytest.raises(ValueError, match="base 'random'"):
        register_view(View("test-bad", "x", "a test", owner="tests", base="random"))
    with pytest.raises(ValueError, match="a source"):
        register_view(View("test-bad", "x", "", owner="tests"))
    with pytest.raises(ValueError, match="registered by methods.gjs already"):
        register_view(View("ra-cutout", "x", "a test", owner="tests"))
    assert "test-bad" not in view_names()


def test_own_views_are_derived_from_view_sets_not_declared():
    class Staged(Method):
        view_sets = {"warmup": ("train",), "train": ("weak", "strong"), "late": ("weak", "weak2")}

    assert Staged.own_views == ("weak", "strong", "weak2")
    with pytest.raises(TypeError, match="own_views is derived"):
        class Declared(Method):  # noqa: F841
            own_views = ("weak",)


def test_the_trainer_refuses_a_view_the_method_does_not_name(tmp_path, monkeypatch):
    from helpers import make_trainer

    tr = make_trainer(tmp_path, method="ce", noise="sym", noise_rate=0.4, subset=40, epochs=1, batch_size=20)
    monkeypatch.setattr(tr.method, "views", lambda epoch: ("train", "weak"))
    with pytest.raises(ValueError, match="method ce asks for views weak, which its view_sets do not name"):
        tr.train_epoch(0)
