"""Command line: ``python -m bench run|list|data|ui|sweep|table|plot|report|study|study-report|perf|weights``.

Every user error ends in one line on standard error and exit code 2; a run's last line on
standard output is one JSON object with its results.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shlex
import signal
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench.common.errors import EXIT_DIVERGED, UsageError
from bench.common.registry import UnknownNameError
from bench.training.config import (
    AUGMENTS,
    COMPILE_MODES,
    DEVICES,
    FUSED,
    OPTIMIZERS,
    SCHEDULERS,
    TRISTATE,
    Placement,
    RunConfig,
    parse_set,
)

# run options that map one-to-one onto RunConfig fields (flag -> type, help). Defaults are not
# argparse's: a flag left out takes the preset's value, then the data set's protocol default,
# then RunConfig's (shown in --help as "generic default").
RUN_FLAGS: dict[str, tuple[type, str]] = {
    "method": (str, "method name (see `bench list methods`); required unless --resume"),
    "preset": (str, "a named protocol (see `bench list presets`); other flags override its values"),
    "dataset": (str, "data set name (see `bench list datasets`)"),
    "noise": (str, "noise model: none, sym, sym-biased, pairflip, asym, instance (see `bench list noise`)"),
    "noise_rate": (float, "noise rate in [0, 1); required with a noise model other than none"),
    "noise_seed": (int, "seed of the noisy labels, the subset and the validation split"),
    "seed": (int, "training seed"),
    "epochs": (int, "total epochs"),
    "batch_size": (int, "training batch size"),
    "lr": (float, "learning rate"),
    "optimizer": (str, f"one of {', '.join(OPTIMIZERS)}"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay"),
    "scheduler": (str, f"one of {', '.join(SCHEDULERS)}, or step:S1[,S2...] (lr x 0.1 at those shares of the epochs)"),
    "backbone": (str, "backbone name or timm:NAME (see `bench list backbones`)"),
    "weights": (str, "local weights file for --pretrained, in place of timm's (then nothing is downloaded)"),
    "augment": (str, f"augmentation of the shared training view: {', '.join(AUGMENTS)}"),
    "views": (str, "a method's own views (weak, strong, ...; `bench list views`): shared = built on --augment, so "
                   "every method gets the same augmentation; official = as the method published them (crop + flip)"),
    "fidelity": (str, "paper = each method as its paper reads; official = as its official code does where the two "
                      "differ: sets the options each method names (`bench list methods --verbose`), except those "
                      "given with --set, which win"),
    "image_size": (int, "side in pixels of the images the backbone sees (default: the data set's)"),
    "subset": (int, "train on N samples, stratified by class, chosen by the noise seed (default: all)"),
    "test_subset": (int, "evaluate on N test images, stratified by class, always the same ones: quick checks; "
                         "tables keep such runs apart (default: all)"),
    "val_fraction": (float, "hold out this fraction of the noisy training set (stratified by given label, "
                            "chosen by the noise seed) and log accuracy on it as val_acc"),
    "data_root": (str, "folder holding the data set (Fashion-MNIST: Debian's dataset-fashion-mnist)"),
    "device": (str, f"one of {', '.join(DEVICES)} (auto: CUDA when present)"),
    "amp": (str, f"mixed precision: {', '.join(TRISTATE)} (auto: on for CUDA)"),
    "channels_last": (str, f"channels-last memory format: {', '.join(TRISTATE)}"),
    "compile": (str, f"torch.compile the backbones: {', '.join(COMPILE_MODES)} (a mode; reduce-overhead adds CUDA "
                     "graphs on CUDA; the first epoch pays the compilation)"),
    "fused": (str, f"fused optimiser kernels (SGD, Adam, AdamW): {', '.join(FUSED)}"),
    "eval_batch_size": (int, "batch size of evaluation passes"),
    "workers": (int, "loader worker processes for on-disk data sets, for the run (default: the cores this "
                     "process may use)"),
    "prefetch": (int, "on-disk data: batches each worker makes ahead"),
    "on_nonfinite": (str, "a non-finite training loss: stop (the run ends as diverged, exit code 3; default) or "
                          "skip-step (that step's update is skipped and counted, as AMP's loss scaler does)"),
    "threads": (int, "torch's intra-op CPU threads (torch.set_num_threads; default: torch's, which follows "
                     "OMP_NUM_THREADS, else the cores); logged with the run's environment"),
    "pin_memory": (str, f"on-disk data: pinned host memory for the copies to the device: {', '.join(TRISTATE)} "
                        "(auto: on for CUDA)"),
    "decode": (str, "on-disk data: decode JPEGs in the workers (cpu) or in batches on the CUDA device (gpu: "
                    "nvJPEG, then resize and crop there)"),
    "tracking_uri": (str, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)"),
    "experiment": (str, "MLflow experiment the run is logged to"),
    "out": (str, "folder for run folders"),
}
GENERIC_DEFAULTS = {f.name: f.default for cls in (RunConfig, Placement) for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING and f.default is not None}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with the examples as written and each option's default (where it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default not in (None, False, argparse.SUPPRESS) and "default" not in text
                and action.option_strings and not isinstance(action, argparse._HelpAction)):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) and suggestions for mistyped flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        self._check_flags(argv)  # before argparse, whose "required" errors would hide a typo
        parsed, extra = self.parse_known_args(argv, namespace)
        if extra:
            raise UsageError(f"unrecognized argument {extra[0]}; see `{self.prog} --help`")
        return parsed

    def _check_flags(self, argv: list[str]) -> None:
        """A flag its subcommand does not know (nor abbreviates) fails with the closest ones."""
        import difflib

        parser: argparse.ArgumentParser = self
        for token in argv:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            if sub is not None and token in sub.choices:
                parser = sub.choices[token]
                continue
            flag = token.split("=", 1)[0]
            if not flag.startswith("--") or flag == "--":
                continue
            known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            if any(o.startswith(flag) for o in known):  # the flag itself, or an abbreviation argparse takes
                continue
            close = difflib.get_close_matches(flag, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"unrecognized argument {flag}{hint}; see `{parser.prog} --help`")


def _run_flag_help(name: str, text: str) -> str:
    if name in GENERIC_DEFAULTS and "default" not in text:
        return f"{text} (generic default: {GENERIC_DEFAULTS[name]})"
    return text


def add_run_flags(parser: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """The ``bench run`` options (also taken by ``sweep`` and ``study``)."""
    for name, (tp, help_) in RUN_FLAGS.items():
        if name not in skip:
            metavar = "N" if name == "test_subset" else name.split("_")[-1].upper() if tp is not str else None
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None, metavar=metavar,
                                help=_run_flag_help(name, help_))
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="start from timm's pretrained weights, downloaded on first use into the Hugging Face "
                             "cache (HF_HOME); --no-pretrained: random weights, overriding a preset or data set")
    parser.add_argument("--offline", action=argparse.BooleanOptionalAction, default=None,
                        help="never download: pretrained weights only from the cache, as HF_HUB_OFFLINE=1 "
                             "(prepare it with `bench weights fetch`)")
    parser.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                        help="a method or data-set option (repeatable; see `bench list methods --verbose`, "
                             "`bench list datasets --verbose`)")


RESOLUTION = ("Options left out take the preset's value (--preset), then the data set's protocol default "
              "(`bench list datasets --verbose`), then the generic default shown.")
EXAMPLES = {
    "run": ["python -m bench run --method ce --noise sym --noise-rate 0.4 --epochs 5",
            "python -m bench run --method wrongevent --preset fmnist-cpu --noise pairflip --noise-rate 0.4",
            "python -m bench run --resume results/runs/RUN_FOLDER"],
    "list": ["python -m bench list", "python -m bench list methods --verbose",
             "python -m bench list published --method dividemix --dataset cifar10"],
    "data": ["python -m bench data check --dataset cifar10 --data-root ~/data",
             "python -m bench data pack --dataset clothing1m --data-root ~/data/clothing1m --out ~/fast/clothing1m",
             "python -m bench data synth --layout clothing1m --out /tmp/c1m --n 2400"],
    "synth": ["python -m bench data synth --layout clothing1m --out /tmp/c1m --n 2400",
              "python -m bench data synth --layout folder --out /tmp/toy --n 600 --classes 6 --size 96x96 --jobs 2"],
    "pack": ["python -m bench data pack --dataset clothing1m --data-root ~/data/clothing1m --out ~/fast/clothing1m",
             "python -m bench data pack --dataset animal10n --data-root ~/data/animal10n --out /tmp/a10n --jobs 4",
             "python -m bench data check --dataset clothing1m --data-root ~/fast/clothing1m"],
    "check": ["python -m bench data check --dataset cifar10 --data-root ~/data",
              "python -m bench data check --dataset folder --data-root ~/mydata --no-decode"],
    "ui": ["python -m bench ui --experiment fmnist-cpu"],
    "sweep": ["python -m bench sweep --methods ce,dividemix,wrongevent --preset fmnist-cpu "
              "--noise sym:0.2,sym:0.4 --seeds 1,2,3 --workers 2 --experiment fmnist-cpu",
              "python -m bench sweep --methods ce,wrongevent --preset paper --dataset cifar100 --data-root ~/data "
              "--shard 1/4 --dry-run",
              "python -m bench sweep --methods ce,wrongevent --preset paper --dataset cifar100 --data-root /data "
              "--launcher slurm --slurm-partition gpu --slurm-time 8:00:00 --slurm-setup 'source .venv/bin/activate'",
              "python -m bench sweep --methods ce,dividemix,wrongevent --preset fmnist-cpu --noise sym:0.4 "
              "--views shared,official"],
    "reproduce": ["python -m bench reproduce ido-cifar100 --dry-run",
                  "python -m bench reproduce cifar-n --data-root ~/data/cifar --workers 2 --seeds 1,2,3",
                  "python -m bench list tables"],
    "table": ["python -m bench table --experiment fmnist-cpu --metric last_test_acc",
              "python -m bench table --experiment fmnist-cpu --time --format latex --out results/time.tex",
              "python -m bench table --experiment cifar10 --paper --gap",
              "python -m bench table --experiment fmnist-cpu --compare wrongevent --metric last_test_acc",
              "python -m bench table --experiment fmnist-cpu --aggregate --methods ce,dividemix,wrongevent"],
    "plot": ["python -m bench plot --experiment fmnist-cpu --kind curves --out results/plots",
             "python -m bench plot --experiment fmnist-cpu --kind intervals --out results/plots"],
    "study": ["python -m bench study --method dividemix --params lambda_u,p_threshold --preset fmnist-cpu "
              "--noise sym --noise-rate 0.4 --epochs 15 --trials 20"],
    "study-report": ["python -m bench study-report --study-name dividemix-fashion-mnist-sym0.4"],
    "report": ["python -m bench report --experiment fmnist-cpu --highlight wrongevent,dividemix,ce "
               "--out results/fashion-mnist",
               "python -m bench report --experiment fmnist-cpu --ui-url http://127.0.0.1:5000"],
    "weights": ["python -m bench weights fetch --preset clothing1m",
                "python -m bench weights fetch --preset paper --dataset cifar100 --preset paper-vit",
                "python -m bench weights fetch --backbone timm:resnet50 --backbone timm:vit_base_patch16_224",
                "python -m bench weights fetch --sweep-args '--methods ce,wrongevent --dataset webvision --noise none'",
                "python -m bench weights list"],
    "weights fetch": ["python -m bench weights fetch --preset clothing1m",
                      "python -m bench weights fetch --dataset food101n --dry-run",
                      "python -m bench weights fetch --sweep-args '--methods ce,dividemix --preset paper --dataset "
                      "cifar100'"],
    "weights list": ["python -m bench weights list"],
    "perf": ["python -m bench perf --epochs 3 --repeats 3",
             "python -m bench perf --dataset synthetic --backbone preact_resnet18 --batch-size 64 "
             "--set train_size=4096",
             "python -m bench perf --methods ce,dividemix,wrongevent --preset fmnist-cpu --subset 4000",
             "python -m bench perf --dataset clothing1m --data-root /tmp/c1m --backbone smallcnn --image-size 64 "
             "--batch-size 64 --workers 2 --set samples_per_epoch=1536",
             "python -m bench perf --suite gpu",
             "python -m bench perf --suite disk"],
}


def _add(sub: Any, name: str, help_: str, description: str = "", parent: str = "") -> Parser:
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[f"{parent} {name}".strip()])
    text = textwrap.fill(description or help_[0].upper() + help_[1:] + ".", width=100)
    return sub.add_parser(name, help=help_, description=text, epilog=epilog)


def build_parser() -> Parser:
    p = Parser(prog="python -m bench", description="Benchmark harness for learning with noisy labels.",
               epilog="examples:\n  python -m bench run --method ce --noise sym --noise-rate 0.4 --epochs 5\n"
                      "  python -m bench list\n  python -m bench COMMAND --help")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for add in (add_run_parser, add_list_parser, add_data_parser, add_ui_parser, add_sweep_parser,
                add_reproduce_parser, add_study_parsers, add_table_parser, add_plot_parser, add_report_parser,
                add_perf_parser,
                add_weights_parser):
        add(sub)
    return p


def add_run_parser(sub: Any) -> None:
    run = _add(sub, "run", "train one method on one data set and noise setting",
               "Train one method on one data set and noise setting; the last line on standard output is the "
               "run's summary as JSON. " + RESOLUTION)
    run.usage = "python -m bench run --method NAME [options] | python -m bench run --resume RUN_DIR"
    add_run_flags(run)
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    run.add_argument("--stop-after", type=int, metavar="N",
                     help="stop (resumably) once N epochs are done, e.g. to split a run across jobs")
    run.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                     help="tqdm bar (auto: on a terminal) or one line per epoch")


def add_list_parser(sub: Any) -> None:
    lst = _add(sub, "list", "list registered methods, data sets, backbones, noise models, presets and views, "
               "and the published numbers")
    lst.add_argument("what", nargs="?", choices=("all", "methods", "datasets", "backbones", "noise", "presets",
                                                 "views", "published", "tables"),
                     default="all", help="what to list (default: all, which leaves out the published numbers)")
    lst.add_argument("--verbose", "-v", action="store_true", help="also list options, study spaces and preset values")
    lst.add_argument("--method", help="with `published`: only this method's numbers")
    lst.add_argument("--dataset", help="with `published`: only this data set's numbers")


def add_data_parser(sub: Any) -> None:
    data = _add(sub, "data", "check a data set's files, write a packed copy or a synthetic tree (no training)")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser, metavar="COMMAND")
    chk = _add(data_sub, "check", "counts, label ranges, missing and unreadable files, noise rate",
               "Check a data set's layout without training: exit 0 without faults, 1 with faults, 2 when the "
               "layout does not match.")
    chk.add_argument("--dataset", required=True, help="data set name (see `bench list datasets`); required")
    chk.add_argument("--data-root", default=None, help="folder holding the data set")
    chk.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help="a data-set option")
    chk.add_argument("--no-decode", action="store_true", help="skip decoding every image (existence only)")
    chk.add_argument("--original", metavar="DIR",
                     help="a packed copy (`data pack`): also compare its splits with the original at DIR (default: "
                          "the source named in its bench-pack.json, if that still exists)")
    pk = _add(data_sub, "pack", "a resized copy of an on-disk image data set, in its own layout, for fast epochs",
              "Write every image of an on-disk data set's splits once, shorter side resized to --short-side (never "
              "upscaled), as JPEG at the same relative path under --out, with the list files the loader reads: "
              "the copy is read unchanged as --data-root OUT. Resumable (a rerun skips the images already there); "
              "bench-pack.json is written when all are done. `data check` on the copy verifies it.")
    pk.add_argument("--dataset", required=True, help="an on-disk data set (clothing1m, webvision, food101n, animal10n, "
                                                     "tiny-imagenet, folder); required")
    pk.add_argument("--data-root", default=None, help="folder holding the data set; required")
    pk.add_argument("--out", required=True, help="folder of the packed copy (new, empty or an unfinished pack); "
                                                 "not inside --data-root; required")
    pk.add_argument("--short-side", type=int, default=None, metavar="PX",
                    help="shorter side of the packed images (default: the data set's protocol resize, 256 for "
                         "clothing1m, webvision, food101n and folder; animal10n and tiny-imagenet train on native "
                         "64-px images and are copied byte for byte unless this is given)")
    pk.add_argument("--quality", type=int, default=90, help="JPEG quality of the resized images")
    pk.add_argument("--jobs", type=int, default=None,
                    help="processes packing images (default: the CPU cores this process may use)")
    pk.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help="a data-set option")
    syn = _add(data_sub, "synth", "write photo-like JPEGs with class structure in a real data set's layout",
               "Write a tree of photo-like JPEG images with learnable classes in the on-disk layout of a real data "
               "set (list files included), to measure the on-disk loading path or try a run without the real data. "
               "The test split (and the layout's other labelled splits) hold max(n/10, classes) images; layouts "
               "with real label noise get that share of training labels flipped to another class. A rerun with the "
               "same arguments resumes: the images already written are kept.")
    syn.add_argument("--layout", required=True,
                     help="clothing1m, webvision, food101n, animal10n, tiny-imagenet or folder; required")
    syn.add_argument("--out", required=True, help="folder to write the tree to (new, empty or an earlier run's); "
                                                  "required")
    syn.add_argument("--n", type=int, required=True, help="training images; required")
    syn.add_argument("--size", metavar="WxH", help="image size (default: 500x400 for clothing1m, webvision and "
                                                   "food101n, 64x64 for animal10n and tiny-imagenet, 256x256 folder)")
    syn.add_argument("--classes", type=int, help="number of classes where the loader allows fewer (folder, food101n, "
                                                 "tiny-imagenet; default: the real data set's, 10 for folder)")
    syn.add_argument("--seed", type=int, default=0, help="seed of images and labels: same arguments, same bytes")
    syn.add_argument("--quality", type=int, default=90, help="JPEG quality")
    syn.add_argument("--noise-rate", type=float, help="share of training labels flipped (default: the real data "
                                                      "set's estimate: clothing1m 0.38, webvision and food101n 0.2, "
                                                      "animal10n 0.08; others ship clean labels)")
    syn.add_argument("--jobs", type=int, help="processes writing images (default: the CPU cores this process may use)")


def add_ui_parser(sub: Any) -> None:
    ui = _add(sub, "ui", "start the MLflow UI on the project's tracking store, at an experiment's runs")
    ui.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    ui.add_argument("--experiment", default="bench", help="experiment whose runs page the UI opens on")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on (0.0.0.0: every interface)")
    ui.add_argument("--port", type=int, default=5000, help="port the UI listens on")
    ui.add_argument("--workers", type=int, default=1, help="server worker processes")
    ui.add_argument("--no-browser", action="store_true", help="print the address only; open no browser")


def add_table_parser(sub: Any) -> None:
    tb = _add(sub, "table", "comparison table of an experiment's runs (mean ± std over seeds)",
              "Comparison table of an experiment's finished runs: methods as rows, settings as columns, mean ± "
              "std over seeds. Runs that differ in anything but the seed are never averaged: they are separate "
              "rows, labelled by what differs.")
    tb.add_argument("--experiment", required=True, help="MLflow experiment to read; required")
    tb.add_argument("--metric", default="best_test_acc", help="best_test_acc or last_test_acc")
    tb.add_argument("--methods", help="comma-separated methods to include (default: every method of the experiment)")
    tb.add_argument("--format", default="md", help="md, latex or csv")
    tb.add_argument("--out", help="write the table to this file (default: standard output)")
    kind = tb.add_mutually_exclusive_group()
    kind.add_argument("--time", action="store_true",
                      help="the wall-clock table, with ratios to the time-reference methods (CE, DivideMix); runs on "
                           "different hardware are rows of their own, compared only on the same hardware")
    kind.add_argument("--detection", action="store_true", help="the clean_auc table")
    kind.add_argument("--health", action="store_true",
                      help="the runs that diverged (a non-finite loss or logits stopped them) or collapsed (their test "
                           "predictions sat in one class); other tables mark their cells with a dagger")
    kind.add_argument("--env", action="store_true",
                      help="the environments the runs ran in: runs per hardware (GPU model, or CPU model and "
                           "threads) and software versions, with their hosts")
    kind.add_argument("--transition", action="store_true",
                      help="the t_error table (methods that estimate the noise transition matrix)")
    kind.add_argument("--compare", metavar="METHOD",
                      help="each method's paired difference to METHOD (a method or a row name; pairs: same data set, "
                           "setting and seed) over seeds and settings: mean, bootstrap 95%% interval, settings won")
    kind.add_argument("--aggregate", action="store_true",
                      help="per method, interquartile mean and mean rank over the settings every method ran, with "
                           "stratified-bootstrap 95%% intervals (rliable)")
    tb.add_argument("--paper", action="store_true",
                    help="beside each cell the published numbers of its protocol (data set, noise model and rate, "
                         "backbone, best or last; `bench list published`), notes where none match")
    tb.add_argument("--gap", action="store_true", help="--paper, and ours minus published in points")
    tb.add_argument("--range", action="store_true", help="also [min, max] over seeds in each cell")
    tb.add_argument("--by-hardware", action="store_true", dest="by_hardware",
                    help="runs on different hardware in rows of their own (METHOD @ HARDWARE); --time always does")
    tb.add_argument("--reps", type=int, default=5000, help="bootstrap resamples of --compare and --aggregate")
    tb.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])


def add_report_parser(sub: Any) -> None:
    rp = _add(sub, "report", "one self-contained HTML page of an experiment: its tables and interactive figures",
              "Write RESULTS/EXPERIMENT-report.html: the accuracy (best and last), time, detection and transition "
              "tables with their health marks, the environments and unhealthy runs, and interactive figures (hover: "
              "method, setting, seed, value; the legend toggles methods, buttons show one family, --highlight puts "
              "chosen methods over the rest in grey). Plotly's JavaScript is inlined: the page opens from disk with "
              "no network.")
    rp.add_argument("--experiment", required=True, help="MLflow experiment to read; required")
    rp.add_argument("--out", default="results/reports", help="folder for the page (default results/reports)")
    rp.add_argument("--methods", help="comma-separated methods to include (default: every method of the experiment)")
    rp.add_argument("--highlight", help="comma-separated methods drawn in colour over the others in grey, e.g. "
                                        "wrongevent,dividemix,ce (the page opens so; a button shows all)")
    rp.add_argument("--metric", default="last_test_acc", help="the accuracy of the time figure: last_test_acc "
                                                              "(default) or best_test_acc")
    rp.add_argument("--ui-url", dest="ui_url", help="the MLflow UI's address (e.g. http://127.0.0.1:5000): each "
                                                    "table cell links its runs there")
    rp.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])


def add_plot_parser(sub: Any) -> None:
    pl = _add(sub, "plot", "figures of an experiment's runs (300 dpi PNG and PDF)")
    pl.add_argument("--experiment", required=True, help="MLflow experiment to read; required")
    pl.add_argument("--kind", required=True, help="curves, pareto, scores, detection or intervals; required")
    pl.add_argument("--out", default="results/plots", help="folder for the figures")
    pl.add_argument("--metric", default="last_test_acc", help="accuracy of the pareto and intervals plots")
    pl.add_argument("--reps", type=int, default=5000, help="bootstrap resamples of the intervals plot")
    pl.add_argument("--methods", help="comma-separated methods to include (default: every method of the experiment)")
    pl.add_argument("--highlight", help="comma-separated methods drawn thick in red, blue, black (in this order) over "
                                        "the others in thin grey (curves, detection, pareto; with --by-family the "
                                        "others keep their colours), e.g. wrongevent,dividemix,ce")
    pl.add_argument("--by-family", action="store_true", dest="by_family",
                    help="one figure per family of methods (the IDO paper's set, losses and corrections, selection, "
                         "semi-supervised): small multiples that stay readable at thirty methods; the --highlight "
                         "methods in each")
    pl.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])


def add_perf_parser(sub: Any) -> None:
    pf = _add(sub, "perf", "time the trainer against a bare loop, methods side by side, the strong view",
              "Where the time goes, like for like in one process, first epoch left out: by default CE through "
              "the trainer against a hand-written loop doing the same work (on-disk data sets: images/s of the "
              "decode on one core, the loader alone, the step alone and an epoch, and which bounds it); "
              "--methods: each method's epoch after its warm-up with ratios to CE and DivideMix; --strong: the "
              "strong view's share of a stage-2 step; --suite: every figure of a named set. Nothing is recorded. "
              + RESOLUTION)
    add_run_flags(pf, skip={"method", "tracking_uri", "experiment", "out", "val_fraction"})
    pf.add_argument("--repeats", type=int, default=3,
                    help="repeats of the trainer with the bare loop's epochs interleaved")
    pf.add_argument("--methods", help="comma-separated methods to time side by side, e.g. ce,dividemix,wrongevent")
    pf.add_argument("--strong", action="store_true", help="the strong view's share of a wrong-event stage-2 step")
    pf.add_argument("--batches", type=int, default=40,
                    help="on-disk data: batches the loader and the step are timed on (capped by the data); "
                         "Clothing1M's epoch samples as many images unless --set samples_per_epoch=N")
    pf.add_argument("--suite", choices=("cpu", "gpu", "disk"),
                    help="every figure of README's Speed section for this machine kind (gpu: under 6 minutes on one "
                         "GPU, and under 4 more for its on-disk shapes; disk: the on-disk figures on a synthetic "
                         "Clothing1M tree, 2-5 minutes on 2 cores)")


def add_weights_parser(sub: Any) -> None:
    wt = _add(sub, "weights", "fetch the pretrained weights runs will load, list what is cached",
              "Pretrained timm weights: runs download them on first use into the Hugging Face cache (HF_HOME); "
              "`weights fetch` downloads ahead what presets, data sets, backbones or a sweep will load, for "
              "compute nodes without internet (run them with HF_HUB_OFFLINE=1 or --offline).")
    wt_sub = wt.add_subparsers(dest="weights_command", required=True, parser_class=Parser, metavar="COMMAND")
    fe = _add(wt_sub, "fetch", "download the weights that presets, data sets, backbones or a sweep will load",
              "Download every pretrained weight file the named runs will load into the standard cache, print where "
              "each went and its size, and load each into its model from the cache alone, as an offline run will.",
              parent="weights")
    fe.add_argument("--preset", action="append", default=[], metavar="NAME",
                    help="a preset's runs (repeatable; all: every preset; paper/paper-vit with --dataset)")
    fe.add_argument("--dataset", action="append", default=[], metavar="NAME",
                    help="bare `bench run --dataset NAME` runs (the data set's protocol), or the data set of "
                         "--preset paper/paper-vit (repeatable)")
    fe.add_argument("--backbone", action="append", default=[], metavar="timm:NAME",
                    help="a timm model's default pretrained weights (repeatable; NAME.TAG for another tag)")
    fe.add_argument("--sweep-args", metavar="ARGS",
                    help="the arguments of a `bench sweep`, quoted as one: the weights its runs load")
    fe.add_argument("--dry-run", action="store_true", help="list what would be fetched and what is cached")
    _add(wt_sub, "list", "the cached weight files, and whether the presets' backbones are cached", parent="weights")


# the grid's own dimensions, and where the sweep logs; every other run flag passes through
SWEEP_OWN = {"method", "noise", "noise_rate", "seed", "workers", "tracking_uri", "experiment"}


def add_sweep_parser(sub: Any) -> None:
    sw = _add(sub, "sweep", "run a grid of methods x noise settings x seeds (resumable, shardable)",
              "Run every grid point (methods x noise settings x seeds) as its own `bench run`; finished points "
              "are skipped and interrupted ones resumed when the sweep starts again. " + RESOLUTION)
    sw.add_argument("--methods", required=True, help="comma-separated methods, e.g. ce,coteaching,wrongevent; required")
    sw.add_argument("--noise", help="comma-separated MODEL:RATE settings, e.g. sym:0.2,pairflip:0.4, or none")
    sw.add_argument("--seeds", default="1", help="comma-separated training seeds")
    sw.add_argument("--workers", type=int, default=1, help="runs at once on this machine")
    sw.add_argument("--shard", help="I/N: run only this job's share of the grid (job arrays)")
    sw.add_argument("--dry-run", action="store_true", help="print the grid, what would run per method and a "
                                                           "GPU-hours estimate; run nothing")
    sw.add_argument("--status", action="store_true", help="each grid point's state: finished, running, failed "
                                                          "(its last error line) or not started; run nothing")
    sw.add_argument("--retry-failed", action="store_true", dest="retry_failed",
                    help="run only the grid points that failed (from their checkpoint where one was written)")
    sw.add_argument("--hours-per-run", type=float, dest="hours_per_run",
                    help="GPU-hours of one run, for the --dry-run estimate (default: from throughput measured on an "
                         "H200, where the backbone and data-set size are known)")
    sw.add_argument("--loader-workers", type=int, dest="loader_workers",
                    help="DataLoader workers of each run (bench run --workers)")
    sw.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    sw.add_argument("--experiment", default="bench", help=RUN_FLAGS["experiment"][1])
    add_run_flags(sw, skip=SWEEP_OWN)
    add_launcher_flags(sw, "--workers runs at once")


def add_launcher_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--launcher local|slurm`` and the Slurm job's resources (:mod:`bench.drivers.slurm`)."""
    g = parser.add_argument_group("cluster (--launcher slurm: one Slurm job array through submitit)")
    g.add_argument("--launcher", default="local",
                   help=f"local (default: {what} on this machine) or slurm (one array task each, requeued and "
                        "resumed on time limits and preemption)")
    g.add_argument("--slurm-partition", dest="slurm_partition", metavar="NAME",
                   help="the partition (default: the cluster's)")
    g.add_argument("--slurm-time", dest="slurm_time", metavar="TIME",
                   help="each task's time limit, minutes or [D-]HH:MM:SS (default 240); a run that needs longer "
                        "is requeued and resumed")
    g.add_argument("--slurm-gpus", dest="slurm_gpus", type=int, metavar="N",
                   help="GPUs per task (default 1; 0 for CPU nodes)")
    g.add_argument("--slurm-cpus", dest="slurm_cpus", type=int, metavar="N",
                   help="CPUs per task, also the run's threads (default: the cluster's)")
    g.add_argument("--slurm-mem", dest="slurm_mem", metavar="SIZE",
                   help="memory per task, as sbatch --mem takes it (e.g. 32G)")
    g.add_argument("--slurm-parallelism", dest="slurm_parallelism", type=int, metavar="N",
                   help="tasks of the array running at once (default: as many as the cluster allows)")
    g.add_argument("--slurm-setup", dest="slurm_setup", action="append", metavar="CMD",
                   help="a shell line run before each task, e.g. 'source ~/venv/bin/activate' (repeatable)")
    g.add_argument("--slurm-extra", dest="slurm_extra", action="append", metavar="KEY=VALUE",
                   help="another sbatch option by its long name, e.g. account=myproject, qos=high (repeatable)")
    g.add_argument("--slurm-max-requeues", dest="slurm_max_requeues", type=int, metavar="N",
                   help="requeues of a task after its time limit (default 10; preemptions do not count)")
    g.add_argument("--wait", action="store_true", help="wait until every submitted task has left the queue, then "
                                                       "print the outcome (exit 1 if any failed)")


def add_reproduce_parser(sub: Any) -> None:
    rp = _add(sub, "reproduce", "a published table: its grid as one sweep with the exact protocol, then its table",
              "Reproduce a published table (`bench list tables`): its methods, data sets, noise settings and "
              "protocol (backbone, optimiser, epochs, --fidelity official, seeds) run as sweeps into the "
              "experiment reproduce-NAME (resumable: run it again to continue), then its table beside the "
              "published numbers of the same protocol with the gap. A run option given here overrides the "
              "protocol, and is said. --data-root takes one folder, or DATASET=PATH,... for a table over "
              "several data sets. " + RESOLUTION)
    rp.add_argument("name", help="the table, e.g. ido-cifar100 (see `bench list tables`)")
    rp.add_argument("--methods", help="a subset of the table's methods (comma-separated)")
    rp.add_argument("--seeds", help="comma-separated training seeds (default: the table's)")
    rp.add_argument("--workers", type=int, default=1, help="runs at once on this machine")
    rp.add_argument("--shard", help="I/N: run only this job's share of each part's grid (job arrays)")
    rp.add_argument("--dry-run", action="store_true", help="print the grid, the number of runs and the "
                                                           "GPU-hours estimate; run nothing, read no data")
    rp.add_argument("--hours-per-run", type=float, dest="hours_per_run",
                    help="GPU-hours of one run, for the estimate (default: from throughput measured on an H200)")
    rp.add_argument("--format", default="md", help="md, latex or csv (the table)")
    rp.add_argument("--table-out", dest="table_out", help="write the table to this file (--out: the runs' folder)")
    rp.add_argument("--loader-workers", type=int, dest="loader_workers",
                    help="DataLoader workers of each run (bench run --workers)")
    rp.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    rp.add_argument("--experiment", default=None, help="default reproduce-NAME")
    add_run_flags(rp, skip=SWEEP_OWN | {"method"})
    add_launcher_flags(rp, "--workers runs at once")


def add_study_parsers(sub: Any) -> None:
    st = _add(sub, "study", "hyperparameter-sensitivity study with Optuna (a worker; start more to share)",
              "A hyperparameter-sensitivity study: every trial is a `bench run` on a validation split of the noisy "
              "training set. Start the same command on more machines to share the trials. " + RESOLUTION)
    add_run_flags(st)
    st.add_argument("--params", help="comma-separated parameters to tune (default: the method's own search space; "
                                     "see `bench list methods --verbose`)")
    st.add_argument("--trials", type=int, default=None,
                    help="finished trials the study should hold (default 20; grid: the grid's size + defaults)")
    st.add_argument("--sampler", default="tpe", help="tpe, random or grid")
    st.add_argument("--sampler-seed", type=int, default=None, help="seed of the sampler (one worker: reproducible)")
    st.add_argument("--pruner", default="median", help="median or none")
    st.add_argument("--storage", help="Optuna storage URL (default sqlite:///results/optuna.db; "
                                      "postgresql://USER:PASS@HOST/DB for many machines)")
    st.add_argument("--study-name", help="default METHOD-DATASET-NOISE (-official under --fidelity official)")
    st.add_argument("--heartbeat", type=int, default=30,
                    help="seconds between a trial's heartbeats; a trial silent for 2x+1 is failed and re-queued")
    st.add_argument("--study-workers", dest="study_workers", type=int, default=1,
                    help="workers of the study started by this command: child processes sharing this machine's "
                         "cores, or with --launcher slurm the tasks of one job array (default 1: this process)")
    add_launcher_flags(st, "the workers")
    sr = _add(sub, "study-report", "tables and plots of a study: trials, default vs best, importances")
    sr.add_argument("--study-name", required=True, help="the study's name; required")
    sr.add_argument("--storage", help="Optuna storage URL (default sqlite:///results/optuna.db)")
    sr.add_argument("--out", help="folder for the report (default results/studies/NAME/report)")


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run options of a `run`, `sweep` or `study` command line as a request dict (what
    :func:`bench.training.resolve.resolve` takes); flags not given are left out."""
    request = {k: getattr(args, k, None) for k in RUN_FLAGS}
    request.update(pretrained=args.pretrained, offline=args.offline, sets=args.sets)
    if getattr(args, "progress", "auto") != "auto":
        request["progress"] = args.progress == "bar"
    return {k: v for k, v in request.items() if v is not None}


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.drivers.perf import run_perf

    return run_perf(args, request_from_args(args))


def cmd_reproduce(args: argparse.Namespace) -> int:
    from bench.drivers.reproduce import run_reproduce

    request = request_from_args(args)
    request.pop("workers", None)
    if args.loader_workers is not None:
        request["workers"] = args.loader_workers
    return run_reproduce(args, request)


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.drivers.sweep import run_sweep

    request = request_from_args(args)
    request.pop("workers", None)  # the sweep's --workers is how many runs at once
    if args.loader_workers is not None:  # the runs' own --workers
        request["workers"] = args.loader_workers
    return run_sweep(args, request)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (a batch scheduler's kill) ends a run like Ctrl-C: the last epoch's checkpoint
    stands and the MLflow run is marked KILLED."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """:func:`_terminate` as the SIGTERM handler for the command's duration only: a caller running
    `main` in-process, as the tests do, keeps its own, and processes forked later do not inherit
    ours (the MLflow child, a study's trial workers)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_run(args: argparse.Namespace) -> int:
    """``bench run``: :func:`bench.drivers.runs.run_request` (which ``bench.run`` calls too), its
    summary printed as the last line on stdout."""
    from bench.drivers.runs import Interrupted, run_request
    from bench.training.tracking import new_tracker

    with _sigterm_as_interrupt():
        # MLflow's imports (seconds) run in a child process while this one resolves the request and
        # imports torch; the child opens the store only once every check has passed
        tracker = new_tracker()
        try:
            summary = run_request(request_from_args(args), resume=args.resume, stop_after=args.stop_after,
                                  started=args.started, tracker=tracker)
        except Interrupted:  # said where the run can be continued; no "bench: interrupted" after it
            raise SystemExit(130) from None
        finally:
            tracker.close()
    print(json.dumps(_jsonable(summary)))
    return EXIT_DIVERGED if summary.get("status") == "diverged" else 0


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def cmd_list(args: argparse.Namespace) -> int:
    """Everything registered, from the catalogue and the data-set modules: no torch import."""
    from bench.common.options import describe_options
    from bench.common.registry import describe
    from bench.training.catalogue import catalogue
    from bench.training.presets import describe_presets
    from datasets.base import DATASETS
    from datasets.noise import NOISE_MODELS, describe_noise

    cat = catalogue()
    if args.what == "published" or getattr(args, "method", None) or getattr(args, "dataset", None):
        return list_published(args, cat.methods, DATASETS)
    sections = ("methods", "datasets", "backbones", "noise", "presets", "views") if args.what == "all" else (args.what,)
    for section in sections:
        print(f"{section}:")
        if section == "methods":
            for name in cat.methods.names():
                e = cat.methods.get(name)
                print(f"  {name:<18} {e.doc}" + (f" (alias: {', '.join(e.aliases)})" if e.aliases else ""))
                print(f"  {'':<18} paper: {e.paper}; code: {e.code}")
                if args.verbose:
                    for line in [o.line for o in e.options] or ["(no options)"]:
                        print(f"      {line}")
                    print(f"      {e.space}")
                    print(f"      {describe_views(e.views, cat.views)}")
                    print(f"      {describe_fidelity(e.official)}")
        elif section == "datasets":
            for name in DATASETS.names():
                cls = DATASETS.get(name)
                print(f"  {name:<18} {describe(cls)}")
                if args.verbose:
                    for line in describe_options(cls) or ["(no options)"]:
                        print(f"      {line}")
        elif section == "tables":  # bench reproduce NAME
            from bench.drivers.reproduce import describe_tables

            for name, text in describe_tables():
                print(f"  {name:<18} {text}")
        elif section == "presets":
            for name, text, values in describe_presets():
                print(f"  {name:<18} {text}")
                if args.verbose and values:
                    print(f"      {values}")
        elif section == "views":
            for name, v in cat.views.items():
                owner = "shared" if v["owner"] == "bench" else v["owner"].removeprefix("methods.")
                print(f"  {name:<18} {v['shared']} ({owner})")
                if args.verbose:
                    print(f"      --views official: {v['official']}")
                    if v["source"]:
                        print(f"      source: {v['source']}")
        elif section == "backbones":
            for name in cat.backbones.names():
                print(f"  {name:<18} {cat.backbones.get(name).doc}")
            print(f"  {'timm:NAME':<18} any timm model (timm.create_model); --pretrained: timm's weights, downloaded "
                  "on first use (HF_HUB_OFFLINE=1 / --offline: from the cache only; `bench weights fetch`)")
        else:
            for name in NOISE_MODELS:
                print(f"  {name:<18} {describe_noise(name)}")
    return 0


def list_published(args: argparse.Namespace, methods: Any, datasets: Any) -> int:
    """``bench list published [--method M] [--dataset D]``: one line per published number
    (bench/records/published.py); unknown names fail with the valid ones."""
    if args.what != "published":
        raise UsageError(f"--method and --dataset filter `bench list published`, not `bench list {args.what}`")
    from bench.records.published import list_header, list_lines, published

    df = published()
    if args.method:
        df = df[df["method"] == methods.canonical(args.method)]
    if args.dataset:
        df = df[df["dataset"] == datasets.canonical(args.dataset)]
    print(list_header(len(df)))
    for line in list_lines(df):
        print(line)
    return 0


def describe_views(views: tuple[str, ...], known: dict[str, dict[str, str]]) -> str:
    """A method's views, and what they are under each view policy (--views), from the views'
    registry (:mod:`bench.common.views`, through the catalogue)."""
    own = "; ".join(f"{v}: shared = {known[v]['shared']}, official = {known[v]['official']}" for v in views)
    return "views: train (--augment)" + (f"; {own}" if own else " only (--views changes nothing)")


def describe_fidelity(official: tuple[tuple[str, str], ...]) -> str:
    """What ``--fidelity official`` sets of a method (its ``official_options``, each option's
    source in its own line above)."""
    if not official:
        return "fidelity official: sets no option (the same training under both)"
    return "fidelity official: " + ", ".join(f"{k}={v}" for k, v in official) + " (--set wins)"


def cmd_data(args: argparse.Namespace) -> int:
    """``data check``: print the report; exit 1 when it found faults, 0 when none."""
    if args.data_command == "synth":
        return cmd_data_synth(args)
    if args.data_command == "pack":
        return cmd_data_pack(args)
    from bench.common.options import build_options
    from datasets.base import DATASETS
    from datasets.check import check_dataset

    cls = DATASETS.get(args.dataset)
    ds = cls(build_options(cls, parse_set(args.sets), "data set"))
    lines, faults = check_dataset(ds, args.data_root, decode=not args.no_decode, original=args.original)
    print("\n".join(lines))
    return 1 if faults else 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    """``data pack``: write (or complete) the packed copy, reporting as it goes."""
    from bench.common.options import build_options
    from datasets.base import DATASETS
    from datasets.pack import pack_dataset

    cls = DATASETS.get(args.dataset)
    ds = cls(build_options(cls, parse_set(args.sets), "data set"))
    pack_dataset(ds, args.data_root, args.out, args.short_side, args.quality, args.jobs,
                 echo=lambda line: print(line, flush=True))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """``data synth``: write (or complete) the tree, then one line on speed and size."""
    from bench.common.cores import usable_cores
    from datasets.synth import describe, make_spec, write_tree

    spec = make_spec(args.layout, args.n, args.size, args.classes, args.seed, args.quality, args.noise_rate)
    jobs = args.jobs if args.jobs is not None else usable_cores()
    report = write_tree(spec, args.out, jobs, log=lambda line: print(line, file=sys.stderr))
    print(describe(spec, report, jobs, args.out))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the store, one worker, opened on the experiment's runs page."""
    from bench.training.tracking import experiment_url, serve_ui

    url = experiment_url(args.tracking_uri, args.experiment, f"http://{args.host}:{args.port}")
    return serve_ui(args.tracking_uri, args.host, args.port, args.workers, url, open_browser=not args.no_browser)


def _lazy(module: str, name: str) -> Any:
    """A command whose module (pandas, matplotlib, ...) is imported only when it runs."""
    def call(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return call


def cmd_study(args: argparse.Namespace) -> int:
    from bench.drivers.study import run_study

    with _sigterm_as_interrupt():  # a killed worker's trial run says KILLED, as a run's
        return run_study(args, request_from_args(args))


def cmd_weights(args: argparse.Namespace) -> int:
    from bench.drivers.weights import preset_requests, pretrained_models, run_fetch, run_list

    if args.weights_command == "list":
        return run_list()
    requests = preset_requests(args.preset, args.dataset)
    for name in args.backbone:
        if not name.startswith("timm:"):
            raise UsageError(f"--backbone {name}: only timm:NAME backbones have pretrained weights")
        from bench.backbones import check_backbone_name

        check_backbone_name(name)
        requests.append({"backbone": name, "pretrained": True})
    if args.sweep_args:
        requests += sweep_requests(args.sweep_args)
    if not requests:
        raise UsageError("name what to fetch: --preset NAME, --dataset NAME, --backbone timm:NAME or --sweep-args ARGS")
    return run_fetch(pretrained_models(requests), args.dry_run)


def sweep_requests(text: str) -> list[dict[str, Any]]:
    """The requests of the runs of the sweep that ``text`` (its arguments) describes."""
    from bench.drivers.sweep import sweep_points

    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--sweep-args {text!r}: {exc}") from None
    args = build_parser().parse_args(["sweep", *argv])
    base = request_from_args(args)
    return [point.request(base) for point in sweep_points(args)]


COMMANDS = {"run": cmd_run, "list": cmd_list, "ui": cmd_ui, "data": cmd_data, "sweep": cmd_sweep, "study": cmd_study,
            "reproduce": cmd_reproduce,
            "table": _lazy("bench.records.reports", "cmd_table"), "plot": _lazy("bench.records.figures", "cmd_plot"),
            "perf": cmd_perf, "weights": cmd_weights,
            "study-report": _lazy("bench.drivers.study_report", "cmd_study_report"),
            "report": _lazy("bench.records.report_page", "cmd_report")}


def _joined(argv: list[str]) -> list[str]:
    """``--sweep-args ARGS`` as ``--sweep-args=ARGS``: argparse would take ARGS, which starts
    with ``--``, for a flag of its own."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--sweep-args" and i + 1 < len(argv):
            out.append(f"--sweep-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()  # a run's setup time counts from here, imports included
    from bench.drivers.runs import progress_to_stderr  # the standard library only

    try:
        args = build_parser().parse_args(_joined(sys.argv[1:] if argv is None else list(argv)))
        args.started = started
        import datasets  # noqa: F401  (registers the data sets: numpy only; the methods load when needed)

        with progress_to_stderr():  # the trainer's lines (logging, "bench") as it says them
            return COMMANDS[args.command](args)
    except (UsageError, UnknownNameError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench ... | head` closed the pipe: stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
