"""Tests for :mod:`bench.common.augment`: every op against torchvision's own ``_apply_op`` (the
function ``transforms.RandAugment`` calls) image by image, the magnitude table against its
``_augmentation_space``, and the per-sample draws of ``rand_augment``."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import InterpolationMode, RandAugment
from torchvision.transforms.autoaugment import _apply_op

from bench.common import augment
from bench.common.augment import GEOMETRIC, OPS, SIGNED, apply_op, draw_ops, op_magnitudes, rand_augment

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 29, 31)]  # Fashion-MNIST, CIFAR, odd and non-square
# Warps may differ from torchvision where a source coordinate falls on a nearest-neighbour
# rounding boundary (x.5), which affine_grid and torchvision's own grid reach with different
# float error. Measured over all 31 bins, both signs and these shapes plus 48x64: 0 at m=10
# (the IDO setting) for every warp; worst 3.5% of pixels for ShearX/Y at m=20 (shear 0.2
# moves row i by 0.2 * (i + 0.5), exactly half a pixel every fifth row) and 0.7% for Rotate
# at m=30 on the odd shape. Other ops are exact.
GEOMETRIC_TOLERANCE = 0.04


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth images with noise, each stretched to its own random range, plus edge cases: a
    constant image, a two-valued one, and (for RGB) one with a constant channel."""
    g = gen(seed)
    coarse = torch.rand((n, c, h // 4 + 1, w // 4 + 1), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.rand((n, c, h, w), generator=g)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    low = 100 * torch.rand((n, 1, 1, 1), generator=g)
    high = 155 + 100 * torch.rand((n, 1, 1, 1), generator=g)
    x = (low + (high - low) * (x - lo) / (hi - lo)).round().to(torch.uint8)
    x[0] = 77
    x[1] = torch.where(x[1] > 128, 200, 3).to(torch.uint8)
    x[2, 0] = 255
    return x


def reference(x: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    return torch.stack([_apply_op(im, name, magnitude, InterpolationMode.NEAREST, None) for im in x])


def test_op_list_and_signs_match_torchvision() -> None:
    space = RandAugment()._augmentation_space(31, (32, 32))
    assert OPS == tuple(space)
    assert set(SIGNED) == {name for name, (_, signed) in space.items() if signed}


@pytest.mark.parametrize("magnitude,num_bins,h,w", [(10, 31, 32, 32), (10, 31, 28, 28), (0, 31, 32, 32),
                                                    (30, 31, 29, 31), (7, 11, 64, 48)])
def test_magnitude_table_matches_torchvision(magnitude: int, num_bins: int, h: int, w: int) -> None:
    space = RandAugment()._augmentation_space(num_bins, (h, w))
    table = op_magnitudes(magnitude, num_bins, h, w)
    for i, (values, _) in enumerate(space.values()):
        expected = float(values[magnitude].item()) if values.ndim > 0 else 0.0
        assert table[i].item() == expected  # bit-identical, so thresholds and factors agree


CASES = [(name, sign) for name in OPS for sign in ((1, -1) if name in SIGNED else (1,))]


@pytest.mark.parametrize("magnitude", [10, 20, 30])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name,sign", CASES, ids=[f"{n}{'-' if s < 0 else '+'}" for n, s in CASES])
def test_op_matches_torchvision_image_by_image(name: str, sign: int, shape: tuple, magnitude: int) -> None:
    c, h, w = shape
    x = images(24, c, h, w, seed=magnitude)
    m = sign * op_magnitudes(magnitude, 31, h, w)[OPS.index(name)].item()
    ours, ref = apply_op(x, name, m), reference(x, name, m)
    assert ours.dtype == torch.uint8 and ours.shape == x.shape
    differing = (ours != ref).any(dim=1).float().mean().item()  # fraction of pixels
    assert differing <= (GEOMETRIC_TOLERANCE if name in GEOMETRIC else 0.0), differing
    if name != "Identity" and (name != "Color" or c == 3):
        assert not torch.equal(ours, x)  # the op did something (Color is the identity on C=1)


def test_warps_exact_at_the_ido_magnitude() -> None:
    """At m=10 no source coordinate lands on a rounding boundary for these shapes: exact."""
    for c, h, w in SHAPES[:2]:
        x = images(16, c, h, w)
        table = op_magnitudes(10, 31, h, w)
        for name in GEOMETRIC:
            for sign in (1, -1):
                m = sign * table[OPS.index(name)].item()
                assert torch.equal(apply_op(x, name, m), reference(x, name, m)), (name, sign, c)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=["c1", "c3"])
def test_rand_augment_preserves_dtype_shape_device(shape: tuple) -> None:
    x = images(8, *shape)
    out = rand_augment(x, gen())
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device


def test_rand_augment_deterministic_per_seed() -> None:
    x = images(64, 3, 32, 32)
    assert torch.equal(rand_augment(x, gen(5)), rand_augment(x, gen(5)))
    assert not torch.equal(rand_augment(x, gen(5)), rand_augment(x, gen(6)))


def test_rand_augment_replays_its_draws_per_sample() -> None:
    """Image i gets ops[0, i] then ops[1, i] with its own signs: the draws of ``draw_ops``,
    replayed one image at a time through ``apply_op``."""
    x = images(48, 3, 32, 32)
    out = rand_augment(x, gen(3))
    ops, negate = draw_ops(len(x), gen(3), 2)
    table = op_magnitudes(10, 31, 32, 32)
    for i in range(len(x)):
        y = x[i:i + 1]
        for slot in range(2):
            name = OPS[ops[slot, i]]
            sign = -1.0 if negate[slot, i] and name in SIGNED else 1.0
            y = apply_op(y, name, sign * table[ops[slot, i]].item())
        assert torch.equal(out[i:i + 1], y), i


def test_op_choice_is_per_sample() -> None:
    x = images(8, 3, 32, 32)[5:6].expand(256, -1, -1, -1).contiguous()
    out = rand_augment(x, gen())
    distinct = {bytes(im.flatten().tolist()) for im in out}
    # 14 ops (9 with two signs) twice over: about 500 outcomes, many coinciding
    assert len(distinct) > 100


def test_draws_are_uniform() -> None:
    ops, negate = draw_ops(7000, gen(1), 2)
    counts = Counter(ops.flatten().tolist())
    assert sorted(counts) == list(range(len(OPS)))
    assert all(800 <= n <= 1200 for n in counts.values()), counts  # expected 1,000 each, sd ~30
    assert 0.47 < negate.float().mean().item() < 0.53


def test_each_op_runs_once_per_slot_whatever_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """No loop over samples: every op function sees its whole sub-batch in one call. (This
    replaces a wall-clock bound: on the shared 2-core machine one 512-image call measured
    0.02-0.04 s when idle but over 1.5 s under contention from other jobs.)"""
    calls: Counter = Counter()

    def counting(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(augment, "_warp", counting("warp", augment._warp))
    for name, fn in list(augment._PIXEL_OPS.items()):
        monkeypatch.setitem(augment._PIXEL_OPS, name, counting(name, fn))
    x = images(512, 3, 32, 32)
    rand_augment(x, gen(), num_ops=2)
    assert set(calls) == {"warp", *augment._PIXEL_OPS} - {"Invert"}  # RandAugment never inverts
    assert max(calls.values()) <= 2, calls
    calls.clear()
    augment.auto_augment(x, gen())  # AutoAugment too: one call per op and slot
    assert "Invert" in calls and max(calls.values()) <= 2, calls


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="uint8"):
        rand_augment(torch.zeros((2, 3, 8, 8)), gen())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        rand_augment(torch.zeros((2, 2, 8, 8), dtype=torch.uint8), gen())
    with pytest.raises(ValueError, match="bins 0..30"):
        rand_augment(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), gen(), magnitude=31)
    with pytest.raises(ValueError, match="valid: Identity"):
        apply_op(torch.zeros((2, 3, 8, 8), dtype=torch.uint8), "Cutout", 0.0)


# --- per-sample magnitudes of the unsigned ops, Invert, and AutoAugment (CIFAR-10 policy) ----------


@pytest.mark.parametrize("name,magnitudes", [("Posterize", (1.0, 4.0, 6.0, 8.0)),
                                             ("Solarize", (0.0, 77.0, 128.0, 255.0))])
def test_unsigned_ops_take_one_magnitude_per_image(name: str, magnitudes: tuple) -> None:
    """RandAugmentMC and AutoAugment give the images of one sub-batch different magnitudes:
    each image must get its own (a single value for the sub-batch was a bug)."""
    x = images(len(magnitudes), 3, 32, 32, seed=4)
    op = torch.full((len(x),), augment._INDEX[name], dtype=torch.long)
    out = augment.apply_ops(x, op, torch.tensor(magnitudes, dtype=torch.float64))
    for i, m in enumerate(magnitudes):
        assert torch.equal(out[i], reference(x[i:i + 1], name, m)[0]), (name, m)


def test_invert_matches_torchvision() -> None:
    x = images(6, 3, 32, 32)
    assert torch.equal(apply_op(x, "Invert", 0.0), reference(x, "Invert", 0.0))


def test_auto_augment_policy_is_torchvisions_cifar10() -> None:
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    assert tuple(tuple(sub) for sub in AutoAugment(AutoAugmentPolicy.CIFAR10).policies) == augment.CIFAR10_POLICY


@pytest.mark.parametrize("shape", SHAPES[:2], ids=["c1", "c3"])
def test_auto_augment_replays_torchvisions_forward_per_sample(shape: tuple) -> None:
    """Image i goes through torchvision's ``AutoAugment.forward`` steps with image i's draws
    (sub-policy, probabilities, signs) through torchvision's own ``_apply_op``."""
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    x = images(96, *shape, seed=2)
    out = augment.auto_augment(x, gen(7))
    policy, probs, signs = augment.draw_auto_augment(len(x), gen(7))
    aa = AutoAugment(AutoAugmentPolicy.CIFAR10)
    space = aa._augmentation_space(10, (shape[1], shape[2]))
    differing = 0.0
    for i in range(len(x)):
        y = x[i]
        for slot, (name, p, bin_) in enumerate(aa.policies[int(policy[i])]):
            if probs[slot, i] <= p:
                values, signed = space[name]
                m = float(values[bin_].item()) if bin_ is not None else 0.0
                m = -m if signed and signs[slot, i] == 0 else m
                y = _apply_op(y, name, m, InterpolationMode.NEAREST, None)
        differing = max(differing, (out[i] != y).any(dim=0).float().mean().item())
    assert differing <= GEOMETRIC_TOLERANCE, differing  # warps: see GEOMETRIC_TOLERANCE
    assert len({int(p) for p in policy}) > 15  # drawn per sample, not once per call
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_promix_augment_cuts_a_grey_square_of_random_side_after_three_ops():
    """ProMix's RandomAugment: 3 ops at values over their range, then a Cutout of side
    uniform(0, 0.5) x width filled with (125, 123, 114); per image, from the generator alone."""
    x = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    out = augment.promix_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    grey = (out == torch.tensor([125, 123, 114], dtype=torch.uint8).view(1, 3, 1, 1)).all(dim=1)
    sides = grey.flatten(1).sum(1).float().sqrt()
    assert sides.max() <= 17 and sides.std() > 1  # side at most 0.5 x 32 (+ PIL's inclusive end), varying
    again = augment.promix_augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_cutout_abs_takes_one_side_per_image():
    x = torch.zeros((3, 1, 10, 10), dtype=torch.uint8)
    out = augment.cutout_abs(x, torch.Generator().manual_seed(0), torch.tensor([0.0, 2.0, 4.0]), fill=(9, 9, 9))
    counts = (out == 9).flatten(1).sum(1).tolist()
    assert counts[0] <= 1 and counts[0] < counts[1] < counts[2] <= 25


# --- the batched dispatch: the subset dispatch's images, without reading anything back -----------

ALL_OPS = tuple(augment._INDEX)  # the 14 RandAugment ops and Invert


@pytest.fixture
def one_thread():
    """These tests run some 200 small ops per call: with two threads each one above the grain
    size is a parallel region, which on the shared, busy 2-core machine waits a time slice for
    the other thread (12 s instead of 0.1 s measured for one test). One thread; the count restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
DISPATCH_SHAPES = [(1, 28, 28), (3, 32, 32), (3, 29, 31), (3, 2, 7)]  # the last: too small to sharpen


def random_magnitudes(op: torch.Tensor, h: int, w: int, seed: int) -> torch.Tensor:
    """One signed magnitude per image: a bin of 31 drawn per image, a random sign for the signed ops."""
    g = gen(seed)
    table = augment._device_tables(torch.device("cpu"), "mc", h, w)[0]
    table = torch.nn.functional.pad(table, (0, 1))  # Invert: no magnitude
    bins = torch.randint(0, 31, op.shape, generator=g)
    signed = torch.tensor([name in SIGNED for name in ALL_OPS])[op]
    negate = signed & (torch.rand(op.shape, generator=g) < 0.5)
    return table[bins, op] * torch.where(negate, -1.0, 1.0).double()


def mixed_images(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Edge cases (constant, two-valued, a constant channel) and smooth images, then uniform noise."""
    noise = torch.randint(0, 256, (n - n // 2, c, h, w), generator=gen(seed), dtype=torch.uint8)
    return torch.cat([images(n // 2, c, h, w, seed) if min(h, w) > 3 else noise[:n // 2], noise])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("shape", DISPATCH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_batched_dispatch_equals_subset_for_every_op(shape: tuple) -> None:
    """Each op alone on a batch (per-image magnitudes over all bins, both signs), and all ops mixed
    in one batch: the whole-batch kernels with neutral parameters give the subset dispatch's images
    bit for bit (Color stays the identity on one channel, Sharpness on images under 3x3)."""
    c, h, w = shape
    x = mixed_images(12, c, h, w, seed=h)
    for i, name in enumerate(ALL_OPS):
        op = torch.full((len(x),), i, dtype=torch.long)
        mag = random_magnitudes(op, h, w, seed=i)
        batched = augment.apply_ops(x, op, mag, dispatch="batched")
        assert torch.equal(batched, augment.apply_ops(x, op, mag, dispatch="subset")), name
    x = mixed_images(60, c, h, w, seed=w)
    op = torch.randint(0, len(ALL_OPS), (len(x),), generator=gen(c))
    mag = random_magnitudes(op, h, w, seed=c)
    assert torch.equal(augment.apply_ops(x, op, mag, "batched"), augment.apply_ops(x, op, mag, "subset"))


SAMPLERS = [augment.rand_augment, augment.rand_augment_mc, augment.auto_augment, augment.promix_augment]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("shape", SHAPES[:2], ids=["c1", "c3"])
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_batched_dispatch_equals_subset_for_the_samplers(sampler, shape: tuple) -> None:
    """Same seeded generator, same images, and the same draws taken from it (its final state)."""
    x = mixed_images(64, *shape, seed=1)
    outs, states = [], []
    for dispatch in ("subset", "batched"):
        g = gen(11)
        outs.append(sampler(x, g, dispatch=dispatch))
        states.append(g.get_state())
    assert torch.equal(*outs) and torch.equal(*states)
    assert not torch.equal(outs[0], x)


class _OpLog(TorchDispatchMode):
    """The ATen ops a block runs, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.usefixtures("one_thread")
def test_batched_dispatch_reads_nothing_back_and_runs_the_same_kernels_whatever_the_batch() -> None:
    """On the meta device (shapes, no data) anything that reads a value back (``nonzero``, masks,
    ``.item()``, ``bool()``) fails: the batched dispatch, "auto" off the CPU, runs there, so on
    an accelerator it never waits for it; and its op sequence is the same for 4 and 64 images."""
    meta = torch.device("meta")
    logs = []
    for n in (4, 64):
        x = torch.zeros((n, 3, 32, 32), dtype=torch.uint8, device=meta)
        op, mag = torch.zeros(n, dtype=torch.long, device=meta), torch.zeros(n, dtype=torch.float64, device=meta)
        augment.apply_ops(x, op, mag)  # fills the per-device caches
        with _OpLog() as log:
            assert augment.apply_ops(x, op, mag).device == meta
        logs.append(log.ops)
    assert logs[0] == logs[1] and not any("nonzero" in name for name in logs[0]), logs[0]
    for sampler in SAMPLERS:
        assert sampler(x, gen(), dispatch="auto").shape == x.shape
    with pytest.raises(NotImplementedError):
        augment.apply_ops(x, op, mag, dispatch="subset")  # the subset dispatch reads counts back


def test_auto_dispatch_on_the_cpu_and_unknown_dispatch() -> None:
    x = images(4, 3, 32, 32)
    op, mag = torch.arange(4), torch.ones(4, dtype=torch.float64)
    assert torch.equal(augment.apply_ops(x, op, mag), augment.apply_ops(x, op, mag, augment.CPU_DISPATCH))
    with pytest.raises(ValueError, match="valid: auto, batched, subset"):
        augment.apply_ops(x, op, mag, dispatch="gather")
