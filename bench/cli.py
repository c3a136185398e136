"""Command line: ``python -m bench run|list|data|ui|sweep|table|plot|study|study-report|overhead``.

Every user error ends in one line on standard error and exit code 2; a run's last line on
standard output is one JSON object with its results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.config import DEVICES, OPTIMIZERS, SCHEDULERS, TRISTATE, RunConfig, parse_set
from bench.errors import UsageError
from bench.registry import UnknownNameError

# run options that map one-to-one onto RunConfig fields (flag -> type)
RUN_FLAGS: dict[str, tuple[type, str]] = {
    "method": (str, "method name (see `bench list methods`)"),
    "preset": (str, "a named protocol (see `bench list presets`); other flags override its values"),
    "dataset": (str, "data set name (default fashion-mnist)"),
    "noise": (str, "noise model: none, sym, sym-biased, pairflip, asym, instance"),
    "noise_rate": (float, "noise rate in [0, 1)"),
    "noise_seed": (int, "seed of the noisy labels and the subset (default 1)"),
    "seed": (int, "training seed (default 1)"),
    "epochs": (int, "total epochs"),
    "batch_size": (int, "training batch size"),
    "lr": (float, "learning rate"),
    "optimizer": (str, f"one of {', '.join(OPTIMIZERS)}"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay"),
    "scheduler": (str, f"one of {', '.join(SCHEDULERS)}"),
    "backbone": (str, "backbone name or timm:NAME (see `bench list backbones`)"),
    "weights": (str, "local weights file for --pretrained"),
    "augment": (str, "weak-view augmentation: none, flip, crop, crop-flip"),
    "image_size": (int, "side in pixels of the images the backbone sees (default: the data set's)"),
    "subset": (int, "train on N samples, stratified by class, chosen by the noise seed"),
    "val_fraction": (float, "hold out this fraction of the noisy training set (stratified by given label, "
                            "chosen by the noise seed) and log accuracy on it as val_acc"),
    "data_root": (str, "folder holding the data set"),
    "device": (str, f"one of {', '.join(DEVICES)}"),
    "amp": (str, f"mixed precision: {', '.join(TRISTATE)} (auto: on for CUDA)"),
    "channels_last": (str, f"channels-last memory format: {', '.join(TRISTATE)}"),
    "eval_batch_size": (int, "batch size of evaluation passes"),
    "workers": (int, "DataLoader workers for on-disk data sets"),
    "tracking_uri": (str, "MLflow tracking URI (default sqlite:///results/mlflow.db)"),
    "experiment": (str, "MLflow experiment name (default bench)"),
    "out": (str, "folder for run folders (default results/runs)"),
}
# options that still apply when resuming (where to log and what to run on)
RESUME_FLAGS = {"tracking_uri", "device", "data_root", "workers"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> Parser:
    p = Parser(prog="python -m bench", description="Benchmark harness for learning with noisy labels.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="train one method on one data set and noise setting")
    for name, (tp, help_) in RUN_FLAGS.items():
        run.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None, help=help_)
    run.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                     help="load pretrained timm weights (--no-pretrained overrides a preset)")
    run.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                     help="a method or data-set option (repeatable; see `bench list methods --verbose`, "
                          "`bench list datasets --verbose`)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    run.add_argument("--stop-after", type=int, metavar="N",
                     help="stop (resumably) once N epochs are done, e.g. to split a run across jobs")
    run.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                     help="tqdm bar (default on a terminal) or plain lines")
    lst = sub.add_parser("list", help="list registered methods, data sets, backbones and noise models")
    lst.add_argument("what", nargs="?", choices=("all", "methods", "datasets", "backbones", "noise", "presets"),
                     default="all")
    lst.add_argument("--verbose", "-v", action="store_true", help="also list options and preset values")
    data = sub.add_parser("data", help="inspect a data set's files without training")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    chk = data_sub.add_parser("check", help="counts, label ranges, missing and unreadable files, noise rate")
    chk.add_argument("--dataset", required=True)
    chk.add_argument("--data-root", default=None)
    chk.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help="a data-set option")
    chk.add_argument("--no-decode", action="store_true", help="skip decoding every image (existence only)")
    ui = sub.add_parser("ui", help="start the MLflow UI on the project's tracking store")
    ui.add_argument("--tracking-uri", default=None)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    add_sweep_parser(sub)
    add_study_parsers(sub)
    tb = sub.add_parser("table", help="comparison table of an experiment's runs (mean ± std over seeds)")
    tb.add_argument("--experiment", required=True)
    tb.add_argument("--metric", default="best_test_acc", help="best_test_acc or last_test_acc")
    tb.add_argument("--format", default="md", help="md, latex or csv")
    tb.add_argument("--out", help="write the table to this file")
    kind = tb.add_mutually_exclusive_group()
    kind.add_argument("--time", action="store_true", help="the wall-clock table, with ratios to DivideMix and CE")
    kind.add_argument("--detection", action="store_true", help="the clean_auc table")
    tb.add_argument("--paper", action="store_true", help="the IDO paper's numbers beside matching settings")
    tb.add_argument("--range", action="store_true", help="also [min, max] over seeds in each cell")
    tb.add_argument("--tracking-uri", default=None)
    pl = sub.add_parser("plot", help="figures of an experiment's runs (PNG)")
    pl.add_argument("--experiment", required=True)
    pl.add_argument("--kind", required=True, help="curves, pareto, wrong-events or detection")
    pl.add_argument("--out", default="results/plots", help="folder for the PNG files")
    pl.add_argument("--metric", default="last_test_acc", help="accuracy of the pareto plot")
    pl.add_argument("--tracking-uri", default=None)
    ov = sub.add_parser("overhead", help="time the trainer against a bare PyTorch loop (same model and data)")
    ov.add_argument("--epochs", type=int, default=2)
    ov.add_argument("--repeats", type=int, default=3)
    ov.add_argument("--subset", type=int, default=None)
    ov.add_argument("--batch-size", type=int, default=128)
    ov.add_argument("--backbone", default="smallcnn")
    return p


# the grid's own dimensions, and where the sweep logs; every other run flag passes through
SWEEP_OWN = {"method", "noise", "noise_rate", "seed", "workers", "tracking_uri", "experiment"}


def add_sweep_parser(sub: Any) -> None:
    sw = sub.add_parser("sweep", help="run a grid of methods x noise settings x seeds (resumable, shardable)")
    sw.add_argument("--methods", required=True, help="comma-separated methods, e.g. ce,coteaching,wrongevent")
    sw.add_argument("--noise", help="comma-separated MODEL:RATE settings, e.g. sym:0.2,pairflip:0.4, or none")
    sw.add_argument("--seeds", default="1", help="comma-separated training seeds (default 1)")
    sw.add_argument("--workers", type=int, default=1, help="runs at once on this machine (default 1)")
    sw.add_argument("--shard", help="I/N: run only this job's share of the grid")
    sw.add_argument("--dry-run", action="store_true", help="print the grid and what would run, run nothing")
    sw.add_argument("--loader-workers", type=int, dest="loader_workers",
                    help="DataLoader workers of each run (bench run --workers)")
    sw.add_argument("--tracking-uri", default=None)
    sw.add_argument("--experiment", default="bench")
    for name, (tp, help_) in RUN_FLAGS.items():
        if name not in SWEEP_OWN:
            sw.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None, help=help_)
    sw.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    sw.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE")


def add_study_parsers(sub: Any) -> None:
    st = sub.add_parser("study", help="hyperparameter-sensitivity study with Optuna (a worker; start more to share)")
    for name, (tp, help_) in RUN_FLAGS.items():
        st.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None, help=help_)
    st.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    st.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                    help="a method or data-set option every trial gets")
    st.add_argument("--params", help="comma-separated parameters to tune (default: the method's own search space; "
                                     "see `bench list methods --verbose`)")
    st.add_argument("--trials", type=int, default=None,
                    help="finished trials the study should hold (default 20; grid: the grid's size + defaults)")
    st.add_argument("--sampler", default="tpe", help="tpe (default), random or grid")
    st.add_argument("--sampler-seed", type=int, default=None, help="seed of the sampler (one worker: reproducible)")
    st.add_argument("--pruner", default="median", help="median (default) or none")
    st.add_argument("--storage", help="Optuna storage URL (default sqlite:///results/optuna.db; "
                                      "postgresql://USER:PASS@HOST/DB for many machines)")
    st.add_argument("--study-name", help="default METHOD-DATASET-NOISE")
    st.add_argument("--heartbeat", type=int, default=30,
                    help="seconds between a trial's heartbeats; a trial silent for 2x+1 is failed and re-queued")
    sr = sub.add_parser("study-report", help="tables and plots of a study: trials, default vs best, importances")
    sr.add_argument("--study-name", required=True)
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
    """Command line over the data set's protocol defaults over RunConfig's own defaults."""
    from bench.presets import get_preset
    from datasets.base import DATASETS
    from methods.base import METHODS

    if args.method is None:
        raise UsageError(f"--method is required; valid: {', '.join(METHODS.names())}")
    method = METHODS.canonical(args.method)
    preset = get_preset(args.preset) if args.preset else None
    dataset = DATASETS.canonical(args.dataset or (preset.values["dataset"] if preset else "fashion-mnist"))
    values: dict[str, Any] = dict(DATASETS.get(dataset).defaults)
    dataset_sets: dict[str, str] = {}
    if preset is not None:
        values.update(preset.values)
        if dataset == preset.values["dataset"]:
            dataset_sets.update(preset.dataset_options)
    values.update({k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k) is not None})
    values.update(method=method, dataset=dataset)
    if args.pretrained is not None:
        values["pretrained"] = args.pretrained
    method_sets, ds_sets = split_sets(parse_set(args.sets), METHODS.get(method), DATASETS.get(dataset))
    dataset_sets.update(ds_sets)
    values["method_options"], values["dataset_options"] = method_sets, dataset_sets
    cfg = RunConfig.from_dict(values)
    cfg.validate()
    return cfg


def split_sets(sets: dict[str, str], method_cls: Any, dataset_cls: Any) -> tuple[dict[str, str], dict[str, str]]:
    """``--set`` pairs by owner: the data set's option names, else the method's. A key neither
    has fails with both lists of valid names."""
    from bench.options import option_names

    ds_names, m_names = option_names(dataset_cls), option_names(method_cls)
    unknown = [k for k in sets if k not in ds_names and k not in m_names]
    if unknown:
        valid = ", ".join(sorted(m_names)) or "(none)"
        dvalid = ", ".join(sorted(ds_names)) or "(none)"
        raise UsageError(f"--set {unknown[0]}: neither method {method_cls.name!r} nor data set {dataset_cls.name!r} "
                         f"has an option {unknown[0]!r}; method options: {valid}; data-set options: {dvalid}")
    return ({k: v for k, v in sets.items() if k not in ds_names}, {k: v for k, v in sets.items() if k in ds_names})


def check_run_config(cfg: RunConfig) -> None:
    """Fail on names and options before any data is read."""
    from bench.data import AUGMENTS
    from bench.models import check_backbone_name
    from bench.options import build_options
    from datasets.base import DATASETS
    from datasets.noise import NoiseError, NoiseSpec
    from methods.base import METHODS

    if cfg.augment not in AUGMENTS:
        raise UsageError(f"--augment {cfg.augment}: valid values are {', '.join(AUGMENTS)}")
    try:
        NoiseSpec(cfg.noise, cfg.noise_rate, cfg.noise_seed)
    except NoiseError as exc:
        raise UsageError(str(exc)) from None
    from bench.trainer import resolve_device

    resolve_device(cfg.device)
    ds_cls = DATASETS.get(cfg.dataset)
    dataset = ds_cls(build_options(ds_cls, {k: str(v) for k, v in cfg.dataset_options.items()}, "data set"))
    dataset.check_noise(cfg.noise)
    dataset.check_root(cfg.data_root)
    check_backbone_name(cfg.backbone)
    if (cfg.pretrained or cfg.weights) and not cfg.backbone.startswith("timm:"):
        raise UsageError(f"backbone {cfg.backbone!r} has no pretrained weights; use a timm:NAME backbone")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights {cfg.weights}: no such file")
    build_options(METHODS.get(cfg.method), {k: str(v) for k, v in cfg.method_options.items()})


def new_run_dir(cfg: RunConfig) -> Path:
    noise = "clean" if cfg.noise == "none" else f"{cfg.noise}{cfg.noise_rate:g}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.out) / f"{stamp}-{cfg.method}-{cfg.dataset}-{noise}-s{cfg.seed}-{uuid.uuid4().hex[:6]}"
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
    from bench.trainer import Trainer

    signal.signal(signal.SIGTERM, _terminate)

    progress = None if args.progress == "auto" else args.progress == "bar"
    if args.resume:
        run_dir = Path(args.resume)
        cfg = resume_config(args, run_dir)
        if (run_dir / "summary.json").exists():
            print(f"run in {run_dir} has already finished; its summary follows", file=sys.stderr)
            print(json.dumps(json.loads((run_dir / "summary.json").read_text())))
            return 0
        summary = _run_trainer(Trainer(cfg, run_dir, progress=progress, stop_after=args.stop_after), True)
    else:
        cfg = config_from_args(args)
        check_run_config(cfg)
        run_dir = new_run_dir(cfg)
        try:
            summary = _run_trainer(Trainer(cfg, run_dir, progress=progress, stop_after=args.stop_after), False)
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
    from datasets.base import DATASETS
    from methods.base import METHODS

    registry = {"method": METHODS, "dataset": DATASETS}.get(key)
    if registry is None or value not in registry:
        return value
    return registry.canonical(value)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def cmd_list(args: argparse.Namespace) -> int:
    from bench.models import backbone_descriptions
    from bench.options import describe_options as describe_dataset_options
    from bench.presets import PRESETS
    from bench.registry import describe
    from datasets.base import DATASETS
    from datasets.noise import NOISE_MODELS
    from methods.base import METHODS, describe_options

    sections = ("methods", "datasets", "backbones", "noise", "presets") if args.what == "all" else (args.what,)
    for section in sections:
        print(f"{section}:")
        if section == "methods":
            for name in METHODS.names():
                cls = METHODS.get(name)
                alias = METHODS.aliases_of(name)
                print(f"  {name:<18} {describe(cls)}" + (f" (alias: {', '.join(alias)})" if alias else ""))
                if args.verbose:
                    for line in describe_options(cls) or ["(no options)"]:
                        print(f"      {line}")
                    print(f"      {describe_space(cls)}")
        elif section == "datasets":
            for name in DATASETS.names():
                cls = DATASETS.get(name)
                print(f"  {name:<18} {describe(cls)}")
                if args.verbose:
                    for line in describe_dataset_options(cls) or ["(no options)"]:
                        print(f"      {line}")
        elif section == "presets":
            for name, preset in sorted(PRESETS.items()):
                print(f"  {name:<18} {preset.description}")
                if args.verbose:
                    values = {**preset.values, **{f"set {k}": v for k, v in preset.dataset_options.items()}}
                    print("      " + ", ".join(f"{k}={v}" for k, v in values.items()))
        elif section == "backbones":
            for name, text in backbone_descriptions():
                print(f"  {name:<18} {text}")
        else:
            for name in NOISE_MODELS:
                print(f"  {name}")
    return 0


def describe_space(cls: Any) -> str:
    """The method's study space, as it is at 40% synthetic noise and 30 epochs."""
    from bench.search import Setting

    space = cls.search_space(Setting(0.4, 30))
    if not space:
        return "study space: none (no method hyperparameters; --params lr,weight_decay,batch_size)"
    parts = [f"{k} {p.choices}" if p.kind == "categorical" else f"{k} [{p.low:g}, {p.high:g}]{' log' if p.log else ''}"
             for k, p in space.items()]
    return "study space (at 40% noise, 30 epochs): " + ", ".join(parts)


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
    from bench.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it", file=sys.stderr)
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


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
    try:
        args = build_parser().parse_args(argv)
        import datasets  # noqa: F401  (registers the data sets)
        import methods  # noqa: F401  (registers the methods)

        return COMMANDS[args.command](args)
    except (UsageError, UnknownNameError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
