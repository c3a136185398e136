"""GPU-hours of a grid before it runs (``bench sweep --dry-run``, ``bench reproduce --dry-run``):
``--hours-per-run`` times the runs when given, else, per run, epochs x training images / the
backbone's training throughput x the method's epoch time relative to CE, from what this harness
measured on one NVIDIA H200 (torch 2.11, AMP fp16, channels-last; commit d89a5fb, 2026-11-27).
Training passes only (no evaluation, no start-up): a floor, and it says what it assumed.
"""
from __future__ import annotations

from dataclasses import dataclass

THROUGHPUT = {  # backbone -> training images/s of CE
    "timm:resnet50": 4_400.0,  # 224 px, batch 128, after the first epoch
    "preact_resnet18": 8_280.0,  # 32 px, batch 64: 25k samples in 3.02 s
}
# not measured: PreAct ResNet-18's throughput scaled by the forward FLOPs at 32 px (2.32 / 1.11 GFLOPs,
# torch.utils.flop_counter); the estimate says so
SCALED = {"resnet34_cifar": ("preact_resnet18", 2.3188 / 1.1108)}
RELATIVE_COST = {  # method -> epoch time / CE's on the same backbone (PreAct ResNet-18, ResNet-50)
    "ce": (1.0, 1.0), "elr": (1.27, 1.27), "coteaching": (2.18, 2.18),
    "dividemix": (8.69, 8.0), "wrongevent": (4.22, 2.46),
}
TRAIN_IMAGES = {  # training images per epoch of the data sets whose size is fixed
    "cifar10": 50_000, "cifar100": 50_000, "cifar10n": 50_000, "cifar100n": 50_000, "fashion-mnist": 60_000,
    "tiny-imagenet": 100_000, "webvision": 65_944,  # mini-WebVision: the first 50 classes
}


@dataclass(frozen=True)
class Run:
    """What a run's estimate needs."""

    method: str
    backbone: str
    epochs: int
    images: int | None  # training images per epoch (None: not known before reading the data)


def throughput(backbone: str) -> tuple[float | None, str]:
    """Training images/s of CE on ``backbone`` and where the figure comes from."""
    if backbone in SCALED:
        measured, flops = SCALED[backbone]
        return THROUGHPUT[measured] / flops, (f"{backbone}: not measured, {measured}'s H200 figure scaled by "
                                              f"forward FLOPs ({flops:.2f}x)")
    return THROUGHPUT.get(backbone), f"{backbone}, CE on one H200"


def hours_text(hours: float | None, how: str) -> str:
    """``12.3 GPU-hours (how)``; two decimals under 10 hours; ``how`` alone without an estimate."""
    if hours is None:
        return how
    return f"{hours:,.{2 if hours < 10 else 1}f} GPU-hours ({how})"


def grid_hours(runs: list[Run], hours_per_run: float | None) -> tuple[float | None, str]:
    """GPU-hours of ``runs`` and how they were estimated (None: no estimate, and what to give)."""
    if hours_per_run is not None:
        return len(runs) * hours_per_run, f"{len(runs)} runs x {hours_per_run:g} h (--hours-per-run)"
    seconds, bases, assumed = 0.0, {}, []
    for r in runs:
        speed, basis = throughput(r.backbone)
        if speed is None:
            return None, f"no throughput measured for {r.backbone}: give --hours-per-run H"
        if r.images is None:
            return None, "the training-set size of this run is known only from its data: give --hours-per-run H"
        cost = RELATIVE_COST.get(r.method)
        if cost is None and r.method not in assumed:
            assumed.append(r.method)
        factor = 1.0 if cost is None else cost[1 if r.backbone.startswith("timm:") else 0]
        seconds += r.epochs * r.images / speed * factor
        bases[basis] = speed
    how = ("training passes only: epochs x images / " + "; ".join(f"{s:,.0f} images/s ({b})" for b, s in bases.items())
           + " x each method's cost relative to CE")
    if assumed:
        how += f"; not measured, CE's cost assumed (a floor): {', '.join(assumed)}"
    return seconds / 3600, how
