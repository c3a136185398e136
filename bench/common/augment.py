"""Batched RandAugment for uint8 image batches on the device: the "strong" view of IDO
(Zhang et al., NeurIPS 2025: random crop + flip + RandAugment with n=2, m=10).

Semantics follow torchvision's ``transforms.RandAugment(num_ops=2, magnitude=10,
num_magnitude_bins=31)`` (``torchvision/transforms/autoaugment.py``: ``_augmentation_space``
and ``_apply_op``, with the tensor kernels of ``transforms/_functional_tensor.py``): the same
14 ops, the same magnitude tables, a random sign with p=1/2 for the signed ops, fill 0 and
nearest interpolation. Unlike torchvision, which draws one op for the whole tensor it is
given, the op and the sign are drawn independently per sample, and no Python work runs per
sample: :func:`apply_ops` applies one slot's ops either to the sub-batch that chose each op
(``"subset"``: least arithmetic, the CPU default) or as a fixed sequence of whole-batch kernels
with per-sample parameters, neutral for the images whose op it is not (``"batched"``: no host
synchronisation and few launches, the default on accelerators). The two give the same images
bit for bit. Randomness comes only from the passed ``torch.Generator`` (as in
:mod:`bench.training.data`), drawn in the same order whichever the dispatch.

Rounding follows torchvision's uint8 path exactly: blends (brightness, color, contrast,
sharpness) and autocontrast truncate to uint8, the sharpness blur and the warps round. On
uint8 input every op equals torchvision's up to a few pixels of the warps, whose source
coordinates land within float error of a nearest-neighbour rounding boundary (the tests
measure it).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
          "Sharpness")
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# AutoAugment's policies also invert; RandAugment never draws it (it draws from OPS only)
_INDEX = {name: i for i, name in enumerate((*OPS, "Invert"))}


def op_magnitudes(magnitude: int, num_bins: int, height: int, width: int) -> torch.Tensor:
    """The unsigned magnitude of each op in ``OPS`` order (float64, shape (14,)): bin
    ``magnitude`` of torchvision's ``_augmentation_space`` tables, built with the same float32
    ``linspace`` calls so thresholds and factors are bit-identical to torchvision's."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude {magnitude} outside the bins 0..{num_bins - 1}")
    bins = torch.arange(num_bins)
    tables = {
        "ShearX": torch.linspace(0.0, 0.3, num_bins),
        "ShearY": torch.linspace(0.0, 0.3, num_bins),
        "TranslateX": torch.linspace(0.0, 150.0 / 331.0 * width, num_bins),
        "TranslateY": torch.linspace(0.0, 150.0 / 331.0 * height, num_bins),
        "Rotate": torch.linspace(0.0, 30.0, num_bins),
        "Brightness": torch.linspace(0.0, 0.9, num_bins),
        "Color": torch.linspace(0.0, 0.9, num_bins),
        "Contrast": torch.linspace(0.0, 0.9, num_bins),
        "Sharpness": torch.linspace(0.0, 0.9, num_bins),
        "Posterize": 8 - (bins / ((num_bins - 1) / 4)).round().int(),
        "Solarize": torch.linspace(255.0, 0.0, num_bins),
    }
    return torch.tensor([float(tables[name][magnitude]) if name in tables else 0.0 for name in OPS],
                        dtype=torch.float64)


def draw_ops(batch: int, gen: torch.Generator, num_ops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample op indices into ``OPS`` (long, (num_ops, batch)) and negation flags (bool,
    same shape; they only matter for the signed ops), on ``gen.device``."""
    ops = torch.randint(0, len(OPS), (num_ops, batch), generator=gen, device=gen.device)
    negate = torch.rand((num_ops, batch), generator=gen, device=gen.device) < 0.5
    return ops, negate


# --- geometric ops: one per-sample affine matrix batch, one grid_sample --------------------------


def _affine_theta(op: torch.Tensor, mag: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-sample inverse matrices (n, 2, 3) in ``affine_grid``'s normalised coordinates, as
    torchvision's ``_get_inverse_affine_matrix`` builds them for ``_apply_op``: shears about the
    top-left corner (``center=[0, 0]``), rotation about the centre with ``F.rotate``'s sign
    (``-angle`` into the matrix), translation by ``int(magnitude)`` pixels."""
    rot = torch.deg2rad(torch.where(_is(op, "Rotate"), -mag, 0.0))
    atan, trunc = mag.atan(), mag.trunc()  # shear=[degrees(atan(v)), 0]; translate=[int(v), 0]
    sx, sy = torch.where(_is(op, "ShearX"), atan, 0.0), torch.where(_is(op, "ShearY"), atan, 0.0)
    tx, ty = torch.where(_is(op, "TranslateX"), trunc, 0.0), torch.where(_is(op, "TranslateY"), trunc, 0.0)
    shear = _is(op, "ShearX", "ShearY")
    # torchvision's pixel coordinates have (0, 0) at the image centre: the top-left corner is (-w/2, -h/2)
    cx, cy = torch.where(shear, -0.5 * width, 0.0), torch.where(shear, -0.5 * height, 0.0)
    # torchvision's expressions in its order of operations, common terms computed once
    cos_sy, tan_sx, cos_r, sin_r = torch.cos(sy), torch.tan(sx), torch.cos(rot - sy), torch.sin(rot - sy)
    a = cos_r / cos_sy
    b = -cos_r * tan_sx / cos_sy - torch.sin(rot)
    c = sin_r / cos_sy
    d = -sin_r * tan_sx / cos_sy + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a  # [[a, b], [c, d]] has determinant 1
    ox, oy = -cx - tx, -cy - ty
    m2 = m0 * ox + m1 * oy + cx
    m5 = m3 * ox + m4 * oy + cy
    # affine_grid (align_corners=False) works in x / (w/2), y / (h/2)
    theta = torch.stack([m0, m1 * height / width, m2 * 2 / width,
                         m3 * width / height, m4, m5 * 2 / height], dim=-1)
    return theta.view(-1, 2, 3).float()


def _warp(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Shear, translate or rotate each image as its op says; nearest sampling, zero fill."""
    n, c, h, w = x.shape
    theta = _affine_theta(op, mag, h, w)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round().to(torch.uint8)


# --- color ops: float arithmetic as torchvision's, truncated to uint8 like its _blend ---------------


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with one factor per image: ``factor`` and ``1 - factor`` are
    formed in float64 (Python floats there) and applied in float32, then truncated."""
    ratio = factor.view(-1, 1, 1, 1)
    out = ratio.float() * x.float() + (1.0 - ratio).float() * other.float()
    return out.clamp(0, 255).to(torch.uint8)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale``: (n, 1, H, W) uint8, truncated."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.float().unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _brightness(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), 1.0 + mag)


def _color(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # torchvision (and PIL) leave one-channel images unchanged
        return x
    return _blend(x, _grayscale(x), 1.0 + mag)


def _contrast(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).float().mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, 1.0 + mag)


def _sharpness(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_sharpness``: a blend with :func:`_blurred`; images under 3x3 unchanged."""
    if not _sharpens(x.shape[2], x.shape[3]):
        return x
    return _blend(x, _blurred(x), 1.0 + mag)


def _sharpens(height: int, width: int) -> bool:
    """Whether ``adjust_sharpness`` changes images of this size (it returns those under 3x3 as they are)."""
    return height > 2 and width > 2


def _blurred(x: torch.Tensor) -> torch.Tensor:
    """The image ``adjust_sharpness`` blends with (``_blurred_degenerate_image``): the 3x3
    smoothed image (centre weight 5, others 1, over 13), rounded, its border pixels kept."""
    c = x.shape[1]
    smooth = F.conv2d(x.float(), _smoothing_kernel(x.device).expand(c, 1, 3, 3), groups=c)
    smooth = smooth.round().to(torch.uint8)
    blurred = x.clone()
    blurred[:, :, 1:-1, 1:-1] = smooth
    return blurred


@functools.lru_cache(maxsize=8)
def _smoothing_kernel(device: torch.device) -> torch.Tensor:
    """``_blurred_degenerate_image``'s 3x3 kernel (float32, (1, 1, 3, 3)), made on ``device`` as
    torchvision makes it, once (eight launches per call otherwise). Never modified in place."""
    kernel = torch.ones((3, 3), device=device)
    kernel[1, 1] = 5.0
    return (kernel / kernel.sum()).view(1, 1, 3, 3)


def _posterize(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Keep the top ``mag`` bits of every pixel, one bit count per image (RandAugmentMC and
    AutoAugment draw different magnitudes within one sub-batch)."""
    keep = 256 - torch.pow(2, 8 - mag.long())  # the mask -(2 ** (8 - bits)) & 0xFF
    return x & keep.to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above the image's threshold ``mag``."""
    return torch.where(x.double() >= mag.view(-1, 1, 1, 1), 255 - x, x)


def _invert(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return 255 - x


def _autocontrast(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to [0, 255]; constant channels are left alone."""
    low = x.amin(dim=(2, 3), keepdim=True).float()
    high = x.amax(dim=(2, 3), keepdim=True).float()
    scale = 255.0 / (high - low)
    flat = ~torch.isfinite(scale)
    low = torch.where(flat, 0.0, low)
    scale = torch.where(flat, 1.0, scale)
    return ((x - low) * scale).clamp(0, 255).to(torch.uint8)


def _equalize(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """torchvision's ``equalize`` (``_scale_channel``) for every channel of every image at
    once, from one (n*C, 256) histogram: integer arithmetic, so exactly equal."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros((n * c, 256), dtype=torch.long, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    # the sum of the non-zero bins but the last one: everything but the brightest value's count
    last = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1),
                    rounding_mode="floor")
    lut = F.pad(lut, [1, 0])[:, :-1].clamp(0, 255)
    out = torch.where(step == 0, flat, lut.gather(1, flat))  # step 0: torchvision returns the channel
    return out.to(torch.uint8).view(n, c, h, w)


_PIXEL_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": _brightness, "Color": _color, "Contrast": _contrast, "Sharpness": _sharpness,
    "Posterize": _posterize, "Solarize": _solarize, "AutoContrast": _autocontrast, "Equalize": _equalize,
    "Invert": _invert,
}


# --- dispatch -------------------------------------------------------------------------------------

DISPATCHES = ("auto", "batched", "subset")
CPU_DISPATCH = "subset"  # what "auto" picks on the CPU, where it measured faster: see apply_ops
_forced: list[str] = []  # set by use_dispatch: what "auto" means for now


@contextlib.contextmanager
def use_dispatch(dispatch: str) -> Iterator[None]:
    """Within the block, ``"auto"`` means ``dispatch`` (``bench perf --strong`` times both
    dispatches through the views the methods use, which always ask for ``"auto"``)."""
    if dispatch not in DISPATCHES[1:]:
        raise ValueError(f"unknown dispatch {dispatch!r}; valid: {', '.join(DISPATCHES[1:])}")
    _forced.append(dispatch)
    try:
        yield
    finally:
        _forced.pop()


def apply_ops(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, dispatch: str = "auto") -> torch.Tensor:
    """Apply op ``OPS[op[i]]`` with signed magnitude ``mag[i]`` (float64, as torchvision's
    ``_apply_op`` receives it) to image ``i``. Both dispatches give bit-identical images:

    - ``"subset"``: each op present runs once on the sub-batch that drew it (``nonzero``, then
      gather and scatter): the least arithmetic, but about 280 ATen calls a slot when all 14
      ops are present, and on an accelerator one host synchronisation per op (``nonzero`` reads
      its count back), which stalls the launch queue each time;
    - ``"batched"``: one fixed sequence of about 190 ATen calls a slot, whatever the batch and
      the draws, each on the whole batch with per-sample parameters (:func:`_apply_batched`):
      every op's arithmetic on every image, but nothing is read back, so nothing synchronises;
    - ``"auto"``: batched off the CPU, where the subset dispatch is launch- and sync-bound
      (7.4 ms a 64 x 3 x 32 x 32 batch on an H200 against a 9.1 ms training step);
      ``CPU_DISPATCH`` on the CPU, where there are no launches to save and batched runs every
      op kind on every image: measured with ``rand_augment`` (n=2, m=10) on the 2-core CPU
      machine (busy), one thread, medians of interleaved repeats over three runs, batched took
      1.8-1.9x (128 x 1 x 28 x 28, ~15 ms subset), 2.7-3.4x (64 x 3 x 32 x 32, ~14 ms) and
      8-10x (32 x 3 x 224 x 224, ~115-270 ms) the subset's time.
    """
    if dispatch == "auto":
        dispatch = _forced[-1] if _forced else CPU_DISPATCH if x.device.type == "cpu" else "batched"
    if dispatch == "subset":
        return _apply_subsets(x, op, mag)
    if dispatch == "batched":
        return _apply_batched(x, op, mag)
    raise ValueError(f"unknown dispatch {dispatch!r}; valid: {', '.join(DISPATCHES)}")


def _on_subset(x: torch.Tensor, mask: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> torch.Tensor:
    """``x`` with ``fn`` applied to the images where ``mask`` holds (gathered, then scattered back)."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    return x.index_copy(0, idx, fn(x.index_select(0, idx), idx))


def _apply_subsets(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """The subset dispatch: one vectorised call per op present, on the images that drew it."""
    geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in GEOMETRIC:
        geometric |= op == _INDEX[name]
    x = _on_subset(x, geometric, lambda sub, idx: _warp(sub, op[idx], mag[idx]))
    for name, fn in _PIXEL_OPS.items():
        x = _on_subset(x, op == _INDEX[name], lambda sub, idx, fn=fn: fn(sub, mag[idx]))
    return x


def _apply_batched(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """The batched dispatch: every stage runs on the whole batch, and each image's parameter
    there is neutral unless the stage is its op, returning the image bit for bit: the identity
    matrix of the warp (``affine_grid`` then puts every source point within float error of its
    pixel centre, far from a nearest-neighbour rounding boundary, so no select is needed),
    blend factor 1 (1 * x + 0 * other in float is x), Posterize mask 0xFF, Solarize threshold
    256 (Invert: threshold 0); AutoContrast and Equalize run on every image and are selected
    per image. One op per image and slot, so the order of the stages does not matter. No value
    is read back to the host, so nothing synchronises."""
    x = _warp(x, op, mag)  # _affine_theta gives the identity matrix to the other ops
    x = _blend(x, _blend_other(x, op), _blend_factor(x, op, mag))
    x = _posterize(x, torch.where(_is(op, "Posterize"), mag, 8.0))
    x = _solarize(x, _solarize_threshold(op, mag))
    x = torch.where(_is(op, "AutoContrast").view(-1, 1, 1, 1), _autocontrast(x, mag), x)
    return torch.where(_is(op, "Equalize").view(-1, 1, 1, 1), _equalize(x, mag), x)


def _is(op: torch.Tensor, *names: str) -> torch.Tensor:
    """Where ``op`` is one of the ops ``names`` (bool, the shape of ``op``): one lookup, however
    many names."""
    return _op_set(op.device, names)[op]


@functools.lru_cache(maxsize=256)
def _op_set(device: torch.device, names: tuple[str, ...]) -> torch.Tensor:
    """Membership of each op index in ``names`` (bool, (15,)), copied to ``device`` once (a copy to
    an accelerator synchronises)."""
    return torch.tensor([name in names for name in _INDEX]).to(device)


def _blends(channels: int, height: int, width: int) -> tuple[str, ...]:
    """The ops that torchvision's ``_apply_op`` makes a ``_blend`` on images of this shape: Color
    leaves one-channel images alone (``adjust_saturation``), Sharpness those under 3x3. The
    factor of those left alone must stay 1: blend(x, x, f) truncated is not always x."""
    return ("Brightness", "Contrast", *(("Color",) if channels == 3 else ()),
            *(("Sharpness",) if _sharpens(height, width) else ()))


def _blend_factor(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Each image's blend factor: ``1 + magnitude`` (``_apply_op``'s) for the blends, else 1."""
    return torch.where(_is(op, *_blends(*x.shape[1:])), 1.0 + mag, 1.0)


def _blend_other(x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """Each image's second blend operand (float32, broadcast to x): black for Brightness
    (``adjust_brightness``), the grayscale image for Color (``adjust_saturation``), its mean for
    Contrast (``adjust_contrast``), :func:`_blurred` for Sharpness (``adjust_sharpness``); 0 for
    the images with factor 1, where it drops out."""
    gray = _grayscale(x)
    mean = gray.float().mean(dim=(1, 2, 3), keepdim=True)
    other = torch.where(_is(op, "Contrast").view(-1, 1, 1, 1), mean, 0.0)
    blends = _blends(*x.shape[1:])
    if "Color" in blends:
        other = torch.where(_is(op, "Color").view(-1, 1, 1, 1), gray, other)
    if "Sharpness" in blends:
        other = torch.where(_is(op, "Sharpness").view(-1, 1, 1, 1), _blurred(x), other)
    return other


def _solarize_threshold(op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Each image's Solarize threshold: its magnitude for Solarize, 0 for Invert (every pixel is
    at or above it: ``255 - x``, torchvision's ``invert``), and 256 (no pixel) for the others."""
    return torch.where(_is(op, "Solarize"), mag, torch.where(_is(op, "Invert"), 0.0, 256.0))


def apply_op(x: torch.Tensor, name: str, magnitude: float, dispatch: str = "auto") -> torch.Tensor:
    """One op with one signed magnitude on the whole batch (the batched ``_apply_op``)."""
    if name not in _INDEX:
        raise ValueError(f"unknown op {name!r}; valid: {', '.join(_INDEX)}")
    _check_images(x)
    op = torch.full((x.shape[0],), _INDEX[name], dtype=torch.long, device=x.device)
    mag = torch.full((x.shape[0],), float(magnitude), dtype=torch.float64, device=x.device)
    return apply_ops(x, op, mag, dispatch)


def _check_images(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (B, C, H, W) with C = 1 or 3, got {x.dtype} {tuple(x.shape)}")


@functools.lru_cache(maxsize=64)
def _device_tables(device: torch.device, kind: str, height: int, width: int, magnitude: int = 0,
                   num_bins: int = 31) -> tuple[torch.Tensor, ...]:
    """The constant tables the samplers index, built once per device and image size: copying
    them to an accelerator waits for it (a synchronisation), so it happens once, not per batch.
    ``"ra"``: bin ``magnitude``'s magnitudes and the signed flags; ``"mc"``: every bin's;
    ``"aa"``: AutoAugment's magnitudes (Invert's 0 appended), signed flags, and the policy's
    ops, probabilities and bins (-1: none). Never modified in place."""
    signed = torch.tensor([name in SIGNED for name in _INDEX])
    if kind == "ra":
        tables: tuple[torch.Tensor, ...] = (op_magnitudes(magnitude, num_bins, height, width), signed[:len(OPS)])
    elif kind == "mc":
        bins = torch.stack([op_magnitudes(b, num_bins, height, width) for b in range(num_bins)])
        tables = (bins, signed[:len(OPS)])
    else:
        bins = torch.stack([op_magnitudes(b, AA_BINS, height, width) for b in range(AA_BINS)])
        tables = (F.pad(bins, (0, 1)), signed,  # Invert: no magnitude
                  torch.tensor([[_INDEX[name] for name, _, _ in sub] for sub in CIFAR10_POLICY]),
                  torch.tensor([[p for _, p, _ in sub] for sub in CIFAR10_POLICY]),
                  torch.tensor([[-1 if b is None else b for _, _, b in sub] for sub in CIFAR10_POLICY]))
    return tuple(t.to(device) for t in tables)


def rand_augment(x: torch.Tensor, gen: torch.Generator, num_ops: int = 2, magnitude: int = 10,
                 num_bins: int = 31, dispatch: str = "auto") -> torch.Tensor:
    """RandAugment drawn per sample: for each of ``num_ops`` slots every image draws one of the
    14 ops uniformly (and a sign, p=1/2, for the signed ones) at bin ``magnitude`` of
    ``num_bins``.

    x: uint8 (B, C, H, W) on any device (C = 1 or 3); returns uint8 of the same shape/device.
    ``dispatch``: :func:`apply_ops`'s (the same images either way).
    """
    _check_images(x)
    table, signed = _device_tables(x.device, "ra", x.shape[2], x.shape[3], magnitude, num_bins)
    ops, negate = draw_ops(x.shape[0], gen, num_ops)
    ops, negate = ops.to(x.device), negate.to(x.device)
    for slot in range(num_ops):
        op = ops[slot]
        sign = torch.where(negate[slot] & signed[op], -1.0, 1.0).double()
        x = apply_ops(x, op, table[op] * sign, dispatch)
    return x


def rand_augment_mc(x: torch.Tensor, gen: torch.Generator, num_ops: int = 2, max_level: int = 5,
                    prob: float = 0.5, num_bins: int = 31, dispatch: str = "auto") -> torch.Tensor:
    """FixMatch-style RandAugment (``RandAugmentMC``, as DISC's ``RandAugmentwogeo(n=2, m=5)``):
    for each of ``num_ops`` slots every image draws an op, a level v uniform in 1 .. max_level - 1
    (``np.random.randint(1, m)``) and applies the op with probability ``prob`` at v / 10 of the
    op's range. The ops and their ranges are torchvision's 14 (bin round(30 v / 10) of 31:
    3, 6, 9, 12 for m = 5); the FixMatch pool has Invert, SolarizeAdd and a Cutout op instead of
    Identity and other ranges, a documented approximation. uint8 in, uint8 out; ``dispatch``:
    :func:`apply_ops`'s."""
    _check_images(x)
    tables, signed = _device_tables(x.device, "mc", x.shape[2], x.shape[3], num_bins=num_bins)
    ops, negate = draw_ops(x.shape[0], gen, num_ops)
    levels = torch.randint(1, max_level, (num_ops, x.shape[0]), generator=gen, device=gen.device)
    apply = torch.rand((num_ops, x.shape[0]), generator=gen, device=gen.device) < prob
    ops, negate, levels, apply = (t.to(x.device) for t in (ops, negate, levels, apply))
    bins = torch.round((num_bins - 1) * levels.double() / 10).long()
    identity = torch.full_like(ops[0], _INDEX["Identity"])
    for slot in range(num_ops):
        op = torch.where(apply[slot], ops[slot], identity)
        sign = torch.where(negate[slot] & signed[op], -1.0, 1.0).double()
        x = apply_ops(x, op, tables[bins[slot], op] * sign, dispatch)
    return x


def cutout_abs(x: torch.Tensor, gen: torch.Generator, size: int | torch.Tensor,
               fill: int | tuple[int, ...] = 127) -> torch.Tensor:
    """FixMatch's ``CutoutAbs`` on uint8 batches: a corner at (uniform(0, w) - size / 2, ...)
    clipped at 0, the rectangle to corner + size clipped at the border, both ends included (PIL's
    ``ImageDraw.rectangle``), filled grey (one value, or one per channel). ``size``: one side for
    the batch, or a float tensor of one side per image."""
    b, c, h, w = x.shape
    u = torch.rand((2, b), generator=gen, device=gen.device).to(x.device, torch.float64)
    if isinstance(size, torch.Tensor):
        size = size.to(x.device, torch.float64)
    x0 = (u[0] * w - size / 2).clamp(min=0).floor().long()
    y0 = (u[1] * h - size / 2).clamp(min=0).floor().long()
    if isinstance(size, torch.Tensor):  # PIL draws to the float corner + size: its integer part
        x1, y1 = (x0 + size).floor().long().clamp(max=w), (y0 + size).floor().long().clamp(max=h)
    else:
        x1, y1 = (x0 + size).clamp(max=w), (y0 + size).clamp(max=h)
    cols, rows = torch.arange(w, device=x.device)[None], torch.arange(h, device=x.device)[None]
    in_x = (cols >= x0[:, None]) & (cols <= x1[:, None])
    in_y = (rows >= y0[:, None]) & (rows <= y1[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    value = torch.tensor(fill, dtype=x.dtype, device=x.device)
    if value.dim() == 1:  # one value per channel
        value = (value if len(value) == c else value.float().mean().round().to(x.dtype).expand(c)).view(1, c, 1, 1)
    return torch.where(box, value, x)


PROMIX_FILL = (125, 123, 114)  # randaug.py Cutout: color = (125, 123, 114)
PROMIX_CUTOUT = 0.5  # randaug.py RandomAugment: Cutout(img, uniform(0, 0.5) * width), always


def promix_augment(x: torch.Tensor, gen: torch.Generator, num_ops: int = 3, dispatch: str = "auto") -> torch.Tensor:
    """ProMix's ``RandomAugment(3, 5)`` (utils/randaug.py:138-172, whose magnitude argument is
    unused): ``num_ops`` ops drawn per image with replacement, each at a value uniform over the
    op's whole range, always applied, then a grey Cutout of side uniform(0, 0.5) x width. Here
    the ops and ranges are torchvision's 14 and the value one of the bins 3, 6, .., 30 of 31
    (:func:`rand_augment_mc` with levels 1..10, probability 1) with a random sign: a named
    approximation of the official op list and its continuous values. uint8 in, uint8 out;
    ``dispatch``: :func:`apply_ops`'s."""
    x = rand_augment_mc(x, gen, num_ops=num_ops, max_level=11, prob=1.0, dispatch=dispatch)
    side = torch.rand(x.shape[0], generator=gen, device=gen.device) * PROMIX_CUTOUT * x.shape[-1]
    return cutout_abs(x, gen, side, PROMIX_FILL)


# torchvision's AutoAugmentPolicy.CIFAR10 (transforms/autoaugment.py, AutoAugment._get_policies):
# the 25 sub-policies of Cubuk et al. 2019 found on reduced CIFAR-10, each two (op, probability,
# magnitude bin of 10); the CIFAR10Policy UNICON's dataloader_cifar.py imports has the same list
# (it fills warps with grey and shears bicubically: torchvision's zero fill and nearest are used here)
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
AA_BINS = 10  # AutoAugment's magnitude bins (torchvision: _augmentation_space(10, ...))


def draw_auto_augment(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample draws of AutoAugment, torchvision's ``get_params`` for every image: the
    sub-policy (long, (batch,)), the two uniform draws compared with the ops' probabilities
    (float, (2, batch)) and the two sign bits (long, (2, batch); 0 negates a signed op), on
    ``gen.device``."""
    policy = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=gen, device=gen.device)
    probs = torch.rand((2, batch), generator=gen, device=gen.device)
    signs = torch.randint(0, 2, (2, batch), generator=gen, device=gen.device)
    return policy, probs, signs


def auto_augment(x: torch.Tensor, gen: torch.Generator, dispatch: str = "auto") -> torch.Tensor:
    """AutoAugment with the CIFAR-10 policy, drawn per sample: torchvision's
    ``AutoAugment(AutoAugmentPolicy.CIFAR10)`` (nearest interpolation, fill 0) with its
    sub-policy, probabilities and signs drawn for each image rather than once per call, and
    applied as :func:`apply_ops` does (``dispatch``). UNICON's strong view (dataloader_cifar.py:
    crop + flip + ``CIFAR10Policy()``). uint8 (B, C, H, W) in, uint8 out."""
    _check_images(x)
    table, signed, ops, prob, bins = _device_tables(x.device, "aa", x.shape[2], x.shape[3])
    policy, draws, signs = (t.to(x.device) for t in draw_auto_augment(x.shape[0], gen))
    identity = torch.full_like(policy, _INDEX["Identity"])
    for slot in range(2):
        op = torch.where(draws[slot] <= prob[policy, slot], ops[policy, slot], identity)
        b = bins[policy, slot]
        mag = torch.where(b >= 0, table[b.clamp(min=0), op], 0.0)
        sign = torch.where(signed[op] & (signs[slot] == 0), -1.0, 1.0).double()
        x = apply_ops(x, op, mag * sign, dispatch)
    return x


def cutout(x: torch.Tensor, gen: torch.Generator, length: int | None = None) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square (default half the side) around a centre drawn per
    sample anywhere in the image, clipped at the borders (``CutoutDefault``); applied to
    normalised images, so the square takes the mean colour."""
    b, _, h, w = x.shape
    half = (length if length is not None else h // 2) // 2
    cy = torch.randint(0, h, (b,), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (b,), generator=gen, device=gen.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_y = (rows >= (cy[:, None] - half)) & (rows < (cy[:, None] + half))
    in_x = (cols >= (cx[:, None] - half)) & (cols < (cx[:, None] + half))
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)
