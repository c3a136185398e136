"""The CPU cores this process may use: the default number of loader workers, image-writing jobs
and generation threads (its affinity mask where the system has one, as under Slurm or taskset;
else every core); and a pool of worker processes that start clean."""
from __future__ import annotations

import os
from collections.abc import Sequence
from multiprocessing.pool import Pool


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def process_pool(jobs: int, preload: Sequence[str] = ()) -> Pool:
    """A pool of ``jobs`` worker processes that start clean: forked from a single-threaded server
    (``forkserver``) where the system has one, else spawned.

    A plain fork copies this process as it is: a lock another of its threads holds at that
    moment (an allocator's, a logging handler's) stays locked in the child for ever, and a
    Python signal handler installed here (``bench run`` turns SIGTERM into an interrupt) keeps
    the pool's SIGTERM from ending a worker stuck in C code; either hangs the pool for good. The
    ``preload`` modules are imported once in the server and inherited by every worker.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
    else:  # Windows
        ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(jobs)
