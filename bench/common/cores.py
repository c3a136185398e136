"""The CPU cores this process may use: the default number of loader workers, image-writing jobs
and generation threads (its affinity mask where the system has one, as under Slurm or taskset;
else every core)."""
from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1
