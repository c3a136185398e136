"""Side streams of batches a method draws besides the trainer's pass: DivideMix's, UNICON's and
PES's unlabeled batches, peer loss's peer batch.

Why a stream and not a fetch by index at each step: on image files a batch fetched inside the
step is decoded there, one image after another, in the training process, while the labeled
batches come from the loader's workers: the method would wait on one core and its epoch would
be the harness's doing, not the method's. The official code reads its unlabeled batches through
a second DataLoader with workers. So a stream knows its batches ahead of use: the index order
is drawn from a generator of its own (seeded from the run's method generator of the epoch and
the stream's name: a pure function of seed, epoch and name, so a resumed run draws the same),
and the trainer's ``ctx.prefetch`` has them decoded by workers ahead of the step (on-disk data)
or made when asked (in memory). Each batch also carries a seed of its own for its augmentation
draws, so what a batch holds does not depend on when it is made.

Orders (``order``):

- ``"partial"``: the official unlabeled loader of DivideMix (``shuffle=True``, no ``drop_last``;
  dataloader_cifar.py:185-189, dataloader_clothing1M.py:155-159, dataloader_webvision.py:157-162)
  whose training loop takes ``next()`` and starts a fresh shuffled pass when it is exhausted
  (Train_cifar.py:46-52): the ``len(pool) % size`` samples left at the end of a pass come as
  a partial batch.
- ``"drop"``: those samples are skipped and a fresh order drawn, so every batch is full:
  UNICON's loader (``drop_last=True``, UNICON dataloader_cifar.py:321-325) and PES's.
- ``"sample"``: each batch the first ``size`` of a fresh permutation of the pool: peer loss's
  peer batch (a fresh shuffle of the peer loader each step).

Either cycling order gives a pool smaller than ``size`` whole, in a fresh order, at every batch.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

Order = Literal["partial", "drop", "sample"]
ORDERS = ("partial", "drop", "sample")


def index_batches(pool: torch.Tensor, size: int, order: Order, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices of ``pool`` (on the generator's device) in ``order``."""
    n = len(pool)
    if order == "sample":
        while True:
            yield pool[torch.randperm(n, generator=gen, device=gen.device)[:size]]
    perm, pos = pool[:0], 0
    while True:
        used_up = pos >= len(perm) if order == "partial" else pos + size > len(perm)
        if used_up:
            perm, pos = pool[torch.randperm(n, generator=gen, device=gen.device)], 0
        yield perm[pos:pos + size]
        pos += size


def stream_generators(ctx: Any, name: str, device: torch.device) -> tuple[torch.Generator, np.random.Generator]:
    """The stream's own generators (order; augmentation seeds, on the host: no device sync):
    from the run's method generator of the epoch (its seed is a function of the run's seed and
    the epoch) and the stream's name."""
    base = ctx.generators().torch.initial_seed()
    words = np.random.SeedSequence([base % 2**63, zlib.crc32(name.encode())]).generate_state(2, np.uint64)
    order = torch.Generator(device=device if device.type == "cuda" else "cpu")
    order.manual_seed(int(words[0]) % 2**63)
    return order, np.random.default_rng(int(words[1]))


class BatchStream:
    """Batches of the pool ``pool`` with ``views``, ``size`` at a time, in ``order``; ``count``
    (when the caller knows it) is how many batches the phase takes, so nothing past it is made.

    ``next()`` returns a batch (``index`` plus one tensor per view) or None when the pool is
    empty. The loader's prefetcher gets the plan when the stream is made: on image files it
    starts decoding at once while the trainer runs the epoch's phases and the workers are free
    (so the phase's first step finds its batch ready), else at the first ``next()``."""

    def __init__(self, ctx: Any, name: str, pool: torch.Tensor, size: int, views: tuple[str, ...],
                 order: Order = "drop", count: int | None = None) -> None:
        if order not in ORDERS:
            raise ValueError(f"order {order!r}; valid: {', '.join(ORDERS)}")
        self.ctx, self.name, self.size, self.views, self.order, self.count = ctx, name, size, views, order, count
        prefetch = getattr(ctx, "prefetch", None)
        # where the index batches are drawn: the loader's choice (on-disk data: the host, where
        # the workers take them), else the run's device
        self.device = prefetch.device if prefetch is not None else torch.device(ctx.device)
        self.pool = pool.to(self.device)
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        if prefetch is not None and len(self.pool) and size >= 1:  # the loader may start making them now
            self._batches = prefetch(self._plan(), self.views)

    def __len__(self) -> int:
        return len(self.pool)

    def _plan(self) -> Iterator[tuple[torch.Tensor, int]]:
        """(indices, augmentation seed) of each batch, in order."""
        order_gen, seed_gen = stream_generators(self.ctx, self.name, self.device)
        batches = index_batches(self.pool, self.size, self.order, order_gen)
        made = 0
        while self.count is None or made < self.count:
            idx = next(batches)
            yield idx, int(seed_gen.integers(2**62))
            made += 1

    def next(self) -> dict[str, torch.Tensor] | None:
        if len(self.pool) == 0 or self.size < 1:
            return None
        if self._batches is None:
            prefetch = getattr(self.ctx, "prefetch", None)
            self._batches = prefetch(self._plan(), self.views) if prefetch is not None else self._fetched()
        batch = next(self._batches, None)
        if batch is None:
            raise RuntimeError(f"stream {self.name!r}: asked for more than its {self.count} batches")
        return batch

    def _fetched(self) -> Iterator[dict[str, torch.Tensor]]:
        """Without a prefetcher (a method built by hand, in tests): ``ctx.fetch`` when asked."""
        for idx, _seed in self._plan():
            yield {**self.ctx.fetch(idx, self.views), "index": idx}
