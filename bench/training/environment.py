"""Where a run ran: the hardware, the thread count and the software versions, logged as the
run's ``env.*`` tags and said in one line when it starts.

Times depend on all of it, and results in their last digits on some of it (the CPU's thread
count changes the order of floating-point sums: the same seed gives other curves with 1 and 2
threads). So time tables group runs by :data:`TAG_HARDWARE` as well as by configuration and
never average or compare across it (:mod:`bench.records.reports`); accuracy tables group by
configuration only unless asked (``bench table --by-hardware``).

A run resumed elsewhere (a requeued Slurm task on another node) keeps the label of every
machine it ran on, joined by " + ", so its time is never taken for either machine's.
"""
from __future__ import annotations

import importlib.metadata
import platform
import socket
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tag names are read by tables, which need no torch (seconds to import)
    import torch

PREFIX = "env."
TAG_HARDWARE = PREFIX + "hardware"  # what time tables group by: the GPU model, or the CPU model and threads
NOT_RECORDED = "not recorded"  # runs logged before these tags existed


@cache
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what the platform says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def hardware_label(device: torch.device, threads: int) -> str:
    """The hardware a run's time depends on: the GPU model on CUDA, else the CPU model and its
    thread count (the same CPU with 1 and 2 threads runs at other speeds)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_model()} ({threads} thread{'s' if threads != 1 else ''})"
    return device.type


def environment(device: torch.device) -> dict[str, str]:
    """The run's ``env.*`` tags on ``device``, as it is now (after ``--threads``)."""
    import torch

    threads = torch.get_num_threads()
    cuda = device.type == "cuda"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env = {
        "hardware": hardware_label(device, threads),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if cuda else "none",
        "gpu_count": str(torch.cuda.device_count()) if cuda else "0",
        "cpu": cpu_model(),
        "threads": str(threads),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "cuda": torch.version.cuda or "none",  # the CUDA torch was built with
        "cudnn": str(cudnn) if cudnn else "none",
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "deterministic": "on" if torch.are_deterministic_algorithms_enabled() else "off",
        "platform": f"{platform.system()} {platform.machine()}",
    }
    return {PREFIX + k: v for k, v in env.items()}


def summary_line(env: dict[str, str]) -> str:
    """One line for the start of a run."""
    e = {k.removeprefix(PREFIX): v for k, v in env.items()}
    gpus = f" x{e['gpu_count']}" if e["device"] == "cuda" and e["gpu_count"] != "1" else ""
    gpu = f", CUDA {e['cuda']}, cuDNN {e['cudnn']}" if e["device"] == "cuda" else ""
    return (f"environment: {e['hardware']}{gpus} on {e['host']}; torch {e['torch']}{gpu}, torchvision "
            f"{e['torchvision']}, timm {e['timm']}, Python {e['python']}; deterministic algorithms "
            f"{e['deterministic']}")


def joined(labels: list[str]) -> str:
    """The hardware label of a run that ran on each of ``labels`` in turn (resumed elsewhere)."""
    out: list[str] = []
    for label in labels:
        if label not in out:
            out.append(label)
    return " + ".join(out) if out else NOT_RECORDED


