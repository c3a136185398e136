"""PLC, progressive label correction (Zhang, Zheng, Wu, Goswami, Chen, "Learning with
Feature-Dependent Label Noise: A Progressive Approach", ICLR 2021; official
github.com/pxiangwu/PLC @8c2bcfd, ``cifar/train.py``, ``clothing1m/train_clothing1m.py``,
``utils.py``).

One network trained with CE on its *current* labels, which start as the given ones. Every
training forward stores its softmax (augmented view, train mode) in a rolling record of the
last ``roll_window`` epochs (``f_record[epoch % 5, idx]``, cifar/train.py:186-202). After each
epoch from ``warmup_epochs`` on (0-based, ``epoch >= warm_up``), with ``f = f_record.mean(0)``:

    LR_i = f[i, y_i] / max_c f[i, c];   LR_i < delta  ->  y_i <- argmax_c f[i, c]
    fewer than 0.001 n corrections      ->  delta <- min(delta + inc, 0.9)

(``lrt_correction``, utils.py:291-318; the paper's Algorithm 1 with theta = delta, beta = inc).
Corrections overwrite the current labels, so they compound. The label vector, the record, each
sample's visit count and delta are per-sample / run state, indexed by dataset index and
checkpointed.

Sampled epochs (Clothing1M, WebVision: an epoch is a class-balanced sample, 1000 x batch by
default, ``ctx.epoch_pool()`` not None). The official scripts visit every sample once per
epoch (train_clothing1m.py:113-129, cifar/train.py:186-202), so slot ``epoch % 5`` holds every
sample's prediction of that epoch and ``f_record.mean(0)`` is each sample's last 5. With a
sample of the data, that slot would keep an unvisited sample's prediction from an older epoch,
and a sample never visited would have an all-zero row, which the official rule's second softmax
turns uniform (top 1/14 < thd 0.1) and relabels to the argmax of a tie, class 0. Here, when the
epoch is sampled, the record is per sample: its visit ``v`` (counted from 0; ``visits`` holds the
count) goes to its own slot ``v % roll_window``, and ``f`` is the mean of the visits it has, at most its
last ``roll_window`` (not divided by ``roll_window``: the second softmax of ``prob_correction``
depends on the scale of ``f``, and in the official run every row is a full window's mean from
the fifth epoch on). A prediction older than the sample's last ``roll_window`` visits is never
averaged in. Each visit is a record entry, also two visits in one epoch or one batch (copies in
one batch take consecutive slots in batch order; of more than ``roll_window`` copies in one
batch, the last ``roll_window`` stay). A sample with no visit has no record and keeps its label
under either rule. With full epochs a sample's visit ``v`` is epoch ``v``, so ``v % window`` is
the official ``epoch % window``; full epochs keep the official code path as it is (slot
``epoch % roll_window``, mean over the whole window, empty slots of the first epochs included).

Departures from the official code, on purpose:

- Model selection. The official CIFAR script keeps a 10% split with *clean* labels and reports
  the test accuracy of the model best on it (cifar/train.py:127,230-246): an oracle. Here PLC
  trains on the whole noisy training set and is reported like every method (last and best
  epoch of the trainer); ``--val-fraction`` gives a noisy validation split to every method alike.
- Clothing1M. The official Clothing1M script calls ``prob_correction`` (utils.py:321-360): a
  second softmax over the averaged probabilities, top-1 only, and delta raised only when nothing
  is corrected, uncapped. The default here is the paper's rule with Clothing1M's own delta_0 0.7
  and warm-up 1; ``--set correction=official`` gives ``prob_correction`` (its multinomial draw is
  over the single top class, so it is the argmax and needs no random draw). A sample without a
  record (never visited: sampled epochs, or an image that failed to decode) keeps its label,
  where the official rule would relabel its zero row.
- Optimiser and schedule are the run's (every method gets the same trainer); the official ones
  are SGD lr 0.01 Nesterov, wd 5e-4, MultiStep [40, 80] x 0.5, 180 epochs (cifar/train.py:170-171).

Noise detection: the score is the likelihood ratio of the *given* label under the rolling
record (the average the correction uses; 0 for a sample without a record), the clean set the
samples whose label PLC has left as given (a sample without a record among them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, StepOutput

MAX_DELTA = 0.9  # lrt_correction: current_delta = min(current_delta, 0.9) (utils.py:314)
MIN_CORRECTED = 0.001  # raise delta when fewer than 0.001 n labels change (utils.py:312)
PROB_THD = 0.1  # prob_correction(..., thd=0.1) (train_clothing1m.py:170)


# Per-data-set defaults of the official scripts.
DELTA = PerSetting(
    case(0.7, "clothing1m/train_clothing1m.py:50 (current_delta 0.7)", dataset="clothing1m"),
    case(0.3, "cifar/train.py:277 (--delta 0.3)"))
WARMUP = PerSetting(
    case(1, "clothing1m/train_clothing1m.py:211 (--warm_up 1)", dataset="clothing1m"),
    case(8, "cifar/train.py:281 (--warm_up 8)"))


@dataclass
class PLCOptions:
    delta: float | None = field(default=None, metadata={
        "help": "initial likelihood-ratio threshold theta_0; default 0.3, 0.7 on Clothing1M",
        "source": "cifar/train.py:277; clothing1m/train_clothing1m.py:50", "setting": DELTA})
    inc: float = field(default=0.1, metadata={
        "help": "step beta by which the threshold rises when almost nothing is corrected",
        "source": "cifar/train.py:284 (--inc 0.1)"})
    warmup_epochs: int | None = field(default=None, metadata={
        "help": "epochs of plain CE before the first correction; default 8, 1 on Clothing1M",
        "source": "cifar/train.py:281; clothing1m/train_clothing1m.py:211", "setting": WARMUP})
    roll_window: int = field(default=5, metadata={
        "help": "epochs of training softmax averaged for the likelihood ratio; with sampled epochs "
                "(Clothing1M, WebVision) each sample's last roll_window visits",
        "source": "cifar/train.py:279 (--rollWindow 5)"})
    correction: Literal["paper", "official"] = field(default="paper", metadata={
        "help": "paper: the likelihood-ratio rule everywhere; official: Clothing1M's prob_correction "
                "(double softmax, delta uncapped) on Clothing1M; either leaves a sample without a "
                "record (not yet visited) as given",
        "source": "utils.py:291-318 (lrt_correction), 321-360 (prob_correction)"})

    def __post_init__(self) -> None:
        if self.delta is not None and not 0 < self.delta <= 1:
            raise ValueError(f"delta {self.delta} is outside (0, 1]")
        if self.inc < 0 or (self.warmup_epochs is not None and self.warmup_epochs < 0):
            raise ValueError("inc and warmup_epochs must be >= 0")
        if self.roll_window < 1:
            raise ValueError(f"roll_window {self.roll_window} must be >= 1")


def likelihood_ratio(f_x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """f[i, y_i] / max_c f[i, c]; NaN for a sample with no record yet (a zero row)."""
    top = f_x.max(dim=1).values
    return f_x.gather(1, labels[:, None]).squeeze(1) / top.where(top > 0, torch.nan)


def lrt_correction(labels: torch.Tensor, f_x: torch.Tensor, delta: float, inc: float,
                   cap: float | None = MAX_DELTA) -> tuple[torch.Tensor, float, int]:
    """One step of Algorithm 1 (utils.py ``lrt_correction``): the corrected labels, the next
    delta and the number corrected. Samples without a record keep their label."""
    flip = likelihood_ratio(f_x, labels) < delta  # NaN compares False
    new = torch.where(flip, f_x.argmax(dim=1), labels)
    count = int(flip.sum())
    if count < MIN_CORRECTED * labels.numel():
        delta = delta + inc if cap is None else min(delta + inc, cap)
    return new, delta, count


def prob_correction(labels: torch.Tensor, f_x: torch.Tensor, delta: float, inc: float,
                    thd: float = PROB_THD) -> tuple[torch.Tensor, float, int]:
    """The official Clothing1M rule (utils.py ``prob_correction``), quirks kept: a softmax over
    the averaged probabilities; where its top value reaches ``thd`` the likelihood-ratio rule on
    it, elsewhere the label becomes the top class unconditionally (not counted); delta rises by
    ``inc``, uncapped, only when nothing was corrected. A sample without a record (a zero row)
    keeps its label: the official code has none after its first epoch (every sample is visited,
    train_clothing1m.py:113-129), and its softmax would be uniform, relabelled to class 0."""
    p = F.softmax(f_x, dim=1)
    top, arg = p.max(dim=1)
    ratio = p.gather(1, labels[:, None]).squeeze(1) / top
    recorded = f_x.amax(dim=1) > 0
    flip = recorded & (top >= thd) & (ratio < delta)
    new = torch.where(flip | (recorded & (top < thd)), arg, labels)
    count = int(flip.sum())
    return new, delta + inc if count == 0 else delta, count


@METHODS.register("plc")
class PLC(Method):
    """PLC (ICLR 2021): CE on labels corrected progressively by a likelihood-ratio test."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Zhang et al., Learning with Feature-Dependent Label Noise: A Progressive Approach, ICLR 2021"
    code = "github.com/pxiangwu/PLC"
    Options = PLCOptions
    smoke_options = {"warmup_epochs": "1"}
    official_options = {
        # pxiangwu/PLC @8c2bcfd utils.py:321-360 (prob_correction), which the official Clothing1M script
        # calls (clothing1m/train_clothing1m.py); on other data sets both rules are the likelihood ratio
        "correction": "official",
    }

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """theta_0 and beta of Algorithm 1; the official scripts use 0.3 / 0.7 and 0.1."""
        return {"delta": Param("float", 0.1, 0.9, grid=(0.1, 0.3, 0.5, 0.7), source="cifar/train.py:277; clothing 0.7"),
                "inc": Param("float", 0.0, 0.2, grid=(0.0, 0.05, 0.1, 0.2), source="cifar/train.py:284 (0.1)")}

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        self.warmup = o.warmup_epochs
        self.official = o.correction == "official" and ctx.dataset == "clothing1m"
        self.add_network("net", schedule_epochs=ctx.epochs)
        n, c = ctx.num_train, ctx.num_classes
        self.state["labels"] = ctx.given_labels.to(ctx.device).clone()
        self.state["record"] = torch.zeros(o.roll_window, n, c, device=ctx.device)
        self.state["visits"] = torch.zeros(n, dtype=torch.int64, device=ctx.device)  # record entries so far
        self.state["delta"] = torch.tensor(o.delta, dtype=torch.float64)
        self.sampled = False  # this epoch visits a sample of the data (set when an epoch starts)

    def resolved_options(self) -> dict[str, Any]:  # the correction rule in effect (official: Clothing1M only)
        return {**super().resolved_options(), "correction": "official" if self.official else "paper"}

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.sampled = self.ctx.epoch_pool() is not None
        return {}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Any) -> StepOutput:
        idx = batch["index"]
        logits = self.models["net"](batch["train"])
        with torch.no_grad():
            p = F.softmax(logits.detach().float(), dim=1)
            if self.sampled:
                self._record_visits(idx, p)
            else:  # the official slot (cifar/train.py:202, train_clothing1m.py:129)
                self.state["record"][epoch % self.opts.roll_window, idx] = p
                self.state["visits"][idx] += 1
        return StepOutput(loss=F.cross_entropy(logits.float(), self.state["labels"][idx]), logits=logits)

    def _record_visits(self, idx: torch.Tensor, p: torch.Tensor) -> None:
        """Sampled epochs: each sample's visit ``v`` goes to its own slot ``v % roll_window``.
        Copies of one index in a batch are consecutive visits in batch order; where more than
        ``roll_window`` copies share a slot, all write the last one's row (no duplicate scatter
        of different values). Host-sync free: a batch x batch comparison, no masks."""
        w, visits = self.opts.roll_window, self.state["visits"]
        same = idx[:, None] == idx[None, :]
        before = same.tril(-1).sum(dim=1)  # copies of this index earlier in the batch
        slot = (visits[idx] + before) % w
        shares = same & ((before[None, :] - before[:, None]) % w == 0)  # copies writing the same slot
        last = torch.where(shares, before[None, :], -1).argmax(dim=1)  # the latest of them
        self.state["record"][slot, idx] = p[last]
        visits[idx] = visits[idx] + same.sum(dim=1)

    def average(self) -> torch.Tensor:
        """``f``: per sample the mean of its recorded softmax; a zero row without a record. Full
        epochs: the official ``f_record.mean(0)`` over the window (cifar/train.py:208,
        train_clothing1m.py:167); sampled epochs: the mean of the sample's last visits, at most
        ``roll_window``."""
        record = self.state["record"]
        if not self.sampled:
            return record.mean(dim=0)
        count = self.state["visits"].clamp(1, self.opts.roll_window).to(record.dtype)
        return record.sum(dim=0) / count[:, None]

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if epoch < self.warmup:
            return {}
        f_x = self.average()
        rule = prob_correction if self.official else lrt_correction
        labels, delta, count = rule(self.state["labels"], f_x, float(self.state["delta"]), self.opts.inc)
        self.state["labels"], self.state["delta"] = labels, torch.tensor(delta, dtype=torch.float64)
        changed = (labels != self.ctx.given_labels.to(labels.device)).float().mean()
        metrics = {"plc_corrected": float(count), "plc_delta": delta, "plc_relabelled": float(changed)}
        if self.sampled:  # the share of samples with a record (the others keep their label)
            metrics["plc_recorded"] = float((self.state["visits"] > 0).float().mean())
        return metrics

    def detections(self, epoch: int) -> list[Detection]:
        given = self.ctx.given_labels.to(self.ctx.device)
        score = likelihood_ratio(self.average(), given).nan_to_num(0.0)
        return [Detection(score, selected=self.state["labels"] == given)]
