"""``python -m bench overhead``: the trainer's time per epoch against a bare PyTorch loop.

Both train CE with the same backbone, initial weights, data (one uint8 tensor on the
device), batch size, optimiser and crop + flip augmentation, and both evaluate on the test
set each epoch. The bare loop is what one writes by hand: index, augment, normalise,
forward, loss, zero_grad, backward, step. The trainer's time includes everything it does
per epoch (its step, running sums, evaluation, MLflow logging, the checkpoint). Runs are
interleaved and the median per-epoch time of each is compared, in one process.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.training.config import RunConfig
from bench.training.data import epoch_generator, random_crop, random_flip
from bench.training.resolve import RunSpec, resolve
from bench.training.tracking import Tracker
from bench.training.trainer import Trainer, seed_everything


def _spec(args: argparse.Namespace, tmp: Path) -> RunSpec:
    """CE on Fashion-MNIST with the given backbone and sizes, through the one resolver."""
    return resolve({"method": "ce", "dataset": "fashion-mnist", "epochs": args.epochs, "batch_size": args.batch_size,
                    "backbone": args.backbone, "subset": args.subset, "out": str(tmp / "runs"), "progress": False,
                    "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "overhead"})


def time_trainer(spec: RunSpec, tmp: Path, tag: str) -> tuple[float, float]:
    """(seconds per epoch of the whole loop, seconds per epoch of training alone): the loop is
    from the end of the run's setup to the end of its last epoch's checkpoint and record."""
    run_dir = tmp / "runs" / tag
    run_dir.mkdir(parents=True)
    ends: list[float] = []
    trainer = Trainer(spec, run_dir, epoch_callback=lambda epoch, metrics: ends.append(time.perf_counter()))
    trainer.build()
    t0 = time.perf_counter()
    summary = trainer.run()
    loop = ends[-1] - (t0 + summary["setup_time_s"])
    train = sum(m.value for m in Tracker(spec.place.tracking_uri, "overhead").client.get_metric_history(
        summary["run_id"], "train_time_s"))
    return loop / spec.config.epochs, train / spec.config.epochs


def time_bare(cfg: RunConfig, trainer: Trainer) -> tuple[float, float]:
    """The hand-written loop on the trainer's own tensors and a fresh copy of its model."""
    seed_everything(cfg.seed)
    device = trainer.device
    net = trainer.method.ctx.make_backbone()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    images, labels = trainer.train_loader.images, trainer.train_loader.labels
    test_x, test_y = trainer.test_loader.images, trainer.test_loader.labels
    views = trainer.train_loader.views
    mean, std = views.mean, views.std
    t_train = 0.0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        t1 = time.perf_counter()
        gen = epoch_generator(cfg.seed, epoch, device)
        perm = torch.randperm(len(labels), generator=gen, device=gen.device).to(device)
        net.train()
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x = random_flip(random_crop(images[idx], 4, gen), gen)
            x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t_train += time.perf_counter() - t1
        net.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for start in range(0, len(test_y), cfg.eval_batch_size):
                x = ((test_x[start:start + cfg.eval_batch_size].float() - mean) / std)
                x = x.contiguous(memory_format=torch.channels_last)
                correct += (net(x).argmax(1) == test_y[start:start + cfg.eval_batch_size]).sum()
        correct.item()
    total = time.perf_counter() - t0
    return total / cfg.epochs, t_train / cfg.epochs


def cmd_overhead(args: argparse.Namespace) -> int:
    from bench.common.errors import UsageError

    if args.epochs < 1 or args.repeats < 1:
        raise UsageError("--epochs and --repeats must be at least 1")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        spec = _spec(args, tmp)
        cfg = spec.config
        (tmp / "probe").mkdir()
        probe = Trainer(spec, tmp / "probe").build()
        n = len(probe.train_loader)
        print(f"overhead: CE, {cfg.backbone}, {n} training images, batch {cfg.batch_size}, {cfg.epochs} epochs x "
              f"{args.repeats} repeats, device {probe.device}, {torch.get_num_threads()} threads", file=sys.stderr)
        rows: dict[str, list[tuple[float, float]]] = {"trainer": [], "bare": []}
        for r in range(args.repeats):
            rows["bare"].append(time_bare(cfg, probe))
            rows["trainer"].append(time_trainer(spec, tmp, f"t{r}"))
            print(f"  repeat {r + 1}: trainer {rows['trainer'][-1][0]:.2f} s/epoch, "
                  f"bare {rows['bare'][-1][0]:.2f} s/epoch", file=sys.stderr)
    med = {k: (statistics.median(v[0] for v in rows[k]), statistics.median(v[1] for v in rows[k])) for k in rows}
    print(f"trainer: {med['trainer'][0]:.3f} s/epoch (training {med['trainer'][1]:.3f} s)")
    print(f"bare loop: {med['bare'][0]:.3f} s/epoch (training {med['bare'][1]:.3f} s)")
    print(f"ratio trainer/bare: {med['trainer'][0] / med['bare'][0]:.3f} per epoch, "
          f"{med['trainer'][1] / med['bare'][1]:.3f} training only")
    return 0
