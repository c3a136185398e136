"""On-disk images: decoded by worker processes that live for the run, never in the training process.

Why this shape (measured on a Clothing1M-layout tree, see README "On-disk data"): a JPEG decode
plus resize and crop costs 4-5 ms of a core, so a step must never wait on one. Three rules:

- **Workers for the run.** A run's :class:`DiskPool` owns two DataLoaders whose workers persist
  (``persistent_workers``) across passes: the *main lane* serves the passes one after another
  (each training phase, each evaluation of every test set, each whole-data pass of a method),
  the *side lane* serves the method's side streams (DivideMix's unlabeled batches) while a
  training pass runs on the main lane, as the official code reads its labeled and unlabeled
  batches through two DataLoaders. A pass tells its lane what to make by setting the lane's
  plan (keys of the samples, batch by batch) before iterating; the workers hold every split's
  file list, so no pass starts new processes.
- **Ahead of use.** Every batch a step will take is known before the step: a pass's order and
  a stream's (:mod:`methods.streams`) are drawn from generators of their own, so the workers
  decode ``prefetch`` batches each ahead, into pinned memory on CUDA.
- **The same draws wherever decoded.** A sample's augmentation draws come from (the pass's or
  batch's seed, its dataset index), so they depend neither on the number of workers nor on
  which worker decodes it; a resumed run draws what the uninterrupted one drew.

Decoding (``--decode``): ``cpu`` decodes and augments in the workers with PIL and torchvision
transforms (:func:`file_transforms`). ``gpu`` has the workers read the file's bytes and draw the
crop and flip parameters exactly as those transforms would (the same calls on the same
generator state), then decodes the batch with ``torchvision.io.decode_jpeg`` on the device
(nvJPEG on CUDA) and resizes, pads, crops and flips there; each view's ops
(:mod:`bench.common.views`: RandAugment, AutoAugment, ...) then run batched on the device, an op
meant before the crop after it.
Files that are not JPEG are decoded by the workers and finished on the device the same way.
"""
from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from bench.common.views import get_view, view_names
from bench.training.data import Batch, ViewMaker, epoch_generator

PAD = 4  # the CIFAR-style padding of a crop at the native size (no resize)
# the geometry a worker draws for one view of one sample under --decode gpu, as int64 fields
GEOMETRY = ("height", "width", "center", "pad", "top", "left", "flip")
Key = tuple[str, int, int, tuple[str, ...]]  # (split, dataset index, seed, views)


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """The (height, width) torchvision's ``Resize(short)`` gives an image of that size (its
    ``_compute_resized_output_size`` with one size and no ``max_size``)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def file_transforms(size: int, resize: int | None, augment: str, policy: str = "shared") -> dict[str, Callable]:
    """PIL -> uint8 tensor transforms per view for on-disk images.

    ``resize`` (e.g. 256 for 224-px crops, the usual ImageNet-style protocol of DivideMix's and
    IDO's Clothing1M/WebVision loaders) scales the shorter side first; the plain view then takes
    the centre crop, the augmented views a random crop (padding 4 when there is no resize, the
    CIFAR-style crop of the in-memory path). Each registered view (:mod:`bench.common.views`) starts
    from its base augmentation (the view ``policy`` as in memory), with the PIL forms of its ops
    where it has them (``strong``: torchvision's RandAugment(2, 10), the same policy
    :mod:`bench.common.augment` applies batched on the device); its other ops run on the device.
    """
    from torchvision import transforms as T

    head = [T.Resize(resize), T.CenterCrop(size)] if resize else [T.Resize(size), T.CenterCrop(size)]
    crop = [T.Resize(resize)] if resize else [T.Resize(size), T.CenterCrop(size)]
    crop.append(T.RandomCrop(size, padding=None if resize else PAD))

    def chain(view: str) -> Callable:
        spec = get_view(view)
        aug = spec.base_augment(augment, policy)
        steps = [spec.before_pil()] if spec.before_pil is not None else []  # e.g. GJS's RandAugment(1, 3)
        steps += list(crop) if "crop" in aug else list(head)
        if "flip" in aug:
            steps.append(T.RandomHorizontalFlip())
        if spec.after_pil is not None:  # e.g. strong's RandAugment(2, 10); other ops: on the device
            steps.append(spec.after_pil())
        return T.Compose([*steps, T.PILToTensor()])

    return {view: chain(view) for view in view_names()}


def draw_geometry(height: int, width: int, size: int, resize: int | None, aug: str) -> list[int]:
    """The geometry :func:`file_transforms` draws for one view of an image of (height, width), with
    the same calls on the torch generator in the same order (``RandomCrop.get_params``, then
    ``RandomHorizontalFlip``): resize to (h, w), centre-crop to ``size`` or not, pad, crop at
    (top, left), flip. Fields in :data:`GEOMETRY` order."""
    crop = "crop" in aug
    h, w = resized_size(height, width, resize or size)
    center = int(not (crop and resize))  # Resize(size) + CenterCrop(size) before a padded crop, or the head
    pad = PAD if crop and not resize else 0
    top = left = 0
    if crop:
        ch, cw = (size + 2 * pad, size + 2 * pad) if center else (h, w)
        if (ch, cw) != (size, size):
            top = int(torch.randint(0, ch - size + 1, size=(1,)).item())
            left = int(torch.randint(0, cw - size + 1, size=(1,)).item())
    flip = int("flip" in aug and bool(torch.rand(1) < 0.5))
    return [h, w, center, pad, top, left, flip]


def place(image: torch.Tensor, geometry: Sequence[int], size: int) -> torch.Tensor:
    """One uint8 image (C, H, W) on any device through its drawn geometry: the resize (bilinear
    with antialiasing, torchvision's tensor Resize, its nearest to PIL's), centre crop, padding,
    crop and flip that :func:`file_transforms` applies in PIL."""
    from torchvision.transforms import functional as TF

    h, w, center, pad, top, left, flip = (int(v) for v in geometry)
    if tuple(image.shape[-2:]) != (h, w):
        x = TF.resize(image.float()[None], [h, w], antialias=True)[0]
        image = x.round_().clamp_(0, 255).to(torch.uint8)
    if center:
        image = TF.center_crop(image, [size, size])
    if pad:
        image = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    image = image[:, top:top + size, left:left + size]
    return image.flip(-1) if flip else image


class FileViews(TorchDataset):
    """Image files of every split of a run, read by the workers of a :class:`DiskPool`.

    An item is asked for by key (split, dataset index, seed, views). Under ``decode="cpu"`` it is
    decoded and augmented here (``transforms`` maps each view to a PIL -> uint8 tensor callable);
    under ``"gpu"`` the file's bytes (a JPEG, decoded later on the device) or, for other formats,
    its decoded pixels come back with each view's :func:`draw_geometry`. A file that fails to
    read or decode gives ``ok = False``; the loader drops it from its batch and counts it, so one
    damaged JPEG in a million never ends a run."""

    def __init__(self, files: dict[str, Sequence[str]], transforms: dict[str, Callable], size: int,
                 resize: int | None = None, augment: str = "crop-flip", policy: str = "shared",
                 decode: str = "cpu") -> None:
        self.files, self.transforms, self.size = files, transforms, size
        self.resize, self.augment, self.policy, self.decode = resize, augment, policy, decode
        # each view's base augmentation, fixed here: the workers need no view registry
        self.bases = {view: get_view(view).base_augment(augment, policy) for view in view_names()}

    def __len__(self) -> int:
        return sum(len(f) for f in self.files.values())

    def __getitem__(self, key: Key) -> dict:
        from PIL import Image

        split, i, seed, views = key
        item: dict = {"index": i, "ok": True}
        try:
            # under --decode gpu the file is read once: the bytes go to the device, PIL reads the header
            source = io.BytesIO(_read(self.files[split][i])) if self.decode == "gpu" else self.files[split][i]
            # each sample's draws come from (seed, dataset index): not from the worker
            with Image.open(source) as im, torch.random.fork_rng(devices=[]):
                torch.manual_seed((seed + i * 1_000_003) % 2**63)
                if self.decode == "gpu":
                    item["data"] = self._payload(im, source)
                    for view in views:
                        item[view] = torch.tensor(draw_geometry(im.height, im.width, self.size, self.resize,
                                                                self.bases[view]))
                else:
                    im = im.convert("RGB")
                    for view in views:
                        item[view] = self.transforms[view](im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # PIL's decode errors
            item = {"index": i, "ok": False}
            if self.decode == "gpu":
                item["data"] = torch.zeros(0, dtype=torch.uint8)
            for view in views:
                item[view] = (torch.zeros(len(GEOMETRY), dtype=torch.int64) if self.decode == "gpu"
                              else torch.zeros(3, self.size, self.size, dtype=torch.uint8))
        return item

    @staticmethod
    def _payload(im: Any, source: io.BytesIO) -> torch.Tensor:
        """A JPEG's bytes (1-D uint8), or the RGB pixels (C, H, W) decoded here of another format
        or of a JPEG in another colour space (CMYK, YCCK: PIL converts them, the device decoder
        may not)."""
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            return torch.frombuffer(bytearray(source.getbuffer()), dtype=torch.uint8)
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def collate(items: list[dict]) -> dict:
    """Stack an item list; ``data`` (bytes or pixels of differing sizes) stays a list."""
    out: dict = {"index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
                 "ok": torch.tensor([it["ok"] for it in items], dtype=torch.bool)}
    for k in items[0]:
        if k in ("index", "ok"):
            continue
        out[k] = [it[k] for it in items] if k == "data" else torch.stack([it[k] for it in items])
    return out


class _Plan:
    """A DataLoader's batch sampler whose batches a pass sets before iterating (the loader and
    its persistent workers stay; ``iter(loader)`` reads the plan anew)."""

    def __init__(self) -> None:
        self.source: Iterable[list[Key]] = ()

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.source)  # the loader may ask twice when it starts: a generator stays one


class Lane:
    """One DataLoader over the pool's :class:`FileViews` with workers for the run."""

    def __init__(self, dataset: FileViews, workers: int, prefetch: int, pin: bool) -> None:
        self.plan = _Plan()
        kwargs: dict[str, Any] = dict(batch_sampler=self.plan, num_workers=workers, pin_memory=pin,
                                      collate_fn=collate)
        if workers:
            kwargs.update(prefetch_factor=prefetch, persistent_workers=True)
        self.loader = DataLoader(dataset, **kwargs)
        self.owner: Any = None  # what the batches in flight belong to
        self.busy = False

    def run(self, owner: Any, batches: Iterable[list[Key]]) -> Iterator[dict]:
        """Start making ``batches`` (a pass still in flight is drained first, by the loader)."""
        self.plan.source = batches
        self.owner = owner
        return iter(self.loader)


class DiskPool:
    """The workers of a run's on-disk data: every split's files, two lanes made at first use.

    ``workers`` per lane (0: decode in this process, no prefetch); ``prefetch`` batches per
    worker made ahead; ``pin`` pinned host memory for the copies to the device."""

    def __init__(self, transforms: dict[str, Callable], size: int, resize: int | None, augment: str, policy: str,
                 device: torch.device, workers: int, prefetch: int = 2, pin: bool | None = None,
                 decode: str = "cpu") -> None:
        self.files: dict[str, list[str]] = {}
        self.dataset = FileViews(self.files, transforms, size, resize, augment, policy, decode)
        self.device, self.workers, self.prefetch, self.decode = device, workers, prefetch, decode
        self.pin = device.type == "cuda" if pin is None else pin
        self._lanes: dict[str, Lane] = {}

    def add(self, split: str, files: Sequence[str]) -> None:
        if self._lanes:  # the workers hold the file lists they were started with
            raise RuntimeError(f"split {split!r} added after the workers started")
        self.files[split] = [str(f) for f in files]

    def lane(self, name: str) -> Lane:
        if name not in self._lanes:
            self._lanes[name] = Lane(self.dataset, self.workers, self.prefetch, self.pin)
        return self._lanes[name]

    def close(self) -> None:
        """End the workers (they end with the process too)."""
        for lane in self._lanes.values():
            it = getattr(lane.loader, "_iterator", None)
            if it is not None:
                it._shutdown_workers()
                lane.loader._iterator = None


class _Stream:
    """A side stream's raw batches through the side lane, with each batch's seed: keys made
    ahead by the lane's sampler, collected in order. The first batch after the stream takes the
    lane is split among the workers (nothing is decoded ahead of it: one worker alone would make
    the step wait for a whole batch). If another stream takes the lane, what this one has in
    flight is collected into its buffer, and its plan resumes where it stopped when it takes the
    lane back."""

    def __init__(self, loader: DiskLoader, plan: Iterator[tuple[torch.Tensor, int]], views: tuple[str, ...]) -> None:
        self.loader, self.plan, self.views = loader, plan, views
        self.lane = loader.pool.lane("side")
        self.buffer: deque[dict] = deque()
        self.seeds: deque[tuple[int, int]] = deque()  # (seed, parts) of the batches planned, not yet taken
        self.cut = False
        self.planned = False  # every batch of the plan handed to the workers
        self._it: Iterator[dict] | None = None

    def begin(self) -> None:
        """Take the side lane: what another stream has in flight goes to its buffer."""
        if isinstance(self.lane.owner, _Stream) and self.lane.owner is not self:
            self.lane.owner.pause()
        self.cut = False
        self._it = self.lane.run(self, self._keys())

    def idle_lane(self) -> bool:
        """Whether the side lane has nothing left to plan (no stream, or one whose plan ended)."""
        owner = self.lane.owner
        return owner is None or (isinstance(owner, _Stream) and owner.planned)

    def _keys(self) -> Iterator[list[Key]]:
        first = True
        while not self.cut:  # checked before each draw: a cut stream loses no batch of its plan
            step = next(self.plan, None)
            if step is None:
                self.planned = True
                return
            idx, seed = step
            keys = [(self.loader.split, i, seed, self.views) for i in idx.tolist()]
            parts = max(1, min(self.loader.pool.workers, len(keys))) if first else 1
            first = False
            self.seeds.append((seed, parts))
            size = -(-len(keys) // parts)
            yield from (keys[s:s + size] for s in range(0, len(keys), size)) if keys else [keys]

    def pause(self) -> None:
        """Stop planning; collect what is in flight."""
        self.cut = True
        if self._it is not None:
            self.buffer.extend(self._it)
            self._it = None

    def __iter__(self) -> Iterator[tuple[dict, int]]:
        return self

    def _raw(self) -> dict:
        if self.buffer:
            return self.buffer.popleft()
        if self._it is None:
            raise StopIteration
        return next(self._it)  # StopIteration when the plan has ended

    def __next__(self) -> tuple[dict, int]:
        if not self.buffer and self.lane.owner is not self:
            self.begin()
        first = self._raw()
        seed, parts = self.seeds.popleft()
        return (_merge([first, *(self._raw() for _ in range(parts - 1))]) if parts > 1 else first), seed


def _merge(raws: list[dict]) -> dict:
    """One collated batch from the parts of a split one, in order."""
    return {k: sum((r[k] for r in raws), []) if isinstance(raws[0][k], list) else torch.cat([r[k] for r in raws])
            for k in raws[0]}


class DiskLoader:
    """The in-memory loader's interface over image files of one split of a :class:`DiskPool`:
    batches come from the pool's workers in an order drawn from the epoch's generator (so a
    resumed run sees the same order), normalised on the device. ``skipped`` counts images that
    failed to decode."""

    def __init__(self, pool: DiskPool, split: str, files: Sequence[str], labels: np.ndarray, clean: np.ndarray | None,
                 views: ViewMaker, batch_size: int) -> None:
        self.pool, self.split, self.views, self.batch_size = pool, split, views, batch_size
        pool.add(split, files)
        self.device, self.size = pool.device, pool.dataset.size
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.clean = None if clean is None else torch.from_numpy(np.asarray(clean, dtype=np.int64)).to(self.device)
        self.skipped = 0

    @property
    def files(self) -> list[str]:
        return self.pool.files[self.split]

    def __len__(self) -> int:
        return len(self.files)

    # --- batches made on the device from what the workers sent -----------------------------------
    def finish(self, raw: dict, views: Sequence[str], gen: torch.Generator) -> Batch | None:
        """The batch on the device: failed files dropped (and counted), views made, normalised."""
        images = self._decoded(raw) if self.pool.decode == "gpu" else None
        ok = raw["ok"]
        if not bool(ok.all()):
            self.skipped += int((~ok).sum())
            if images is not None:
                images = [img for img, good in zip(images, ok.tolist(), strict=True) if good]
            raw = {k: v[ok] for k, v in raw.items() if k != "data"}
            if len(raw["index"]) == 0:
                return None
        index = raw["index"].to(self.device)
        out: Batch = {"index": index, "label": self.labels[index]}
        for view in views:
            if images is None:
                x = raw[view].to(self.device, non_blocking=True)
            else:
                x = self._placed(images, raw[view], view, gen)
            x = self.views.device_stage(view, x, gen, workers_did=images is None)
            out[view] = self.views.finish(view, self.views.normalise(x), gen)
        return out

    def _decoded(self, raw: dict) -> list[Any]:
        """The batch's images on the device: JPEG bytes decoded there in one batched call, other
        formats' pixels copied. A file the device cannot decode is marked failed in ``raw``."""
        from torchvision.io import ImageReadMode, decode_jpeg

        data, ok = raw["data"], raw["ok"]
        jpeg = [i for i, d in enumerate(data) if d.dim() == 1 and bool(ok[i])]
        images: list[Any] = [d.to(self.device, non_blocking=True) if d.dim() == 3 else None for d in data]
        try:
            decoded = decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=self.device) if jpeg else []
        except RuntimeError:  # one bad file fails the batched call: one by one, to find it
            decoded = [self._decode_one(data[i]) for i in jpeg]
        for i, img in zip(jpeg, decoded, strict=True):
            images[i] = img
            if img is None:
                ok[i] = False
        return images

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None

    def _placed(self, images: list[torch.Tensor], geometry: torch.Tensor, view: str,
                gen: torch.Generator) -> torch.Tensor:
        """A view's uint8 batch from the decoded images and the geometry the workers drew, then
        the view's op before its base augmentation (here after the crop: an approximation)."""
        x = torch.stack([place(img, g, self.size) for img, g in zip(images, geometry.tolist(), strict=True)])
        before = get_view(view).before
        return x if before is None else before(x, gen)

    def _seeded_gen(self, seed: int) -> torch.Generator:
        """The device-stage generator of a stream's batch, from the batch's own seed."""
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        return gen.manual_seed(seed % 2**63)

    # --- the trainer's interface ------------------------------------------------------------------
    def iterate(self, views: Sequence[str], gen: torch.Generator | None = None, shuffle: bool = True,
                indices: torch.Tensor | None = None, batch_size: int | None = None) -> Iterator[Batch]:
        """One pass over ``indices`` (default all) in batches, shuffled by ``gen``, on the main lane
        (a pass started inside another pass gets a loader of its own)."""
        idx = torch.arange(len(self)) if indices is None else indices.cpu()
        gen = gen if gen is not None else epoch_generator(0, 0, torch.device("cpu"))
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=gen, device=gen.device).cpu()]
        # the augmentation draws come from the epoch's generator too (per sample, see FileViews)
        seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
        views = tuple(views)
        keys = [(self.split, i, seed, views) for i in idx.tolist()]
        bs = batch_size or self.batch_size
        plan = [keys[s:s + bs] for s in range(0, len(keys), bs)]
        lane = self.pool.lane("main")
        nested = lane.busy
        if nested:
            batches: Iterable[dict] = DataLoader(self.pool.dataset, batch_sampler=plan, collate_fn=collate,
                                                 num_workers=self.pool.workers, pin_memory=self.pool.pin)
        else:
            batches, lane.busy = lane.run(self, plan), True
        try:
            for raw in batches:
                out = self.finish(raw, views, gen)
                if out is not None:
                    yield out
        finally:
            if not nested:
                lane.busy = False

    def prefetch(self, plan: Iterator[tuple[torch.Tensor, int]], views: tuple[str, ...],
                 start: bool = False) -> Iterator[Batch]:
        """A side stream's batches (:class:`methods.streams.BatchStream`), made ahead on the side
        lane, each with the device-stage draws of its own seed; failed decodes are dropped from
        their batch (an empty batch if all failed). ``start``: begin making them now if the side
        lane has nothing left to plan (a stream made at its phase's start: its first batch is
        then ready for the first step), else at the first ``next``."""
        stream = _Stream(self, ((idx.cpu(), seed) for idx, seed in plan), views)
        if start and stream.idle_lane():
            stream.begin()
        return self._finished(stream, views)

    def _finished(self, stream: _Stream, views: tuple[str, ...]) -> Iterator[Batch]:
        for raw, seed in stream:
            out = self.finish(raw, views, self._seeded_gen(seed))
            yield out if out is not None else self._empty(views)

    def batch(self, index: torch.Tensor, views: Sequence[str], gen: torch.Generator) -> Batch:
        """The samples with dataset indices ``index``, made by the workers now (``ctx.fetch``):
        split among the workers, gathered in order; failed decodes are dropped."""
        seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
        (raw, _), = _Stream(self, iter([(index.cpu(), seed)]), tuple(views))  # a first batch: split
        out = self.finish(raw, views, gen)
        return self._empty(views) if out is None else out

    def _empty(self, views: Sequence[str]) -> Batch:
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        out: Batch = {"index": empty, "label": empty}
        out.update({v: torch.zeros(0, 3, self.size, self.size, device=self.device) for v in views})
        return out
