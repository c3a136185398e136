"""``bench reproduce NAME``: a published table as one sweep with its exact protocol, then its
table beside the published numbers with the gap (``bench table --paper --gap``).

A reproduction names the methods, the data sets and noise settings of the table, the run
protocol (preset or backbone, optimiser, epochs, batch, schedule), ``--fidelity official`` (a
published table was made with the official code) and the seeds; each part (a data set and its
settings) is one ``bench sweep`` into the experiment ``reproduce-NAME``, so an interrupted
reproduction resumes where it stopped and a finished one only prints its table. Anything given
on the command line wins over the protocol (``--seeds``, ``--methods``, a quick ``--epochs 1``),
and the command says what it changed.

``--dry-run`` prints the grid, the number of runs and an estimate of GPU-hours
(:mod:`bench.drivers.estimate`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from bench.common.errors import UsageError
from bench.drivers.slurm import SLURM_ARGS


@dataclass(frozen=True)
class Part:
    """One data set of a reproduction and its noise settings (a sweep's ``--noise``)."""

    dataset: str
    noise: str
    sets: tuple[str, ...] = ()  # data-set options, --set KEY=VALUE (a CIFAR-N label set)
    train_images: int = 50_000  # per epoch, for the estimate

    @property
    def label(self) -> str:
        return self.dataset + "".join(f" {s}" for s in self.sets)

    @property
    def settings(self) -> list[str]:
        return self.noise.split(",")


@dataclass(frozen=True)
class Reproduction:
    name: str
    title: str
    source: str  # where the published numbers come from
    methods: tuple[str, ...]
    parts: tuple[Part, ...]
    run: dict[str, Any] = field(default_factory=dict)  # the protocol: run options (RunConfig fields)
    seeds: str = "1,2,3"
    metric: str = "best_test_acc"
    method_run: dict[str, dict[str, Any]] = field(default_factory=dict)  # a method's own run options

    def n_runs(self, methods: int, seeds: int) -> int:
        return sum(len(p.settings) for p in self.parts) * methods * seeds


# Co-teaching+'s official loss is the official Adam recipe's (main.py:335,350: its extra 1/|kept| scale
# shrinks every SGD step ~100x); under an SGD protocol it runs the paper's loss, and says so
SGD_COTEACHING_PLUS = {"coteaching_plus": {"fidelity": "paper"}}


IDO_NOISE = "sym-biased:0.2,sym-biased:0.4,sym-biased:0.6"  # IDO's code draws from all C classes
# the IDO paper's protocol (bench/training/presets.py): pretrained ResNet-50, 224 px, 5 + 10 epochs
IDO_RUN = {"preset": "paper", "fidelity": "official"}
# DivideMix's CIFAR protocol (Train_cifar.py): PreAct ResNet-18, SGD lr 0.02, momentum 0.9, wd 5e-4,
# batch 64, 300 epochs; DivideMix's lr / 10 from epoch 150 is its own official plan (lr_schedule), as
# are ELR+'s and Co-teaching+'s; CE and mixup keep the run's constant rate (the command lists which)
DIVIDEMIX_RUN = {"backbone": "preact_resnet18", "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
                 "weight_decay": 5e-4, "batch_size": 64, "epochs": 300, "augment": "crop-flip", "scheduler": "none",
                 "fidelity": "official"}
# the CIFAR-N protocol (Wei et al., ICLR 2022, App. E): ResNet-34 (CIFAR stem), SGD lr 0.1, momentum
# 0.9, wd 5e-4, x 0.1 at epoch 60 of 100, batch 128
CIFARN_RUN = {"backbone": "resnet34_cifar", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
              "batch_size": 128, "epochs": 100, "augment": "crop-flip", "scheduler": "step:0.6",
              "fidelity": "official"}

REPRODUCTIONS = {r.name: r for r in (
    Reproduction(
        "ido-cifar100", "IDO on CIFAR-100, pretrained ResNet-50 (the IDO README's results table; DivideMix and "
        "M-correction have published numbers of this protocol at instance 0.4 only)",
        "IDO official repository, README.md 'Results'",
        ("wrongevent", "dividemix", "mcorrection"),
        (Part("cifar100", f"{IDO_NOISE},asym:0.4,instance:0.4"),), {**IDO_RUN}),
    Reproduction(
        "ido-real", "IDO and baselines on real noise, pretrained ResNet-50: CIFAR-100N, Clothing1M, WebVision",
        "IDO official repository, README.md 'Results'; the IDO authors' response tables",
        ("ce", "dividemix", "disc", "elr", "plc", "turn", "wrongevent"),
        (Part("cifar100n", "none", ("label=noisy",)),
         Part("clothing1m", "none", train_images=64_000),  # the preset's 1000 x 64 samples per epoch
         Part("webvision", "none", train_images=65_944)), {**IDO_RUN}),  # mini-WebVision: the first 50 classes
    Reproduction(
        "ido-cifar10", "the IDO authors' CIFAR-10 comparison, pretrained ResNet-50",
        "the IDO authors' NeurIPS 2025 response, Table 2 (IDO repository, Reviewer-MNWV.md)",
        ("ce", "unicon", "elr", "disc", "dividemix", "wrongevent"),
        (Part("cifar10", f"{IDO_NOISE},pairflip:0.4,instance:0.4"),), {**IDO_RUN}),  # IDO's CIFAR-10 asym: pair flip
    Reproduction(
        "cifar-n", "the CIFAR-N leaderboard protocol: CIFAR-10N aggre / random1 / worst, CIFAR-100N",
        "CIFAR-N paper (Wei et al., ICLR 2022) Table 2 and leaderboard",
        ("ce", "cores", "coteaching", "coteaching_plus", "elr", "forward", "gce", "jocor", "nls", "peer",
         "pes_semi", "sop", "trevision"),
        (Part("cifar10n", "none", ("label=aggre",)), Part("cifar10n", "none", ("label=random1",)),
         Part("cifar10n", "none", ("label=worse",)), Part("cifar100n", "none", ("label=noisy",))),
        {**CIFARN_RUN}, seeds="1,2,3,4,5", method_run=SGD_COTEACHING_PLUS),  # the leaderboard: mean of 5 seeds
    Reproduction(
        "dividemix-cifar", "DivideMix's CIFAR-10/100 protocol (its Table 1), PreAct ResNet-18, 300 epochs",
        "DivideMix (Li et al., ICLR 2020) Table 1; ELR (Liu et al., NeurIPS 2020) Table 2",
        ("ce", "coteaching_plus", "mixup", "dividemix", "elr_plus"),
        # 90% noise is left out: no published number of it is in the reference data
        (Part("cifar10", "sym-biased:0.2,sym-biased:0.5,sym-biased:0.8,asym:0.4"),
         Part("cifar100", "sym-biased:0.2,sym-biased:0.5,sym-biased:0.8")), {**DIVIDEMIX_RUN},
        method_run=SGD_COTEACHING_PLUS),
)}

def reproduction(name: str) -> Reproduction:
    if name not in REPRODUCTIONS:
        raise UsageError(f"bench reproduce {name}: no such table; valid: {', '.join(REPRODUCTIONS)} "
                         "(`bench list tables`)")
    return REPRODUCTIONS[name]


def describe_tables() -> list[tuple[str, str]]:
    """(name, one line) of every reproduction: `bench list tables`."""
    rows = []
    for r in REPRODUCTIONS.values():
        runs = r.n_runs(len(r.methods), len(r.seeds.split(",")))
        rows.append((r.name, f"{r.title}; {len(r.methods)} methods, {runs} runs; source: {r.source}"))
    return rows


PLACEMENT = {"data_root", "device", "workers", "out", "progress", "offline", "pin_memory", "decode", "compile",
             "channels_last", "amp"}  # where and how a run executes, not what it computes


def protocol(r: Reproduction, request: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The run options of the reproduction with the command line's on top, and a line per change
    of what decides the result (placement options, such as --data-root, are not changes)."""
    changed = [f"{k} {r.run[k]} -> {v}" if k in r.run else f"{k}={v} (not part of the published protocol)"
               for k, v in request.items() if k not in PLACEMENT and v != r.run.get(k) and v not in (None, [], False)]
    return {**r.run, **request}, changed


def data_root(text: str | None, dataset: str) -> str | None:
    """``--data-root PATH`` (every part's), or ``DATASET=PATH,...`` (a folder per data set)."""
    if text is None or "=" not in text:
        return text
    roots = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    if dataset not in roots:
        raise UsageError(f"--data-root {text}: no folder for {dataset}; give {dataset}=PATH among them")
    return roots[dataset]


def backbone_of(run: dict[str, Any]) -> str:
    if run.get("preset") == "paper":
        return "timm:resnet50"
    if run.get("preset") == "paper-vit":
        return "timm:vit_base_patch16_224"
    return str(run.get("backbone", "smallcnn"))


def estimate_hours(r: Reproduction, run: dict[str, Any], methods: list[str], seeds: int,
                   hours_per_run: float | None) -> tuple[float | None, str]:
    """GPU-hours of the grid and how they were estimated (None: no estimate possible)."""
    from bench.drivers.estimate import Run, grid_hours

    epochs = int(run.get("epochs", 15 if str(run.get("preset", "")).startswith("paper") else 1))
    runs = [Run(m, backbone_of(run), epochs, p.train_images)
            for m in methods for p in r.parts for _ in p.settings for _ in range(seeds)]
    return grid_hours(runs, hours_per_run)


def check(r: Reproduction, methods: list[str], request: dict[str, Any], hours_per_run: float | None) -> None:
    """One line for what cannot be planned: a method outside the table, a bad --fidelity or estimate."""
    from bench.training.config import FIDELITIES

    outside = [m for m in methods if m not in r.methods]
    if outside:
        raise UsageError(f"--methods {','.join(outside)}: not in table {r.name}; its methods: {', '.join(r.methods)}")
    if request.get("fidelity", "official") not in FIDELITIES:
        raise UsageError(f"--fidelity {request['fidelity']}: valid values are {', '.join(FIDELITIES)}")
    if hours_per_run is not None and not hours_per_run > 0:
        raise UsageError(f"--hours-per-run {hours_per_run}: must be a positive number of hours")


def own_lr_plans(methods: list[str]) -> list[str]:
    """The methods whose ``lr_schedule`` option defaults to their official plan (which the run's
    ``--scheduler`` then does not drive), from the catalogue (no torch)."""
    from bench.training.catalogue import catalogue

    out = []
    for m in methods:
        entry = catalogue().methods.get(m)
        if any(o.name == "lr_schedule" and "default 'official'" in o.line for o in entry.options):
            out.append(m)
    return out


def grid_lines(r: Reproduction, methods: list[str], seeds: list[int]) -> list[str]:
    lines = []
    for p in r.parts:
        for setting in p.settings:
            lines.append(f"  {p.label:<24} {setting:<16} {len(methods)} methods x {len(seeds)} seeds")
    return lines


def sweep_args(r: Reproduction, part: Part, args: argparse.Namespace, methods: list[str]) -> argparse.Namespace:
    """The ``bench sweep`` arguments of one part."""
    return argparse.Namespace(
        methods=",".join(methods), noise=part.noise, seeds=args.seeds or r.seeds, workers=args.workers,
        shard=args.shard, dry_run=False, tracking_uri=args.tracking_uri,
        experiment=args.experiment or f"reproduce-{r.name}", preset=None, dataset=part.dataset,
        views=None, fidelity=None, launcher=getattr(args, "launcher", "local"),
        **{dest: getattr(args, dest, default) for dest, default in SLURM_ARGS.values()})


def run_reproduce(args: argparse.Namespace, request: dict[str, Any]) -> int:
    """``bench reproduce``: the sweeps of every part, then the table (or, ``--dry-run``, the plan)."""
    from bench.drivers.estimate import hours_text
    from bench.drivers.sweep import parse_list, parse_seeds, run_sweep

    r = reproduction(args.name)
    methods = parse_list("--methods", args.methods) if args.methods else list(r.methods)
    check(r, methods, request, args.hours_per_run)
    seeds = parse_seeds(args.seeds or r.seeds)
    run, changed = protocol(r, {k: v for k, v in request.items() if k not in ("dataset", "sets")})
    print(f"{r.name}: {r.title}\n  published numbers: {r.source}")
    print("  protocol: " + ", ".join(f"{k}={v}" for k, v in run.items() if k in r.run or k in request))
    for line in changed:
        print(f"  changed from the published protocol: {line}")
    planned = own_lr_plans(methods)
    if planned and "scheduler" in run:
        print(f"  their own official learning-rate plan, not --scheduler {run['scheduler']} (lr_schedule=official; "
              f"--set lr_schedule=trainer for the run's): {', '.join(planned)}")
    for m, own in r.method_run.items():
        if m in methods:
            print(f"  {m} runs with " + ", ".join(f"{k}={v}" for k, v in own.items()) + " (its official loss is "
                  "the official Adam recipe's; bench/drivers/reproduce.py)")
    print("\n".join(grid_lines(r, methods, seeds)))
    hours, how = estimate_hours(r, run, methods, len(seeds), args.hours_per_run)
    n_runs = r.n_runs(len(methods), len(seeds))
    print(f"{n_runs} runs; estimate: " + hours_text(hours, how))
    if args.dry_run:
        return 0
    groups: dict[tuple, list[str]] = {}  # methods with the same run options share a sweep
    for m in methods:
        own = {k: v for k, v in r.method_run.get(m, {}).items() if k not in request}  # the command line wins
        groups.setdefault(tuple(sorted(own.items())), []).append(m)
    for part in r.parts:
        for own, group in groups.items():
            base = {**run, **dict(own), "sets": [*part.sets, *request.get("sets", [])], "dataset": part.dataset,
                    "data_root": data_root(run.get("data_root"), part.dataset)}
            base = {k: v for k, v in base.items() if v not in (None, [])}
            code = run_sweep(sweep_args(r, part, args, group), base)
            if code:
                return code
    if getattr(args, "launcher", "local") == "slurm" and not getattr(args, "wait", False):
        print("the table follows once the jobs have finished: run this command again (it submits nothing "
              "twice), or add --wait")
        return 0
    print(published_table(r, args))
    return 0


def published_table(r: Reproduction, args: argparse.Namespace) -> str:
    """The reproduction's table: its metric, mean ± std over seeds, beside each cell the published
    numbers of the run's protocol and ours minus them (``bench table --paper --gap``)."""
    from bench.records.reports import load_runs, pivot, render

    experiment = args.experiment or f"reproduce-{r.name}"
    df = load_runs(args.tracking_uri, experiment)
    table, best = pivot(df, r.metric, paper=True, gap=True)
    title = (f"{r.title}: {r.metric} in % (mean ± std over seeds), published numbers of the same protocol "
             f"and the gap beside each cell ({r.source}); experiment {experiment}")
    text = render(table, args.format, best, title)
    if args.table_out:
        from pathlib import Path

        Path(args.table_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table_out).write_text(text)
        return f"wrote {args.table_out}"
    return text
