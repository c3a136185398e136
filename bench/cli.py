"""Command line: ``python -m bench run|list|data|ui|sweep|table|plot|study|study-report|overhead``.

Every user error ends in one line on standard error and exit code 2; a run's last line on
standard output is one JSON object with its results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.config import AUGMENTS, DEVICES, OPTIMIZERS, SCHEDULERS, TRISTATE, RunConfig, parse_set
from bench.errors import UsageError
from bench.registry import UnknownNameError

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
    "scheduler": (str, f"one of {', '.join(SCHEDULERS)}"),
    "backbone": (str, "backbone name or timm:NAME (see `bench list backbones`)"),
    "weights": (str, "local weights file for --pretrained (nothing is downloaded)"),
    "augment": (str, f"augmentation of the shared training view: {', '.join(AUGMENTS)}"),
    "image_size": (int, "side in pixels of the images the backbone sees (default: the data set's)"),
    "subset": (int, "train on N samples, stratified by class, chosen by the noise seed (default: all)"),
    "val_fraction": (float, "hold out this fraction of the noisy training set (stratified by given label, "
                            "chosen by the noise seed) and log accuracy on it as val_acc"),
    "data_root": (str, "folder holding the data set (Fashion-MNIST: Debian's dataset-fashion-mnist)"),
    "device": (str, f"one of {', '.join(DEVICES)} (auto: CUDA when present)"),
    "amp": (str, f"mixed precision: {', '.join(TRISTATE)} (auto: on for CUDA)"),
    "channels_last": (str, f"channels-last memory format: {', '.join(TRISTATE)}"),
    "eval_batch_size": (int, "batch size of evaluation passes"),
    "workers": (int, "DataLoader workers for on-disk data sets"),
    "tracking_uri": (str, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)"),
    "experiment": (str, "MLflow experiment the run is logged to"),
    "out": (str, "folder for run folders"),
}
# options that still apply when resuming (where to log and what to run on)
RESUME_FLAGS = {"tracking_uri", "device", "data_root", "workers"}
GENERIC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)
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
            metavar = name.split("_")[-1].upper() if tp is not str else None
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None, metavar=metavar,
                                help=_run_flag_help(name, help_))
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                        help="load pretrained timm weights (--no-pretrained overrides a preset)")
    parser.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                        help="a method or data-set option (repeatable; see `bench list methods --verbose`, "
                             "`bench list datasets --verbose`)")


RESOLUTION = ("Options left out take the preset's value (--preset), then the data set's protocol default "
              "(`bench list datasets --verbose`), then the generic default shown.")
EXAMPLES = {
    "run": ["python -m bench run --method ce --noise sym --noise-rate 0.4 --epochs 5",
            "python -m bench run --method wrongevent --preset fmnist-cpu --noise pairflip --noise-rate 0.4",
            "python -m bench run --resume results/runs/RUN_FOLDER"],
    "list": ["python -m bench list", "python -m bench list methods --verbose"],
    "data": ["python -m bench data check --dataset cifar10 --data-root ~/data"],
    "check": ["python -m bench data check --dataset cifar10 --data-root ~/data",
              "python -m bench data check --dataset folder --data-root ~/mydata --no-decode"],
    "ui": ["python -m bench ui --experiment fmnist-cpu"],
    "sweep": ["python -m bench sweep --methods ce,dividemix,wrongevent --preset fmnist-cpu "
              "--noise sym:0.2,sym:0.4 --seeds 1,2,3 --workers 2 --experiment fmnist-cpu",
              "python -m bench sweep --methods ce,wrongevent --preset paper --dataset cifar100 --data-root ~/data "
              "--shard 1/4 --dry-run"],
    "table": ["python -m bench table --experiment fmnist-cpu --metric last_test_acc",
              "python -m bench table --experiment fmnist-cpu --time --format latex --out results/time.tex"],
    "plot": ["python -m bench plot --experiment fmnist-cpu --kind curves --out results/plots"],
    "study": ["python -m bench study --method dividemix --params lambda_u,p_threshold --preset fmnist-cpu "
              "--noise sym --noise-rate 0.4 --epochs 15 --trials 20"],
    "study-report": ["python -m bench study-report --study-name dividemix-fashion-mnist-sym0.4"],
    "overhead": ["python -m bench overhead --epochs 2 --repeats 3"],
}


def _add(sub: Any, name: str, help_: str, description: str = "") -> Parser:
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])
    text = textwrap.fill(description or help_[0].upper() + help_[1:] + ".", width=100)
    return sub.add_parser(name, help=help_, description=text, epilog=epilog)


def build_parser() -> Parser:
    p = Parser(prog="python -m bench", description="Benchmark harness for learning with noisy labels.",
               epilog="examples:\n  python -m bench run --method ce --noise sym --noise-rate 0.4 --epochs 5\n"
                      "  python -m bench list\n  python -m bench COMMAND --help")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
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
    lst = _add(sub, "list", "list registered methods, data sets, backbones, noise models and presets")
    lst.add_argument("what", nargs="?", choices=("all", "methods", "datasets", "backbones", "noise", "presets"),
                     default="all", help="what to list (default: all)")
    lst.add_argument("--verbose", "-v", action="store_true", help="also list options, study spaces and preset values")
    data = _add(sub, "data", "inspect a data set's files without training")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser, metavar="COMMAND")
    chk = _add(data_sub, "check", "counts, label ranges, missing and unreadable files, noise rate",
               "Check a data set's layout without training: exit 0 without faults, 1 with faults, 2 when the "
               "layout does not match.")
    chk.add_argument("--dataset", required=True, help="data set name (see `bench list datasets`); required")
    chk.add_argument("--data-root", default=None, help="folder holding the data set")
    chk.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help="a data-set option")
    chk.add_argument("--no-decode", action="store_true", help="skip decoding every image (existence only)")
    ui = _add(sub, "ui", "start the MLflow UI on the project's tracking store, at an experiment's runs")
    ui.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    ui.add_argument("--experiment", default="bench", help="experiment whose runs page the UI opens on")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on (0.0.0.0: every interface)")
    ui.add_argument("--port", type=int, default=5000, help="port the UI listens on")
    ui.add_argument("--workers", type=int, default=1, help="server worker processes")
    ui.add_argument("--no-browser", action="store_true", help="print the address only; open no browser")
    add_sweep_parser(sub)
    add_study_parsers(sub)
    tb = _add(sub, "table", "comparison table of an experiment's runs (mean ± std over seeds)",
              "Comparison table of an experiment's finished runs: methods as rows, settings as columns, mean ± "
              "std over seeds. Runs that differ in anything but the seed are never averaged: they are separate "
              "rows, labelled by what differs.")
    tb.add_argument("--experiment", required=True, help="MLflow experiment to read; required")
    tb.add_argument("--metric", default="best_test_acc", help="best_test_acc or last_test_acc")
    tb.add_argument("--format", default="md", help="md, latex or csv")
    tb.add_argument("--out", help="write the table to this file (default: standard output)")
    kind = tb.add_mutually_exclusive_group()
    kind.add_argument("--time", action="store_true", help="the wall-clock table, with ratios to DivideMix and CE")
    kind.add_argument("--detection", action="store_true", help="the clean_auc table")
    tb.add_argument("--paper", action="store_true", help="the IDO paper's numbers beside matching settings")
    tb.add_argument("--range", action="store_true", help="also [min, max] over seeds in each cell")
    tb.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    pl = _add(sub, "plot", "figures of an experiment's runs (300 dpi PNG and PDF)")
    pl.add_argument("--experiment", required=True, help="MLflow experiment to read; required")
    pl.add_argument("--kind", required=True, help="curves, pareto, wrong-events or detection; required")
    pl.add_argument("--out", default="results/plots", help="folder for the figures")
    pl.add_argument("--metric", default="last_test_acc", help="accuracy of the pareto plot")
    pl.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    ov = _add(sub, "overhead", "time the trainer against a bare PyTorch loop (same model and data)")
    ov.add_argument("--epochs", type=int, default=2, help="epochs per timed run (the first is excluded)")
    ov.add_argument("--repeats", type=int, default=3, help="interleaved repeats of trainer and bare loop")
    ov.add_argument("--subset", type=int, default=None, help="train on N Fashion-MNIST samples (default: all)")
    ov.add_argument("--batch-size", type=int, default=128, help="training batch size")
    ov.add_argument("--backbone", default="smallcnn", help="backbone of both loops")
    return p


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
    sw.add_argument("--dry-run", action="store_true", help="print the grid and what would run, run nothing")
    sw.add_argument("--loader-workers", type=int, dest="loader_workers",
                    help="DataLoader workers of each run (bench run --workers)")
    sw.add_argument("--tracking-uri", default=None, help=RUN_FLAGS["tracking_uri"][1])
    sw.add_argument("--experiment", default="bench", help=RUN_FLAGS["experiment"][1])
    add_run_flags(sw, skip=SWEEP_OWN)


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
    st.add_argument("--study-name", help="default METHOD-DATASET-NOISE")
    st.add_argument("--heartbeat", type=int, default=30,
                    help="seconds between a trial's heartbeats; a trial silent for 2x+1 is failed and re-queued")
    sr = _add(sub, "study-report", "tables and plots of a study: trials, default vs best, importances")
    sr.add_argument("--study-name", required=True, help="the study's name; required")
    sr.add_argument("--storage", help="Optuna storage URL (default sqlite:///results/optuna.db)")
    sr.add_argument("--out", help="folder for the report (default results/studies/NAME/report)")


def sweep_run_args(args: argparse.Namespace) -> list[str]:
    """The ``bench run`` flags every run of the sweep gets."""
    out: list[str] = []
    for name in RUN_FLAGS:
        if name in SWEEP_OWN or getattr(args, name) is None:
            continue
        value = getattr(args, name)
        if name == "preset" and value in ("paper", "paper-vit"):
            value = args.dataset + ("-vit" if value == "paper-vit" else "")
        out += ["--" + name.replace("_", "-"), str(value)]
    if args.pretrained is not None:
        out.append("--pretrained" if args.pretrained else "--no-pretrained")
    if args.loader_workers is not None:
        out += ["--workers", str(args.loader_workers)]
    for pair in args.sets or []:
        out += ["--set", pair]
    return out


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.sweep import Sweep, parse_shard, shard, sweep_points
    from bench.tracking import default_tracking_uri

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    points = shard(sweep_points(args), *parse_shard(args.shard))
    uri = args.tracking_uri or default_tracking_uri()
    log_dir = Path(args.out or "results/runs").parent / "sweeps" / args.experiment
    return Sweep(points, sweep_run_args(args), uri, args.experiment, args.workers, log_dir).run(args.dry_run)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Command line over the preset, over the data set's protocol defaults, over RunConfig's own
    defaults. Needs neither torch nor the method modules (their names and options come from
    :mod:`bench.catalogue`)."""
    from bench.catalogue import catalogue
    from bench.presets import get_preset
    from datasets.base import DATASETS

    methods = catalogue().methods
    if args.method is None:
        raise UsageError(f"--method is required; valid: {', '.join(methods.names())}")
    method = methods.canonical(args.method)
    dataset_arg = args.dataset if args.dataset is None else DATASETS.canonical(args.dataset)
    preset = get_preset(args.preset, dataset_arg) if args.preset else None
    dataset = DATASETS.canonical(dataset_arg or (preset.values["dataset"] if preset else "fashion-mnist"))
    values: dict[str, Any] = dict(DATASETS.get(dataset).defaults)
    dataset_sets: dict[str, str] = {}
    if preset is not None:
        values.update(preset.values)
        if dataset == preset.values["dataset"]:
            dataset_sets.update(preset.dataset_options)
        values["preset"] = preset.name
    values.update({k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k) is not None and k != "preset"})
    values.update(method=method, dataset=dataset)
    if args.pretrained is not None:
        values["pretrained"] = args.pretrained
    method_sets, ds_sets = split_sets(parse_set(args.sets), methods.get(method), DATASETS.get(dataset))
    dataset_sets.update(ds_sets)
    values["method_options"], values["dataset_options"] = method_sets, dataset_sets
    cfg = RunConfig.from_dict(values)
    cfg.validate()
    return cfg


def split_sets(sets: dict[str, str], method: Any, dataset_cls: Any) -> tuple[dict[str, str], dict[str, str]]:
    """``--set`` pairs by owner: the data set's option names, else the method's (``method`` is
    its catalogue entry). A key neither has fails with both lists of valid names, or, for a
    run option, with the flag to use instead."""
    from bench.options import option_names

    ds_names, m_names = option_names(dataset_cls), method.option_names
    unknown = [k for k in sets if k not in ds_names and k not in m_names]
    if unknown:
        key = unknown[0]
        flag = key.replace("-", "_")
        if flag in RUN_FLAGS or flag == "pretrained":
            raise UsageError(f"--set {key}={sets[key]}: {key} is a run option, not a method or data-set option; "
                             f"use --{flag.replace('_', '-')} {sets[key]}")
        valid = ", ".join(sorted(m_names)) or "(none)"
        dvalid = ", ".join(sorted(ds_names)) or "(none)"
        raise UsageError(f"--set {key}: neither method {method.name!r} nor data set {dataset_cls.name!r} "
                         f"has an option {key!r}; method options: {valid}; data-set options: {dvalid}")
    return ({k: v for k, v in sets.items() if k not in ds_names}, {k: v for k, v in sets.items() if k in ds_names})


def check_run_config(cfg: RunConfig) -> None:
    """Fail on names and options before any data is read or anything is written: first what
    needs no torch (names, values, files, the types of ``--set`` values), then what does
    (timm model names, CUDA, the method options' own checks)."""
    from bench.catalogue import catalogue
    from bench.options import build_options, typed_values
    from datasets.base import DATASETS
    from datasets.noise import NoiseError, NoiseSpec

    if cfg.augment not in AUGMENTS:
        raise UsageError(f"--augment {cfg.augment}: valid values are {', '.join(AUGMENTS)}")
    try:
        NoiseSpec(cfg.noise, cfg.noise_rate, cfg.noise_seed)
    except NoiseError as exc:
        raise UsageError(str(exc)) from None
    ds_cls = DATASETS.get(cfg.dataset)
    dataset = ds_cls(build_options(ds_cls, {k: str(v) for k, v in cfg.dataset_options.items()}, "data set"))
    dataset.check_noise(cfg.noise)
    dataset.check_root(cfg.data_root)
    timm = cfg.backbone.startswith("timm:")
    if not timm:
        catalogue().backbones.canonical(cfg.backbone)
    if (cfg.pretrained or cfg.weights) and not timm:
        raise UsageError(f"backbone {cfg.backbone!r} has no pretrained weights; use a timm:NAME backbone")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights {cfg.weights}: no such file")
    entry = catalogue().methods.get(cfg.method)
    typed_values(entry.name, {o.name: o.annotation() for o in entry.options},
                 {k: str(v) for k, v in cfg.method_options.items()})
    # what needs torch, timm or the method's own code
    from bench.catalogue import method_class
    from bench.models import check_backbone_name
    from bench.trainer import resolve_device

    resolve_device(cfg.device)
    if timm:
        check_backbone_name(cfg.backbone)
    build_options(method_class(cfg.method), {k: str(v) for k, v in cfg.method_options.items()})


def new_run_dir(cfg: RunConfig) -> Path:
    """``<out>/<run name>-<time>-<id>``: listed by method and setting, unique per start."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.out) / f"{cfg.run_name}-{stamp}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (a batch scheduler's kill) ends a run like Ctrl-C: the last epoch's checkpoint
    stands and the MLflow run is marked KILLED."""
    raise KeyboardInterrupt


def _run_trainer(trainer: Any, resume: bool) -> dict[str, Any]:
    try:
        return trainer.run(resume=resume)
    except KeyboardInterrupt:
        if (trainer.run_dir / "checkpoint.pt").exists():
            print(f"bench: interrupted; the last finished epoch is checkpointed: continue with "
                  f"python -m bench run --resume {trainer.run_dir}", file=sys.stderr)
        raise SystemExit(130) from None


def cmd_run(args: argparse.Namespace) -> int:
    from bench.tracking import TrackerProcess

    signal.signal(signal.SIGTERM, _terminate)
    # MLflow's imports (seconds) run in this child while this process resolves the request and
    # imports torch; the child opens the store only once every check has passed
    tracker = TrackerProcess()
    try:
        return _run(args, tracker)
    finally:
        tracker.close()


def _run(args: argparse.Namespace, tracker: Any) -> int:
    progress = None if args.progress == "auto" else args.progress == "bar"
    if args.resume:
        run_dir = Path(args.resume)
        cfg = resume_config(args, run_dir)
        if (run_dir / "summary.json").exists():
            print(f"run in {run_dir} has already finished; its summary follows", file=sys.stderr)
            print(json.dumps(json.loads((run_dir / "summary.json").read_text())))
            return 0
        from bench.trainer import Trainer

        trainer = Trainer(cfg, run_dir, progress=progress, stop_after=args.stop_after, started=args.started,
                          tracker=tracker)
        summary = _run_trainer(trainer, True)
    else:
        cfg = config_from_args(args)
        check_run_config(cfg)
        from bench.trainer import Trainer

        run_dir = new_run_dir(cfg)
        trainer = Trainer(cfg, run_dir, progress=progress, stop_after=args.stop_after, started=args.started,
                          tracker=tracker)
        try:
            summary = _run_trainer(trainer, False)
        except UsageError:
            # failed before its first checkpoint (e.g. weights not found): leave nothing behind
            if not any(run_dir.glob("checkpoint.pt")):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    if summary["status"] == "stopped":
        print(f"stopped after epoch {summary['epochs_done']}; continue with: "
              f"python -m bench run --resume {run_dir}", file=sys.stderr)
    print(json.dumps(_jsonable(summary)))
    return 0


def resume_config(args: argparse.Namespace, run_dir: Path) -> RunConfig:
    from bench.trainer import CHECKPOINT

    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such folder; give a run folder under results/runs/")
    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / "config.json").is_file():
        raise UsageError(f"--resume {run_dir}: no checkpoint there ({CHECKPOINT} and config.json); "
                         "give a run folder under results/runs/")
    try:
        cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError; a missing key a TypeError
        raise UsageError(f"--resume {run_dir}: config.json is damaged ({exc}); the run cannot be resumed") from None
    saved = cfg.to_dict()
    # a flag that repeats the saved value is harmless; one that changes it is refused
    changed = [k for k in RUN_FLAGS if getattr(args, k) is not None and k not in RESUME_FLAGS
               and _canonical(k, getattr(args, k)) != saved[k]]
    if changed or args.sets or args.pretrained is not None:
        names = ", ".join("--" + k.replace("_", "-") for k in changed) or "--set/--pretrained"
        raise UsageError(f"--resume continues a run with its saved configuration; drop {names}")
    for k in RESUME_FLAGS:
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    return cfg


def _canonical(key: str, value: Any) -> Any:
    """Registered name for method and data-set flags, so an alias is no change."""
    from bench.catalogue import catalogue
    from datasets.base import DATASETS

    registry = {"method": catalogue().methods, "dataset": DATASETS}.get(key)
    if registry is None or value not in registry:
        return value
    return registry.canonical(value)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def cmd_list(args: argparse.Namespace) -> int:
    """Everything registered, from the catalogue and the data-set modules: no torch import."""
    from bench.catalogue import catalogue
    from bench.options import describe_options
    from bench.presets import describe_presets
    from bench.registry import describe
    from datasets.base import DATASETS
    from datasets.noise import NOISE_MODELS, describe_noise

    cat = catalogue()
    sections = ("methods", "datasets", "backbones", "noise", "presets") if args.what == "all" else (args.what,)
    for section in sections:
        print(f"{section}:")
        if section == "methods":
            for name in cat.methods.names():
                e = cat.methods.get(name)
                print(f"  {name:<18} {e.doc}" + (f" (alias: {', '.join(e.aliases)})" if e.aliases else ""))
                if args.verbose:
                    for line in [o.line for o in e.options] or ["(no options)"]:
                        print(f"      {line}")
                    print(f"      {e.space}")
        elif section == "datasets":
            for name in DATASETS.names():
                cls = DATASETS.get(name)
                print(f"  {name:<18} {describe(cls)}")
                if args.verbose:
                    for line in describe_options(cls) or ["(no options)"]:
                        print(f"      {line}")
        elif section == "presets":
            for name, text, values in describe_presets():
                print(f"  {name:<18} {text}")
                if args.verbose and values:
                    print(f"      {values}")
        elif section == "backbones":
            for name in cat.backbones.names():
                print(f"  {name:<18} {cat.backbones.get(name).doc}")
            print(f"  {'timm:NAME':<18} any timm model (timm.create_model); --pretrained needs cached or --weights")
        else:
            for name in NOISE_MODELS:
                print(f"  {name:<18} {describe_noise(name)}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """``data check``: print the report; exit 1 when it found faults, 0 when none."""
    from bench.options import build_options
    from datasets.base import DATASETS
    from datasets.check import check_dataset

    cls = DATASETS.get(args.dataset)
    ds = cls(build_options(cls, parse_set(args.sets), "data set"))
    lines, faults = check_dataset(ds, args.data_root, decode=not args.no_decode)
    print("\n".join(lines))
    return 1 if faults else 0


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the store, one worker, opened on the experiment's runs page."""
    from bench.tracking import experiment_url, serve_ui

    url = experiment_url(args.tracking_uri, args.experiment, f"http://{args.host}:{args.port}")
    return serve_ui(args.tracking_uri, args.host, args.port, args.workers, url, open_browser=not args.no_browser)


def _lazy(module: str, name: str) -> Any:
    """A command whose module (pandas, matplotlib, ...) is imported only when it runs."""
    def call(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return call


COMMANDS = {"run": cmd_run, "list": cmd_list, "ui": cmd_ui, "data": cmd_data, "sweep": cmd_sweep,
            "table": _lazy("bench.reports", "cmd_table"), "plot": _lazy("bench.figures", "cmd_plot"),
            "overhead": _lazy("bench.overhead", "cmd_overhead"), "study": _lazy("bench.study", "cmd_study"),
            "study-report": _lazy("bench.study_report", "cmd_study_report")}


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()  # a run's setup time counts from here, imports included
    try:
        args = build_parser().parse_args(argv)
        args.started = started
        import datasets  # noqa: F401  (registers the data sets: numpy only; the methods load when needed)

        return COMMANDS[args.command](args)
    except (UsageError, UnknownNameError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
