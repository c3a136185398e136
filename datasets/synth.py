"""``python -m bench data synth``: photo-like JPEG trees in each real file data set's on-disk layout.

Why: streaming images from disk (list parsing, JPEG decoding in DataLoader workers, resize and
crop) costs time that in-memory data never shows, and the real trees (Clothing1M, WebVision,
Food-101N, Animal-10N, Tiny-ImageNet) are large, licensed and not on every machine. A tree
written here loads with the project's own loaders, so that path can be measured, and a run
tried, anywhere (a GPU machine too). Its accuracies say nothing about any method or real data.

What an image is made of. Each class has a pattern, drawn from (seed, class): a smooth colour
field (a base colour plus a few low-frequency cosine waves per channel), a few soft coloured
ellipses, one striped patch (a grating under a soft round window) and one hard-edged rotated
bar, each with its own colour, place, size and orientation. An image, drawn from (seed, split,
index), shows its class's pattern mirrored at random, shifted, scaled and rotated a little,
under three class-free clutter blobs, with contrast, brightness and colour-cast jitter; the
pattern is rendered at a small size (smooth, cheap) and upsampled bilinearly. Film-grain-like
texture is then added at full size: grey noise in four octaves (1/8, 1/4, 1/2 and full
resolution, about equal energy per octave as in photos) and colour noise in the two coarsest,
with a per-image strength. So JPEG sizes and decoding costs are those of photos (about 75 KB for
500 x 400 at quality 90), not of flat colours, and a small CNN learns the classes in a few epochs.

Splits and labels. Clean label of image ``i`` of a split: ``i % classes`` (balanced; every class
present). The test split and the layout's other labelled splits hold ``max(n // 10, classes)``
images. Layouts whose real labels are noisy (Clothing1M, WebVision, Food-101N, Animal-10N) write
given training labels with exactly ``round(noise_rate * n)`` of them (default rate: the real
data set's estimate, :data:`LAYOUTS`), chosen at random (seeded), flipped to a uniformly drawn
other class; the images show the clean class, and the clean labels go where the layout has a
place for them (Clothing1M's clean lists, Food-101N's verification flags). Test labels are
clean. Same arguments, same bytes, whatever ``--jobs`` (with the same numpy and Pillow builds:
their float and JPEG code may differ elsewhere): every random number comes from a stream of its
own keyed by the seed, the split and the image's index. Each file is written under a temporary
name and renamed; a rerun skips the images already there, and the list files come last.
``synth.json`` records the arguments: a rerun with other ones is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.common.cores import process_pool
from bench.common.errors import UsageError

# --- the class patterns (coordinates: y in [-1, 1] top to bottom, x in [-W/H, W/H]) ---
RENDER_SIDE = 128          # longer side, in pixels, at which the smooth pattern is rendered before upsampling
WAVES = 4                  # low-frequency cosines per channel in a class's colour field
WAVE_FREQ = (0.6, 2.6)     # their angular frequency, radians per unit of y
WAVE_AMP = 0.12            # their largest amplitude, on [0, 1] pixels
BLOBS = 3                  # soft ellipses per class
BLOB_RADIUS = (0.15, 0.45)  # their semi-axes
STRIPE_CYCLES = (2.0, 5.0)  # cycles per unit of the class's grating
STRIPE_RADIUS = (0.35, 0.6)  # radius of the soft window around the grating
BAR_SIZE = ((0.3, 0.8), (0.05, 0.15))  # half length and half width of the hard-edged bar
EDGE = 0.015               # width of the bar's edge (a sigmoid's scale), in units of y
CENTRE = 0.6               # pattern elements are centred within [-CENTRE, CENTRE] in each direction

# --- what varies from image to image ---
SHIFT = 0.25               # largest shift of the pattern, in units of y
SCALE = (0.75, 1.25)       # scale of the pattern
ROTATE = math.radians(25)  # largest rotation
CLUTTER = 3                # class-free soft blobs over the pattern
CONTRAST = (0.75, 1.25)    # contrast factor around the image's mean
BRIGHTNESS = 0.12          # brightness shift, uniform in [-BRIGHTNESS, BRIGHTNESS]
CAST = 0.08                # colour cast per channel, uniform in [-CAST, CAST]
GRAIN = 0.029              # std of each octave of grey texture, on [0, 1] pixels (sets the JPEG size)
CHROMA = 0.02              # std of each of the two coarse octaves of colour texture
GRAIN_JITTER = (0.7, 1.3)  # per-image factor on the texture's strength (file sizes vary like photos')

# --- streams of random numbers, keyed [seed, stream, ...] ---
CLASS_STREAM, IMAGE_STREAM, NOISE_STREAM = 1, 2, 3
SPLIT_CODES = {"train": 0, "test": 1, "val": 2, "imagenet": 3}

MIN_SIDE, MAX_SIDE = 8, 4096  # --size bounds
CHUNK = 32                 # images per task handed to a worker process
PROGRESS_EVERY_S = 10.0    # seconds between progress lines on standard error
MANIFEST = "synth.json"    # the arguments a tree was written with (a rerun must match them)
VERSION = 1                # of the generator, in the manifest: raise it when the same arguments give other bytes


@dataclass(frozen=True)
class SynthSpec:
    """What ``bench data synth`` writes (not how many processes write it)."""

    layout: str
    n: int
    width: int
    height: int
    classes: int
    seed: int = 0
    quality: int = 90
    noise_rate: float = 0.0


class Item(NamedTuple):
    """One image to write: its path under the tree, the stream it is drawn from, its clean class."""

    rel: str
    split: str
    index: int
    label: int


@dataclass
class Plan:
    """A layout's images and its list files (path under the tree -> text)."""

    items: list[Item]
    lists: dict[str, str]


@dataclass
class SynthReport:
    """What a write did: images written and found already there, seconds, bytes of all images."""

    written: int
    existed: int
    seconds: float
    total_bytes: int

    @property
    def images(self) -> int:
        return self.written + self.existed


# ---------------------------------------------------------------- image generation


@dataclass(frozen=True)
class ClassPattern:
    """The pattern of one class: every number an image of it starts from."""

    base: np.ndarray        # (3,) base colour
    wave_k: np.ndarray      # (3, WAVES, 2) angular frequencies (x, y)
    wave_phase: np.ndarray  # (3, WAVES)
    wave_amp: np.ndarray    # (3, WAVES)
    blobs: np.ndarray       # (BLOBS, 9): cx, cy, rx, ry, angle, alpha, r, g, b
    stripes: np.ndarray     # (11,): cx, cy, radius, cycles, angle, alpha, r1, g1, b1, r2, g2 (b2 = 1 - b1)
    bar: np.ndarray         # (9,): cx, cy, half length, half width, angle, alpha, r, g, b


@lru_cache(maxsize=4096)
def class_pattern(seed: int, label: int) -> ClassPattern:
    rng = np.random.default_rng([seed, CLASS_STREAM, label])
    u = rng.uniform
    blobs = np.array([[u(-CENTRE, CENTRE), u(-CENTRE, CENTRE), u(*BLOB_RADIUS), u(*BLOB_RADIUS), u(0, np.pi),
                       u(0.6, 0.9), u(), u(), u()] for _ in range(BLOBS)])
    stripes = np.array([u(-CENTRE, CENTRE), u(-CENTRE, CENTRE), u(*STRIPE_RADIUS), u(*STRIPE_CYCLES), u(0, np.pi),
                        u(0.5, 0.85), u(), u(), u(), u(), u()])
    bar = np.array([u(-CENTRE, CENTRE), u(-CENTRE, CENTRE), u(*BAR_SIZE[0]), u(*BAR_SIZE[1]), u(0, np.pi),
                    u(0.7, 0.95), u(), u(), u()])
    freq = u(*WAVE_FREQ, (3, WAVES))
    angle = u(0, 2 * np.pi, (3, WAVES))
    return ClassPattern(base=u(0.2, 0.8, 3), wave_k=np.stack([freq * np.cos(angle), freq * np.sin(angle)], -1),
                        wave_phase=u(0, 2 * np.pi, (3, WAVES)), wave_amp=u(0, WAVE_AMP, (3, WAVES)),
                        blobs=blobs, stripes=stripes, bar=bar)


def _frame(px: np.ndarray, py: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to (cx, cy), rotated by -angle (an element's own axes)."""
    dx, dy = px - cx, py - cy
    c, s = math.cos(angle), math.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _over(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Paint ``colour`` (3,) or (3, h, w) over ``img`` (3, h, w) with opacity ``mask`` (h, w), in place."""
    img *= 1 - mask
    img += mask * (colour if colour.ndim == 3 else colour[:, None, None])


def _soft_ellipse(px: np.ndarray, py: np.ndarray, e: np.ndarray) -> np.ndarray:
    dx, dy = _frame(px, py, e[0], e[1], e[4])
    return np.exp(-0.5 * ((dx / e[2]) ** 2 + (dy / e[3]) ** 2)) * e[5]


def render_pattern(pat: ClassPattern, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """The class pattern (3, h, w) at pattern coordinates ``px``, ``py`` (h, w)."""
    phase = pat.wave_k[..., 0, None, None] * px + pat.wave_k[..., 1, None, None] * py + pat.wave_phase[..., None, None]
    img = pat.base[:, None, None] + (pat.wave_amp[..., None, None] * np.cos(phase)).sum(1)
    for blob in pat.blobs:
        _over(img, _soft_ellipse(px, py, blob), blob[6:9])
    s = pat.stripes
    dx, _ = _frame(px, py, s[0], s[1], s[4])
    window = np.exp(-0.5 * ((px - s[0]) ** 2 + (py - s[1]) ** 2) / s[2] ** 2) * s[5]
    wave = 0.5 + 0.5 * np.cos(2 * np.pi * s[3] * dx)
    first, second = s[6:9], np.array([s[9], s[10], 1 - s[8]])
    _over(img, window, first[:, None, None] * wave + second[:, None, None] * (1 - wave))
    b = pat.bar
    dx, dy = _frame(px, py, b[0], b[1], b[4])
    inside = 1 / (1 + np.exp((np.abs(dx) - b[2]) / EDGE)) / (1 + np.exp((np.abs(dy) - b[3]) / EDGE))
    _over(img, inside * b[5], b[6:9])
    return img


def _coords(h: int, w: int, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.linspace(-1, 1, h)[:, None] * np.ones((1, w))
    x = np.linspace(-aspect, aspect, w)[None, :] * np.ones((h, 1))
    return x, y


def _upsample(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float plane (h, w) resized bilinearly to (height, width)."""
    from PIL import Image

    return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def _render_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, RENDER_SIDE / max(width, height))
    return max(2, round(height * scale)), max(2, round(width * scale))


def _scene(rng: np.random.Generator, pat: ClassPattern, width: int, height: int) -> np.ndarray:
    """The jittered, cluttered pattern of one image at render size (3, h, w), on [0, 1] pixels."""
    h, w = _render_size(width, height)
    aspect = width / height
    x, y = _coords(h, w, aspect)
    if rng.random() < 0.5:
        x = -x  # mirrored: a horizontal flip keeps an image in its class, as with photos
    tx, ty = rng.uniform(-SHIFT, SHIFT, 2)
    scale, angle = rng.uniform(*SCALE), rng.uniform(-ROTATE, ROTATE)
    px, py = _frame(x, y, tx, ty, angle)
    img = render_pattern(pat, px / scale, py / scale)
    for _ in range(CLUTTER):
        blob = np.array([rng.uniform(-aspect, aspect), rng.uniform(-1, 1), *rng.uniform(0.08, 0.3, 2),
                         rng.uniform(0, np.pi), rng.uniform(0.4, 0.8), *rng.uniform(0, 1, 3)])
        _over(img, _soft_ellipse(x, y, blob), blob[6:9])
    mean = img.mean()
    img = (img - mean) * rng.uniform(*CONTRAST) + mean + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    return img + rng.uniform(-CAST, CAST, 3)[:, None, None]


def _octaves(rng: np.random.Generator, width: int, height: int, levels: Sequence[int], std: float) -> np.ndarray:
    """Noise (height, width): a Gaussian plane at 1 / 2**level of the size for each level, summed
    coarse to fine, each sum upsampled to the next level's size (one full-size upsampling in all)."""
    out = None
    for level in sorted(levels, reverse=True):
        h, w = max(1, height >> level), max(1, width >> level)
        plane = rng.standard_normal((h, w), dtype=np.float32) * std
        out = plane if out is None else _upsample(out, w, h) + plane
    assert out is not None
    return out if out.shape == (height, width) else _upsample(out, width, height)


def make_image(seed: int, split: str, index: int, label: int, width: int, height: int) -> np.ndarray:
    """Image ``index`` of ``split`` (of class ``label``): uint8 (height, width, 3)."""
    rng = np.random.default_rng([seed, IMAGE_STREAM, SPLIT_CODES[split], index])
    scene = _scene(rng, class_pattern(seed, label), width, height)
    strength = rng.uniform(*GRAIN_JITTER)
    h, w = scene.shape[1:]
    for channel in scene:  # the colour texture is coarse: added before the one upsampling of the scene
        channel += _upsample(_octaves(rng, width, height, (3, 2), CHROMA * strength), w, h)
    img = np.stack([_upsample(c, width, height) for c in scene], -1)
    img += _octaves(rng, width, height, (3, 2, 1, 0), GRAIN * strength)[..., None]
    np.clip(img, 0, 1, out=img)
    img *= 255
    img += 0.5
    return img.astype(np.uint8)


# ---------------------------------------------------------------- writing


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` under a temporary name, then renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_items(root: str, spec: SynthSpec, items: Sequence[Item]) -> tuple[int, int, int]:
    """Write the images not there yet: (written, existed, bytes of all of them)."""
    written = existed = size = 0
    for item in items:
        path = Path(root) / item.rel
        if path.is_file():
            existed += 1
            size += path.stat().st_size
            continue
        data = encode_jpeg(make_image(spec.seed, item.split, item.index, item.label, spec.width, spec.height),
                           spec.quality)
        write_atomic(path, data)
        written += 1
        size += len(data)
    return written, existed, size


def _write_task(task: tuple[str, SynthSpec, list[Item]]) -> tuple[int, int, int]:
    return write_items(*task)


def _chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _tally(results: Iterator[tuple[int, int, int]], progress: Callable[[int], None]) -> tuple[int, int, int]:
    written = existed = size = 0
    for w, e, b in results:
        written, existed, size = written + w, existed + e, size + b
        progress(written + existed)
    return written, existed, size


def _run_items(root: Path, spec: SynthSpec, items: list[Item], jobs: int,
               progress: Callable[[int], None]) -> tuple[int, int, int]:
    """Write ``items`` in chunks, in this process (``jobs`` 1) or in a pool: (written, existed, bytes)."""
    tasks = ((str(root), spec, chunk) for chunk in _chunks(items, CHUNK))
    if jobs == 1:
        return _tally(map(_write_task, tasks), progress)
    with process_pool(jobs, preload=("datasets.synth",)) as pool:
        return _tally(pool.imap_unordered(_write_task, tasks), progress)


# ---------------------------------------------------------------- labels and layouts


def side_count(spec: SynthSpec) -> int:
    """Images of the test split and of each further labelled split: a tenth, at least one per class."""
    return max(spec.n // 10, spec.classes)


def clean_labels(count: int, classes: int) -> np.ndarray:
    return np.arange(count) % classes


def noisy_labels(clean: np.ndarray, rate: float, classes: int, seed: int) -> np.ndarray:
    """``clean`` with exactly round(rate * len) labels, chosen at random, flipped to a random other class."""
    rng = np.random.default_rng([seed, NOISE_STREAM])
    flip = rng.permutation(len(clean))[:round(rate * len(clean))]
    noisy = clean.copy()
    noisy[flip] = (clean[flip] + rng.integers(1, classes, len(flip))) % classes
    return noisy


def _lines(rows: Sequence[str], header: str | None = None) -> str:
    return "".join(f"{r}\n" for r in ([header] if header else []) + list(rows))


def _split(split: str, count: int, classes: int, path: Callable[[int, int], str]) -> list[Item]:
    """Items ``0..count-1`` of a split, image ``i`` of clean class ``i % classes`` at ``path(i, label)``."""
    return [Item(path(i, int(y)), split, i, int(y)) for i, y in enumerate(clean_labels(count, classes))]


CLOTHING1M_NAMES = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
                    "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear")


def plan_clothing1m(spec: SynthSpec) -> Plan:
    """The release's lists at the root, images under images/<d>/<dd>/. clean_train_key_list.txt
    holds a tenth of the noisy training keys with their clean labels (the real sets overlap too);
    the clean val and test keys are images of their own."""
    m, k = side_count(spec), spec.classes
    key = lambda prefix: lambda i, _y: f"images/{i % 10}/{i // 10 % 100:02d}/{prefix}{i:07d}.jpg"  # noqa: E731
    train = _split("train", spec.n, k, key("n"))
    val, test = _split("val", m, k, key("v")), _split("test", m, k, key("t"))
    noisy = noisy_labels(np.array([it.label for it in train]), spec.noise_rate, k, spec.seed)
    clean_kv = [f"{it.rel} {it.label}" for it in train[:m] + val + test]
    return Plan(train + val + test, {
        "noisy_label_kv.txt": _lines([f"{it.rel} {y}" for it, y in zip(train, noisy, strict=True)]),
        "clean_label_kv.txt": _lines(clean_kv),
        "noisy_train_key_list.txt": _lines([it.rel for it in train]),
        "clean_train_key_list.txt": _lines([it.rel for it in train[:m]]),
        "clean_val_key_list.txt": _lines([it.rel for it in val]),
        "clean_test_key_list.txt": _lines([it.rel for it in test]),
        "category_names_eng.txt": _lines(CLOTHING1M_NAMES)})


def plan_webvision(spec: SynthSpec) -> Plan:
    """google/q<label>/ (the query folder is the given label's), info/ lists, val_images_256/ and
    DivideMix's imagenet/val/<class>/."""
    m, k = side_count(spec), spec.classes
    clean = clean_labels(spec.n, k)
    noisy = noisy_labels(clean, spec.noise_rate, k, spec.seed)
    train = _split("train", spec.n, k, lambda i, _y: f"google/q{noisy[i]:04d}/{i:08d}.jpg")
    val = _split("test", m, k, lambda i, _y: f"val_images_256/val{i:06d}.jpg")
    imagenet = _split("imagenet", m, k, lambda i, y: f"imagenet/val/{y}/ILSVRC2012_val_{i:08d}.JPEG")
    return Plan(train + val + imagenet, {
        "info/train_filelist_google.txt": _lines([f"{it.rel} {y}" for it, y in zip(train, noisy, strict=True)]),
        "info/val_filelist.txt": _lines([f"{Path(it.rel).name} {it.label}" for it in val])})


def plan_food101n(spec: SynthSpec) -> Plan:
    """Food-101N_release/ (the folder of a training image is its given class) with verification
    flags (1: the given label is right) for the first tenth of the training keys (verified_train.tsv)
    and a tenth as many of the last ones (verified_val.tsv); Food-101's test split in food-101/."""
    m, k = side_count(spec), spec.classes
    names = [f"food_{c:03d}" for c in range(k)]
    clean = clean_labels(spec.n, k)
    noisy = noisy_labels(clean, spec.noise_rate, k, spec.seed)
    digest = lambda i: hashlib.md5(f"{spec.seed}:{i}".encode()).hexdigest()  # noqa: E731
    train = _split("train", spec.n, k, lambda i, _y: f"Food-101N_release/images/{names[noisy[i]]}/{digest(i)}.jpg")
    test = _split("test", m, k, lambda i, y: f"food-101/images/{names[y]}/{1_000_000 + i}.jpg")
    keys = [it.rel.split("/", 2)[2] for it in train]
    flags = [f"{key}\t{int(y == c)}" for key, y, c in zip(keys, noisy, clean, strict=True)]
    header = "class_name/key\tverification_label"
    return Plan(train + test, {
        "Food-101N_release/meta/classes.txt": _lines(names, "class_name"),
        "Food-101N_release/meta/imagelist.tsv": _lines(keys, "class_name/key"),
        "Food-101N_release/meta/verified_train.tsv": _lines(flags[:m], header),
        "Food-101N_release/meta/verified_val.tsv": _lines(flags[-max(1, m // 10):], header),
        "food-101/meta/classes.txt": _lines(names),
        "food-101/meta/test.txt": _lines([it.rel.split("/", 2)[2].removesuffix(".jpg") for it in test])})


def plan_animal10n(spec: SynthSpec) -> Plan:
    """training/<given label>_<id>.jpg and testing/<label>_<id>.jpg."""
    m, k = side_count(spec), spec.classes
    width = max(5, len(str(spec.n - 1)))
    noisy = noisy_labels(clean_labels(spec.n, k), spec.noise_rate, k, spec.seed)
    train = _split("train", spec.n, k, lambda i, _y: f"training/{noisy[i]}_{i:0{width}d}.jpg")
    test = _split("test", m, k, lambda i, y: f"testing/{y}_{i:0{width}d}.jpg")
    return Plan(train + test, {})


def plan_tiny_imagenet(spec: SynthSpec) -> Plan:
    """wnids.txt, words.txt, train/<wnid>/images/<wnid>_<j>.JPEG with <wnid>_boxes.txt, val/images/
    with val/val_annotations.txt (whole-image boxes). Clean labels: synthetic noise applies at run time."""
    m, k = side_count(spec), spec.classes
    wnids = [f"n{c:08d}" for c in range(k)]
    train = _split("train", spec.n, k, lambda i, y: f"train/{wnids[y]}/images/{wnids[y]}_{i // k}.JPEG")
    val = _split("test", m, k, lambda i, _y: f"val/images/val_{i}.JPEG")
    box = f"0\t0\t{spec.width - 1}\t{spec.height - 1}"
    lists = {"wnids.txt": _lines(wnids),
             "words.txt": _lines([f"{w}\tsynthetic class {c}" for c, w in enumerate(wnids)]),
             "val/val_annotations.txt": _lines([f"{Path(it.rel).name}\t{wnids[it.label]}\t{box}" for it in val])}
    for c, w in enumerate(wnids):
        lists[f"train/{w}/{w}_boxes.txt"] = _lines([f"{Path(it.rel).name}\t{box}" for it in train[c::k]])
    return Plan(train + val, lists)


def plan_folder(spec: SynthSpec) -> Plan:
    """train/<class>/<j>.jpg and test/<class>/<j>.jpg; clean labels (synthetic noise applies at run time)."""
    m, k = side_count(spec), spec.classes
    names = [f"class_{c:0{len(str(k - 1))}d}" for c in range(k)]
    train = _split("train", spec.n, k, lambda i, y: f"train/{names[y]}/{i // k:06d}.jpg")
    test = _split("test", m, k, lambda i, y: f"test/{names[y]}/{i // k:06d}.jpg")
    return Plan(train + test, {})


@dataclass(frozen=True)
class Layout:
    plan: Callable[[SynthSpec], Plan]
    size: tuple[int, int]      # default (width, height): the real images' typical size
    classes: int               # the real data set's classes
    fixed_classes: bool        # the loader knows only the real count (no --classes)
    noise_rate: float          # default share of flipped training labels (0: clean labels)


LAYOUTS: dict[str, Layout] = {
    # noise rates: the real data sets' documented estimates (their modules' docstrings)
    "clothing1m": Layout(plan_clothing1m, (500, 400), 14, True, 0.38),
    "webvision": Layout(plan_webvision, (500, 400), 50, True, 0.20),
    "food101n": Layout(plan_food101n, (500, 400), 101, False, 0.20),
    "animal10n": Layout(plan_animal10n, (64, 64), 10, True, 0.08),
    "tiny-imagenet": Layout(plan_tiny_imagenet, (64, 64), 200, False, 0.0),
    "folder": Layout(plan_folder, (256, 256), 10, False, 0.0),
}


# ---------------------------------------------------------------- the command


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (width, height), each in [MIN_SIDE, MAX_SIDE]."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"--size {text}: expected WIDTHxHEIGHT in pixels, e.g. 500x400")
    width, height = int(parts[0]), int(parts[1])
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise UsageError(f"--size {text}: each side must be in [{MIN_SIDE}, {MAX_SIDE}]")
    return width, height


def make_spec(layout: str, n: int, size: str | None = None, classes: int | None = None, seed: int = 0,
              quality: int = 90, noise_rate: float | None = None) -> SynthSpec:
    """The validated spec of a command line; bad input is a one-line :class:`UsageError`."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout}: unknown; valid: {', '.join(LAYOUTS)}")
    lay = LAYOUTS[layout]
    if classes is not None and lay.fixed_classes and classes != lay.classes:
        raise UsageError(f"--classes {classes}: the {layout} loader knows exactly {lay.classes} classes; "
                         "leave --classes out")
    k = lay.classes if classes is None else classes
    if k < 2:
        raise UsageError(f"--classes {k}: at least 2")
    if n < k:
        raise UsageError(f"--n {n}: fewer training images than the {k} classes of {layout} (one per class at least)")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality {quality}: a JPEG quality in [1, 100]")
    rate = lay.noise_rate if noise_rate is None else noise_rate
    if not 0 <= rate < 1 or (rate > 0 and lay.noise_rate == 0):
        where = "in [0, 1)" if lay.noise_rate else f"0: {layout} ships clean labels (noise is applied at run time)"
        raise UsageError(f"--noise-rate {rate}: must be {where}")
    width, height = parse_size(size) if size else lay.size
    return SynthSpec(layout, n, width, height, k, seed, quality, rate)


def _claim(root: Path, spec: SynthSpec) -> None:
    """Record ``spec`` in the tree, or check that the tree there was written with it (a resume)."""
    manifest = root / MANIFEST
    mine = {**asdict(spec), "version": VERSION}
    if manifest.is_file():
        try:
            theirs = json.loads(manifest.read_text())
        except ValueError:
            theirs = None
        if theirs != mine:
            raise UsageError(f"{root} holds a synthetic tree written with other arguments ({manifest}); "
                             "rerun with the same ones to resume, or choose another --out")
        return
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"--out {root}: the folder is not empty and holds no {MANIFEST}; choose an empty or new one")
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(manifest, (json.dumps(mine, indent=1) + "\n").encode())


def write_tree(spec: SynthSpec, out: str | Path, jobs: int, log: Callable[[str], None] = print) -> SynthReport:
    """Write (or complete) the tree of ``spec`` under ``out`` with ``jobs`` processes."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: at least 1")
    plan = LAYOUTS[spec.layout].plan(spec)
    _claim(root, spec)
    for folder in sorted({os.path.dirname(rel) for rel in [*(it.rel for it in plan.items), *plan.lists]}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    started = last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            log(f"synth: {done:,}/{len(plan.items):,} images ({done / (now - started):.1f}/s)")

    try:
        written, existed, size = _run_items(root, spec, plan.items, jobs, progress)
        for rel, text in plan.lists.items():
            write_atomic(root / rel, text.encode())
    except OSError as exc:
        raise UsageError(f"writing under {root}: {exc.strerror or exc}"
                         + (f" ({exc.filename})" if exc.filename else "")) from None
    return SynthReport(written, existed, time.perf_counter() - started, size)


def describe(spec: SynthSpec, report: SynthReport, jobs: int, root: str | Path) -> str:
    """The closing line: what was written, how fast, how big."""
    speed = f"{report.written / report.seconds:.1f} images/s" if report.written else "nothing left to write"
    noise = f"; {spec.noise_rate:.0%} of training labels flipped" if spec.noise_rate else ""
    return (f"synth: {spec.layout} tree at {root}: {spec.n:,} training images of {spec.width}x{spec.height}, "
            f"{spec.classes} classes{noise}; {report.images:,} images in all ({report.written:,} written, "
            f"{report.existed:,} already there) in {report.seconds:.1f} s with {jobs} jobs: "
            f"{speed}; {report.total_bytes / 1e6:.1f} MB, mean "
            f"{report.total_bytes / max(report.images, 1) / 1e3:.1f} KB per JPEG")
