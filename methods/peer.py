"""Peer loss (Liu & Guo, "Peer Loss Functions: Learning from Noisy Labels without Knowing Noise
Rates", ICML 2020; multi-class CIFAR code of the authors' group,
github.com/weijiaheng/Multi-class-Peer-Loss-functions, ``CIFAR-10/runner.py``,
``CIFAR-100/runner.py``).

One network;

    L = CE(f(x_n), y_n) - alpha(e) CE(f(x_n1), y_n2)

with n1 and n2 drawn independently: each step the official code opens a fresh iterator of a
shuffled peer loader and takes the images of its first batch and the labels of its second
(``runner.py:62-69``); here two random index batches of the run's batch size from the run's
generators, the images under the training view. CE is ``NLL(log(softmax + 1e-5))``
(``CrossEntropyLossStable``); a last incomplete batch is skipped (``runner.py:53-54``).

alpha(e) follows the official per-epoch plan, stretched over the run's epochs (official epoch
floor(e x 300 / E); CIFAR-100: 250): on 10 classes, "sparse" noise (rate 0.1 or 0.2, as the
official code tells from its noise file; here the run's nominal rate, ORACLE as there) 0 for 20
epochs, then linear 0 -> 1 (20), 1 -> 2 (50), 2 -> 5 (50), 5 -> 10 (100), 10 -> 20 (100); any
other noise 0, 0 -> 0.1, then 1 -> 2, 2 -> 2.5, 2.5 -> 3.3, 3.3 -> 5 with the same lengths
(``runner.py:94-113``). On more classes the CIFAR-100 plan: sparse 0 (110), 0 -> 2 (20),
2 -> 10 (70), 10 -> 20 (50); otherwise 0 for 100 epochs, then 0.95 (``CIFAR-100/runner.py:98-114``).
The learning rate is divided by 1 + alpha(e) (``adjust_learning_rate``). Departures, named: the
official optimiser is re-created every epoch (momentum reset) and CIFAR-100's run reloads its
best-validation model when the peer term starts; here the run's optimiser and model go on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput
from methods.streams import BatchStream

EPS = 1e-5  # CrossEntropyLossStable(eps=1e-5) (runner.py:31-44)
SPARSE_RATES = (0.1, 0.2)  # "if args.r == 0.1 or args.r == 0.2: # Sparse setting" (runner.py:94)


def _plan(segments: list[tuple[float, float, int]]) -> np.ndarray:
    return np.concatenate([np.linspace(a, b, num=n) for a, b, n in segments])


# (start, end, epochs) of each np.linspace segment of f_alpha
PLANS = {
    ("cifar10", "sparse"): (_plan([(0, 0, 20), (0, 1, 20), (1, 2, 50), (2, 5, 50), (5, 10, 100), (10, 20, 100)]), 300),
    ("cifar10", "uniform"): (_plan([(0, 0, 20), (0, 0.1, 20), (1, 2, 50), (2, 2.5, 50), (2.5, 3.3, 100),
                                    (3.3, 5, 100)]), 300),
    ("cifar100", "sparse"): (_plan([(0, 0, 110), (0, 2, 20), (2, 10, 70), (10, 20, 50)]), 250),
    ("cifar100", "uniform"): (_plan([(0, 0, 100), (0.95, 0.95, 150)]), 250),
}


def stable_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NLL of log(softmax + 1e-5), batch mean."""
    return F.nll_loss(torch.log(F.softmax(logits, dim=1) + EPS), y)


def peer_alpha(epoch: int, epochs: int, plan: str, num_classes: int) -> float:
    """alpha of the official plan at the official epoch this run's ``epoch`` stands for."""
    values, official = PLANS[("cifar10" if num_classes <= 10 else "cifar100", plan)]
    return float(values[min(len(values) - 1, epoch * official // max(1, epochs))])


@dataclass
class PeerOptions:
    alpha_plan: Literal["auto", "sparse", "uniform"] = field(default="auto", metadata={
        "help": "the alpha schedule; auto: sparse when the nominal noise rate is 0.1 or 0.2 (ORACLE, "
                "as the official code reads its noise file), else uniform", "source": "runner.py:94-113"})
    lr_divide: bool = field(default=True, metadata={
        "help": "divide the learning rate by 1 + alpha(e)", "source": "runner.py adjust_learning_rate"})


@METHODS.register("peer")
class PeerLoss(Method):
    """Peer loss (ICML 2020): CE minus alpha times the CE of an independently paired image and label."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Liu & Guo, Peer Loss Functions: Learning from Noisy Labels without Knowing Noise Rates, ICML 2020"
    code = "github.com/weijiaheng/Multi-class-Peer-Loss-functions"
    Options = PeerOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The alpha plan: the two official schedules."""
        return {"alpha_plan": Param("categorical", choices=("sparse", "uniform"), source="runner.py:94-113")}

    def setup(self) -> None:
        ctx = self.ctx
        if self.opts.alpha_plan == "auto":
            rate = ctx.noise_rate
            self.plan = "sparse" if rate is not None and any(abs(rate - r) < 1e-9 for r in SPARSE_RATES) else "uniform"
        else:
            self.plan = self.opts.alpha_plan
        self.add_network("net", schedule_epochs=ctx.epochs)
        self._divided = 1.0
        self._peers: BatchStream | None = None

    def resolved_options(self) -> dict[str, Any]:
        return {**super().resolved_options(), "alpha_plan": self.plan}

    def _alpha(self, epoch: int) -> float:
        return peer_alpha(epoch, self.ctx.epochs, self.plan, self.ctx.num_classes)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        alpha = self._alpha(epoch)
        self._peers = self._peer_stream() if alpha != 0 else None  # of this epoch's generators
        if self.opts.lr_divide:  # lr_plan[e] / (1 + alpha(e)); undone at the epoch's end for the run's schedule
            self._divided = 1.0 + alpha
            for g in self.optimizers["net"].param_groups:
                g["lr"] /= self._divided
        return {"peer_alpha": alpha}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        for g in self.optimizers["net"].param_groups:
            g["lr"] *= self._divided
        self._divided = 1.0
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._divided = 1.0  # checkpoints are taken after on_epoch_end: the lr is undivided

    def _peer_stream(self) -> BatchStream:
        """The epoch's peer images: each batch the first ``batch_size`` of a fresh permutation
        (:mod:`methods.streams`), made ahead on image files; one per full batch of the epoch,
        the steps that take one."""
        pool = self.ctx.epoch_pool()
        ids = torch.arange(self.ctx.num_train, device=self.ctx.device) if pool is None else pool
        size = self.ctx.batch_size
        return BatchStream(self.ctx, "peer", ids, size, ("train",), "sample", count=len(ids) // size)

    def _peer_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of one random batch (the stream's), labels of another (the first and second
        batch of a fresh shuffle of the peer loader)."""
        if self._peers is None:  # a step called without the epoch's start (a method built by hand)
            self._peers = self._peer_stream()
        images = self._peers.next()["train"]
        gen = self.ctx.generators().torch
        pool = self.ctx.epoch_pool()
        n = self.ctx.num_train if pool is None else len(pool)
        i2 = torch.randperm(n, generator=gen, device=gen.device)[:size]
        if pool is not None:
            i2 = pool[i2.to(pool.device)]
        return images, self.ctx.given_labels[i2.to(self.ctx.device)]

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        x, y = batch["train"], batch["label"]
        if len(y) != self.ctx.batch_size:  # "if idx.size(0) != batch_size: continue"
            return StepOutput(loss=x.new_zeros(()), step=False)
        net = self.models["net"]
        logits = net(x)
        ce = stable_ce(logits.float(), y)
        alpha = self._alpha(epoch)
        if alpha == 0:  # weight 0: no peer forward (the official one runs, and its BatchNorm statistics see it)
            return StepOutput(loss=ce, logits=logits, terms={"loss_ce": ce.detach()})
        x1, y2 = self._peer_batch(len(y))
        peer = stable_ce(net(x1).float(), y2)
        loss = ce - alpha * peer
        return StepOutput(loss=loss, logits=logits, terms={"loss_ce": ce.detach(), "loss_peer": peer.detach()})
