"""The trainer: devices, precision, loops, evaluation, logging, timing, checkpoints, resume.

One :class:`Trainer` runs one configuration end to end. Methods (see :mod:`methods.base`)
supply models and a step; the trainer does everything around them, identically for every
method, so that accuracy and time differences come from the methods alone. Per step the
trainer does no host-device synchronisation: running sums stay on the device and are read
once per epoch.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.catalogue import method_class
from bench.config import RunConfig
from bench.data import DiskLoader, InMemoryLoader, epoch_generator, file_transforms, make_view_maker
from bench.errors import UsageError
from bench.models import create_backbone
from bench.options import build_options
from bench.tracking import Tracker, TrackerProcess, git_commit
from datasets.base import DATASETS, Dataset, NoiseReport, TrainSet, make_train_set
from datasets.noise import NoiseError, NoiseSpec
from methods.base import Method, MethodContext

CHECKPOINT = "checkpoint.pt"


class Stopped(Exception):
    """The run stopped before its last epoch (``--stop-after``); its checkpoint stands."""


class Pruned(Stopped):
    """The epoch callback (a study's pruner) stopped the run early."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; valid: auto, cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_optimizer(cfg: RunConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, epochs: int) -> Any:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    return None


@dataclass
class History:
    """What the run has done so far; saved in every checkpoint."""

    epochs_done: int = 0
    # the metrics of the last finished epoch: logged after the checkpoint that holds them, and
    # logged again on resume if a kill came in between
    last_metrics: dict[str, float] = field(default_factory=dict)
    test_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)  # with --val-fraction
    wall_clock_s: float = 0.0

    @property
    def best(self) -> tuple[float, int]:
        i = int(np.argmax(self.test_acc))
        return self.test_acc[i], i + 1


class EpochStats:
    """Running sums of a training epoch, kept on the device (one sync per epoch)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.n_acc = 0

    def _add(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().float()
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def add(self, out: Any, batch: dict[str, torch.Tensor]) -> None:
        bs = batch["label"].shape[0]
        self.n += bs
        self._add("train_loss", out.loss * bs)
        if out.logits is not None:
            self.n_acc += bs
            self._add("train_correct", (out.logits.argmax(1) == batch["label"]).sum())
        for k, v in out.terms.items():
            self._add(k, v * bs)

    def result(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).tolist()
        res = {}
        for k, v in zip(keys, values, strict=True):
            if k == "train_correct":
                res["train_acc"] = v / max(self.n_acc, 1)
            else:
                res[k] = v / max(self.n, 1)
        return res


class Trainer:
    """Runs one configuration; ``run()`` returns the summary dict the command line prints."""

    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool | None = None,
                 stop_after: int | None = None, epoch_callback: Any = None,
                 tags: dict[str, str] | None = None, started: float | None = None,
                 tracker: Any = None) -> None:
        self.cfg = cfg
        # the MLflow logger: a TrackerProcess the caller started early (its imports overlap
        # ours), or one started by run(); anything with Tracker's methods (open, start, ...)
        self.tracker = tracker
        # perf_counter() when the command started: setup_time_s counts from there (imports
        # included); None: from run()
        self.started = started
        # called after each epoch's checkpoint with (epoch, metrics); True stops the run
        # (a study's pruner); the run ends with status "pruned", its MLflow run KILLED
        self.epoch_callback = epoch_callback
        self.extra_tags = dict(tags or {})  # e.g. mlflow.parentRunId of a study trial
        # the hash of the configuration as requested (before methods and data sets resolve
        # their defaults): what `bench sweep` looks runs up by
        self.request_hash = cfg.hash()
        self.run_dir = run_dir
        self.stop_after = stop_after
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.device = resolve_device(cfg.device)
        on_cuda = self.device.type == "cuda"
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and on_cuda)
        # fp16 with loss scaling on CUDA; bfloat16 is the CPU form of autocast
        self.amp_dtype = torch.float16 if on_cuda else torch.bfloat16
        self.channels_last = cfg.channels_last != "off"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and on_cuda)
        self._gen = epoch_generator(cfg.seed, 0, self.device)  # the current epoch's generator

    # --- setup ------------------------------------------------------------------------------
    def _load_data(self) -> tuple[Dataset, TrainSet, NoiseReport, Any]:
        ds_cls = DATASETS.get(self.cfg.dataset)
        ds = ds_cls(build_options(ds_cls, {k: str(v) for k, v in self.cfg.dataset_options.items()}, "data set"))
        try:
            spec = NoiseSpec(self.cfg.noise, self.cfg.noise_rate, self.cfg.noise_seed)
        except NoiseError as exc:
            raise UsageError(str(exc)) from None
        ds.check_noise(spec.model)
        raw = ds.load(self.cfg.data_root)
        cache = Path(self.cfg.out).parent / "noise"
        train, report = make_train_set(ds, raw, spec, self.cfg.subset, cache, self.cfg.val_fraction)
        return ds, train, report, raw

    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        ds, train, self.noise, raw = self._load_data()
        self.dataset = ds
        cfg.dataset_options = ds.resolved_options()
        self.image_size = cfg.image_size or ds.image_size
        self.train_loader = self._loader(ds, train.images, train.given, train.clean, cfg.batch_size)
        self.test_loaders = {"": self._loader(ds, raw.test_images, raw.test_labels, None, cfg.eval_batch_size)}
        for name, (images, labels) in raw.extra_tests.items():
            self.test_loaders[name] = self._loader(ds, images, labels, None, cfg.eval_batch_size)
        self.test_loader = self.test_loaders[""]
        val = train.validation
        self.val_loader = None if val is None else self._loader(ds, val.images, val.given, val.clean,
                                                                 cfg.eval_batch_size)
        self.epoch_samples = ds.epoch_samples(cfg.batch_size)
        if self.epoch_samples is not None and self.epoch_samples < ds.num_classes:
            raise UsageError(f"samples_per_epoch {self.epoch_samples} is smaller than the {ds.num_classes} "
                             "classes it is balanced over; give at least that many")
        self.pool: torch.Tensor | None = None
        self.train_set = train
        method_cls = method_class(cfg.method)
        options = build_options(method_cls, {k: str(v) for k, v in cfg.method_options.items()})
        self.method: Method = method_cls(options, self._context(ds, train))
        self.method.setup()
        cfg.method_options = self.method.resolved_options()  # the values in use are what gets logged

    def _loader(self, ds: Dataset, images: Any, labels: Any, clean: Any, batch_size: int) -> Any:
        """In memory on the device for array data; DataLoader workers for image files."""
        cfg = self.cfg
        if not ds.on_disk:
            views = make_view_maker(ds.mean, ds.std, self.device, cfg.augment, self.channels_last, cfg.image_size)
            return InMemoryLoader(images, labels, clean, views, batch_size, self.device)
        size = self.image_size
        if ds.resize:  # keep the data set's resize : crop ratio (256 : 224)
            resize = round(size * ds.resize / ds.image_size)
        else:  # native size: pad-and-crop; another size: the ImageNet-style 8 : 7
            resize = None if size == ds.image_size else round(size * 8 / 7)
        views = make_view_maker(ds.mean, ds.std, self.device, cfg.augment, self.channels_last)
        return DiskLoader(images, labels, clean, views, file_transforms(size, resize, cfg.augment), size,
                          batch_size, self.device, cfg.workers)

    def _draw_pool(self, epoch: int) -> torch.Tensor | None:
        """This epoch's class-balanced sample of training indices (Clothing1M's epoch), or None.

        Drawn from (seed, epoch) alone, so a resumed run draws the same pool; about
        ``samples / C`` per given class, fewer where a class has fewer samples (DivideMix's
        dataloader_clothing1M.py does the same)."""
        n = self.epoch_samples
        if n is None or n >= len(self.train_loader):
            return None
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch + 7919)
        labels = self.train_loader.labels.cpu()
        per_class = n // self.dataset.num_classes
        picks = []
        for c in range(self.dataset.num_classes):
            members = torch.nonzero(labels == c).squeeze(1)
            picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
        return torch.sort(torch.cat(picks)).values.to(self.device)

    def _context(self, ds: Dataset, train: TrainSet) -> MethodContext:
        cfg = self.cfg
        art = self.run_dir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)

        def backbone() -> torch.nn.Module:
            net = create_backbone(cfg.backbone, ds.num_classes, ds.channels, self.image_size,
                                  cfg.pretrained, cfg.weights).to(self.device)
            return net.to(memory_format=torch.channels_last) if self.channels_last else net

        return MethodContext(
            num_classes=ds.num_classes, num_train=len(train), device=self.device, epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            noise_rate=None if ds.real_noise else cfg.noise_rate, dataset=ds.name, noise=cfg.noise,
            pretrained=cfg.pretrained,
            make_backbone=backbone,
            make_optimizer=lambda params: make_optimizer(cfg, params),
            make_scheduler=lambda opt, epochs: make_scheduler(cfg, opt, epochs),
            predict_train=self.predict_train,
            fetch=lambda index, views: self.train_loader.batch(index.to(self.device), views, self._gen),
            clean_labels=self.train_loader.clean, given_labels=self.train_loader.labels,
            artifact_dir=art, epoch_pool=lambda: self.pool,
        )

    # --- evaluation ---------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if not self.amp:
            return contextlib.nullcontext()  # cheaper than a disabled autocast, once per step
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def _logits(self, fn: Any, loader: Any, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and indices of the samples a plain pass over ``loader`` returns (on-disk
        loaders drop images that fail to decode)."""
        outs, idx = [], []
        for batch in loader.iterate(("plain",), shuffle=False, indices=indices, batch_size=self.cfg.eval_batch_size):
            with self._autocast():
                outs.append(fn(batch["plain"]).float())
            idx.append(batch["index"])
        return torch.cat(outs), torch.cat(idx)

    def predict_train(self, model: torch.nn.Module, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``model`` for the training samples ``indices`` (default: all), in that order
        (plain view). A sample whose image failed to decode gets all-zero logits."""
        was = model.training
        model.eval()
        try:
            logits, got = self._logits(model, self.train_loader, indices)
        finally:
            model.train(was)
        want = torch.arange(len(self.train_loader), device=self.device) if indices is None else indices.to(self.device)
        if len(got) == len(want):
            return logits
        full = torch.zeros(len(self.train_loader), logits.shape[1], device=self.device)
        full[got] = logits
        return full[want]

    def evaluate(self) -> dict[str, float]:
        """Accuracy on each test set: ``test_acc``, and ``test_acc_<name>`` for extra ones."""
        self.method.train_mode(False)
        out = {}
        for name, loader in self.test_loaders.items():
            logits, idx = self._logits(self.method.predict, loader)
            # over the images that decoded (on-disk data); the skipped ones are counted apart
            acc = (logits.argmax(1) == loader.labels[idx]).float().mean().item()
            out["test_acc" + (f"_{name}" if name else "")] = acc
        if self.val_loader is not None:  # the held-out part of the noisy training set
            logits, idx = self._logits(self.method.predict, self.val_loader)
            pred = logits.argmax(1)
            out["val_acc"] = (pred == self.val_loader.labels[idx]).float().mean().item()  # given labels
            if self.val_loader.clean is not None:  # diagnostics only: a user of real noise has no truth
                out["val_acc_clean"] = (pred == self.val_loader.clean[idx]).float().mean().item()
        self.method.train_mode(True)
        return out

    # --- training ------------------------------------------------------------------------------
    def _step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Any, opts: list) -> Any:
        with self._autocast():
            out = self.method.train_step(batch, epoch, phase)
        for o in opts:
            o.zero_grad(set_to_none=True)
        if not self.scaler.is_enabled():
            out.loss.backward()
            for o in opts:
                o.step()
            return out
        self.scaler.scale(out.loss).backward()
        for o in opts:
            self.scaler.step(o)
        self.scaler.update()
        return out

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training (all the method's phases); returns epoch means."""
        m = self.method
        gen = self._gen = epoch_generator(self.cfg.seed, epoch, self.device)
        views = m.views(epoch)
        stats = EpochStats(self.device)
        m.train_mode(True)
        bar = self._bar(epoch)
        for phase in m.phases(epoch):
            opts = [m.optimizers[k] for k in (phase.optimizers or tuple(m.optimizers))]
            indices = self.pool if phase.indices is None else phase.indices
            for batch in self.train_loader.iterate(views, gen, indices=indices, batch_size=phase.batch_size):
                stats.add(self._step(batch, epoch, phase, opts), batch)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return stats.result()

    def _bar(self, epoch: int) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        n = len(self.train_loader) if self.pool is None else len(self.pool)
        total = sum(-(-(n if p.indices is None else len(p.indices)) // (p.batch_size or self.cfg.batch_size))
                    for p in self.method.phases(epoch))
        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, file=sys.stderr)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Hooks, training, evaluation and timing of one epoch (``epoch`` counts from 0)."""
        t0 = time.perf_counter()
        self.pool = self._draw_pool(epoch)
        metrics = dict(self.method.on_epoch_start(epoch))
        opt = next(iter(self.method.optimizers.values()), None)
        if opt is not None:  # the rate this epoch trains with (schedulers step after it)
            metrics["lr"] = opt.param_groups[0]["lr"]
        t1 = time.perf_counter()
        metrics.update(self.train_epoch(epoch))
        self._sync()
        t2 = time.perf_counter()
        metrics.update(self.method.on_epoch_end(epoch))
        for sched in self.method.schedulers.values():
            sched.step()
        t3 = time.perf_counter()
        metrics.update(self.evaluate())
        t4 = time.perf_counter()
        if isinstance(self.train_loader, DiskLoader):  # images that failed to decode this epoch
            metrics["skipped_images"] = float(self.train_loader.skipped)
            self.train_loader.skipped = 0
            for name, ld in self.test_loaders.items():
                metrics["test_skipped_images" + (f"_{name}" if name else "")] = float(ld.skipped)
                ld.skipped = 0
        metrics.update(train_time_s=t2 - t1, eval_time_s=t4 - t3, hooks_time_s=(t1 - t0) + (t3 - t2),
                       epoch_time_s=t4 - t0)
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, history: History, run_id: str) -> None:
        ckpt = {"method": self.method.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "history": asdict(history), "run_id": run_id, "config_hash": self.cfg.hash()}
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.run_dir / CHECKPOINT)  # atomic: a kill never leaves half a file

    def read_checkpoint(self) -> dict[str, Any]:
        path = self.run_dir / CHECKPOINT
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # torch raises many types for a damaged file
            raise UsageError(f"--resume: {path} cannot be read ({type(exc).__name__}); "
                             "the run cannot be resumed, start it again") from None
        if not isinstance(ckpt, dict) or not {"method", "history", "run_id", "rng"} <= set(ckpt):
            raise UsageError(f"--resume: {path} is not a checkpoint of this harness")
        return ckpt

    def load_checkpoint(self, ckpt: dict[str, Any]) -> tuple[History, str]:
        if ckpt.get("config_hash") != self.cfg.hash():
            raise UsageError(f"--resume {self.run_dir}: its config.json does not match the checkpoint "
                             "(edited, or copied from another run); the run cannot be resumed")
        self.method.load_state_dict(ckpt["method"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        known = {f.name for f in fields(History)}  # checkpoints may predate a field
        return History(**{k: v for k, v in ckpt["history"].items() if k in known}), ckpt["run_id"]

    # --- the run ---------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        t_setup = self.started if self.started is not None else time.perf_counter()
        ckpt = self.read_checkpoint() if resume else None  # a damaged file fails before any work
        tracker = self.tracker if self.tracker is not None else TrackerProcess()
        try:
            summary = self._run(tracker, ckpt, t_setup)
        except BaseException:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                tracker.close()
            raise
        tracker.close()
        return summary

    def _run(self, tracker: Any, ckpt: dict[str, Any] | None, t_setup: float) -> dict[str, Any]:
        self._build()
        # only now: a run that fails to build (weights not found offline) leaves no store behind
        tracker.open(self.cfg.tracking_uri, self.cfg.experiment)
        if ckpt is not None:
            history, run_id = self.load_checkpoint(ckpt)
            del ckpt
            tracker.reopen(run_id, from_step=history.epochs_done)
            # a kill after the last checkpoint but before its metrics reached MLflow: log them now
            # (the tracker skips what is there already, so every step is logged exactly once)
            tracker.log_metrics(history.last_metrics, step=history.epochs_done)
            for key, value in self.extra_tags.items():  # e.g. the retried study trial's number
                tracker.set_tag(key, value)
            print(f"resuming {self.run_dir} after epoch {history.epochs_done}", file=sys.stderr)
        else:
            print(f"run folder: {self.run_dir}", file=sys.stderr)
            history = History()
            run_id = self._start_tracking(tracker)
            self.save_checkpoint(history, run_id)  # a run killed in epoch 1 can be resumed too
        setup_s = time.perf_counter() - t_setup
        print(f"setup_time_s {setup_s:.1f} (start-up, data, noise, models, MLflow)", file=sys.stderr, flush=True)
        try:
            self._loop(history, tracker, run_id)
        except KeyboardInterrupt:
            tracker.end("KILLED")
            raise
        except Stopped as stop:
            tracker.set_tag("stopped", "pruned" if isinstance(stop, Pruned) else "stop-after")
            tracker.end("KILLED")
            return self._summary(history, run_id, status="pruned" if isinstance(stop, Pruned) else "stopped")
        summary = self._summary(history, run_id, status="finished")
        summary["setup_time_s"] = setup_s
        self._finish(tracker, history, summary)
        return summary

    def _loop(self, history: History, tracker: Tracker, run_id: str) -> None:
        for epoch in range(history.epochs_done, self.cfg.epochs):
            metrics = self.run_epoch(epoch)
            history.epochs_done = epoch + 1
            history.test_acc.append(metrics["test_acc"])
            if "val_acc" in metrics:
                history.val_acc.append(metrics["val_acc"])
            history.wall_clock_s += metrics["epoch_time_s"]
            history.last_metrics = metrics
            tracker.flush()  # the epochs before this one are in the store before its checkpoint
            self.save_checkpoint(history, run_id)  # first the checkpoint, then the record of it
            tracker.log_metrics(metrics, step=epoch + 1)
            self._report(epoch, metrics)
            if self.stop_after is not None and epoch + 1 >= self.stop_after and epoch + 1 < self.cfg.epochs:
                raise Stopped
            if self.epoch_callback is not None and self.epoch_callback(epoch, metrics) and epoch + 1 < self.cfg.epochs:
                raise Pruned

    def _report(self, epoch: int, m: dict[str, float]) -> None:
        acc = f" train_acc {m['train_acc']:.4f}" if "train_acc" in m else ""
        print(f"epoch {epoch + 1}/{self.cfg.epochs}: train_loss {m.get('train_loss', float('nan')):.4f}{acc}"
              f" test_acc {m['test_acc']:.4f} ({m['epoch_time_s']:.1f} s)", file=sys.stderr, flush=True)

    def _start_tracking(self, tracker: Tracker) -> str:
        cfg = self.cfg
        noise = f"{cfg.noise}:{cfg.noise_rate:g}" if cfg.noise != "none" else "none"
        tags = {"git_commit": git_commit(), "method": cfg.method, "dataset": cfg.dataset, "noise": noise,
                "config_hash": cfg.hash(), "run_dir": str(self.run_dir), "request_hash": self.request_hash,
                "seed": str(cfg.seed), **self.extra_tags}
        run_id = tracker.start(cfg.run_name, tags=tags)
        tracker.log_params(cfg.flatten())
        art = self.run_dir
        (art / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
        labels = art / "noisy_labels.npy"
        np.save(labels, self.train_set.given)
        np.save(art / "train_source_index.npy", self.train_set.source_index)
        tracker.log_artifact(art / "config.json")
        tracker.log_artifact(labels, "noise")
        tracker.log_artifact(art / "train_source_index.npy", "noise")
        if self.noise.transition is not None:
            tpath = art / "noise_transition.csv"
            np.savetxt(tpath, self.noise.transition, delimiter=",", fmt="%.6f",
                       header="rows: true class, columns: given label")
            tracker.log_artifact(tpath, "noise")
            tracker.log_metrics({"noise_rate_realized": self.noise.rate_realized}, step=0)
        tracker.log_params({"noise_file": str(self.noise.labels_file)})
        return run_id

    def _summary(self, history: History, run_id: str, status: str) -> dict[str, Any]:
        cfg = self.cfg
        best, best_epoch = history.best if history.test_acc else (float("nan"), 0)
        return {
            "run_id": run_id, "status": status, "method": cfg.method, "dataset": cfg.dataset,
            "noise": cfg.noise, "noise_rate": cfg.noise_rate, "noise_rate_realized": self.noise.rate_realized,
            "noise_seed": cfg.noise_seed, "seed": cfg.seed, "epochs": cfg.epochs,
            "epochs_done": history.epochs_done, "backbone": cfg.backbone, "subset": cfg.subset,
            "best_test_acc": best, "best_epoch": best_epoch,
            "last_test_acc": history.test_acc[-1] if history.test_acc else float("nan"),
            **({"best_val_acc": max(history.val_acc), "last_val_acc": history.val_acc[-1]} if history.val_acc else {}),
            "wall_clock_s": history.wall_clock_s, "peak_memory_mb": peak_memory_mb(self.device),
            "device": str(self.device), "run_dir": str(self.run_dir),
        }

    def _finish(self, tracker: Tracker, history: History, summary: dict[str, Any]) -> None:
        final = {k: summary[k] for k in ("best_test_acc", "last_test_acc", "wall_clock_s", "peak_memory_mb",
                                         "setup_time_s", "best_val_acc", "last_val_acc") if k in summary}
        tracker.log_metrics(final, step=history.epochs_done)
        path = self.run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        tracker.log_artifact(path)
        for item in sorted((self.run_dir / "artifacts").glob("*")):
            if item.is_file():
                tracker.log_artifact(item, "method")
        tracker.end("FINISHED")
