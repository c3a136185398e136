"""CORES^2, phase 1: confidence regularisation and the sample sieve (Cheng et al., "Learning with
Instance-Dependent Label Noise: A Sample Sieve Approach", ICLR 2021; official
github.com/UCSC-REAL/cores, ``loss.py:23-62``, ``phase1.py``).

One network; per sample, with pi the current noisy-label prior and beta(e) the regulariser weight,

    l_i = CE(z_i, y_i) - beta(e) sum_j pi_j (-log(p_ij + 1e-8))

The sieve keeps sample i when CE(z_i, y_i) - mean_j(-log(p_ij + 1e-8)) <= 0 (the uniform mean,
not pi; every sample is kept in the first 30 official epochs), and the batch loss is
sum_i v_i l_i / sum_i v_i. beta(e): 0 for epochs 0-9, linear 0 -> 2 over 10-39, then 2
(``loss.py:56-62``, 100 epochs). After each epoch pi <- normalise(pi_0 N - c), pi_0 the noisy-label
class frequencies, c_k the samples of given label k sieved out that epoch
(``phase1.py:92-95, 205-212``). ``lr_schedule=official``: the run's lr times plan(e) / (1 +
beta(e)), plan 1 before official epoch 50 and 0.1 after (``phase1.py:167-172``: 0.1 / 0.01);
``trainer`` keeps the run's schedule. The official epochs (100) are stretched over the run's:
run epoch e stands for floor(e x 100 / E).

Only phase 1 is built (as noisypy, ``NP-M/cores2/cores2.py:11-13``); phase 2, UDA-style
consistency training on the sieved-in set as labeled and the sieved-out as unlabeled (1,600
official epochs), is not. If no sample of a batch passes the sieve the official code crashes
(a one-value return unpacked as a tuple, ``loss.py:51-54``); here the batch takes no step. The
sieve is the method's clean selection: ``clean_auc`` of the negated sieve score with precision
and recall of the kept samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs

EPS = 1e-8  # -log(p + 1e-8) (loss.py:34)
OFFICIAL_EPOCHS = 100  # phase1.py: 100 epochs; beta's plan has 100 entries
SIEVE_FROM = 30  # the sieve keeps everything while epoch <= 30 (loss.py:43)
BETA_PLAN = np.concatenate([np.zeros(10), np.linspace(0, 2, 30), np.full(60, 2.0)])  # loss.py:56-62
LR_DROP = 50  # plan 0.1 before epoch 50, 0.01 after (phase1.py:167-172)


def cores_loss(logits: torch.Tensor, y: torch.Tensor, prior: torch.Tensor, beta: float,
               sieve: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch loss, kept mask, sieve score = CE - mean_j -log p_j) of phase 1's loss; the batch
    loss is 0 when nothing is kept."""
    ce = F.cross_entropy(logits, y, reduction="none")
    neg_log = -torch.log(F.softmax(logits, dim=1) + EPS)
    per_sample = ce - beta * (neg_log * prior).sum(dim=1)
    score = ce - neg_log.mean(dim=1)
    kept = score <= 0 if sieve else torch.ones_like(ce, dtype=torch.bool)
    weight = kept.to(per_sample.dtype)
    loss = (per_sample * weight).sum() / weight.sum().clamp_min(1.0)
    return loss, kept, score.detach()


def official_epoch(epoch: int, epochs: int) -> int:
    return min(OFFICIAL_EPOCHS - 1, epoch * OFFICIAL_EPOCHS // max(1, epochs))


@dataclass
class CoresOptions:
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: lr x plan(e) / (1 + beta(e)), plan 1 then 0.1 from half of the epochs; "
                "trainer: the run's schedule", "source": "phase1.py:167-172"})
    beta_max: float = field(default=2.0, metadata={"help": "the regulariser's final weight",
                                                   "source": "loss.py:56-62 (linspace(0, 2, 30))"})

    def __post_init__(self) -> None:
        if self.beta_max < 0:
            raise ValueError(f"beta_max {self.beta_max} must be >= 0")


@METHODS.register("cores")
class Cores(Method):
    """CORES^2 phase 1 (ICLR 2021): CE with a prior-weighted confidence regulariser and a sample sieve."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Cheng et al., Learning with Instance-Dependent Label Noise: A Sample Sieve Approach, ICLR 2021"
    code = "github.com/UCSC-REAL/cores"
    Options = CoresOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The regulariser's final weight around the official 2 (our range)."""
        return {"beta_max": Param("float", 0.0, 4.0, grid=(0.0, 1.0, 2.0, 4.0), source="loss.py:56-62 (2)")}

    def setup(self) -> None:
        ctx = self.ctx
        self.add_network("net", schedule_epochs=ctx.epochs)
        self.base_lr = base_lrs({"net": self.optimizers["net"]})
        counts = torch.bincount(ctx.given_labels, minlength=ctx.num_classes).float()
        self.prior0 = counts / counts.sum()  # the noisy-label class frequencies (data/cifar.py:99-100)
        n = ctx.num_train
        self.state["prior"] = self.prior0.clone().to(ctx.device)
        self.state["kept"] = torch.ones(n, dtype=torch.bool, device=ctx.device)
        self.state["score"] = torch.zeros(n, device=ctx.device)
        self._out = torch.zeros(ctx.num_classes, device=ctx.device)

    def _beta(self, epoch: int) -> float:
        return float(BETA_PLAN[official_epoch(epoch, self.ctx.epochs)]) * self.opts.beta_max / 2.0

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        beta = self._beta(epoch)
        if self.opts.lr_schedule == "official":
            plan = 1.0 if official_epoch(epoch, self.ctx.epochs) < LR_DROP else 0.1
            set_lrs(self.optimizers, self.base_lr, lambda lr: lr * plan / (1 + beta))
        self._out = torch.zeros(self.ctx.num_classes, device=self.ctx.device)
        return {"cores_beta": beta}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        idx, y = batch["index"], batch["label"]
        logits = self.models["net"](batch["train"])
        sieve = official_epoch(epoch, self.ctx.epochs) > SIEVE_FROM
        loss, kept, score = cores_loss(logits.float(), y, self.state["prior"], self._beta(epoch), sieve)
        self.state["kept"][idx], self.state["score"][idx] = kept, score
        self._out.index_add_(0, y, (~kept).to(self._out.dtype))  # the sieved-out per label, on the device
        terms = {"cores_kept": kept.float().mean()}
        # an empty sieve takes no step (a zero-loss step would still move momentum and weight
        # decay): the one host read of the step, and only once the sieve is on
        return StepOutput(loss=loss, logits=logits, terms=terms, step=not sieve or bool(kept.any()))

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """pi <- normalise(pi_0 N - c): the prior of the labels the sieve kept this epoch."""
        n = float(self.ctx.num_train if self.ctx.epoch_pool() is None else len(self.ctx.epoch_pool()))
        prior = (self.prior0.to(self._out.device) * n - self._out).clamp_min(0)
        self.state["prior"] = prior / prior.sum().clamp_min(1e-12)
        return {"cores_sieved_out": float(self._out.sum()) / n}

    def detections(self, epoch: int) -> list[Detection]:
        return [Detection(-self.state["score"], selected=self.state["kept"])]
