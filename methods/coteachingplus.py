"""Co-teaching+ (Yu et al., "How does Disagreement Help Generalization against Label
Corruption?", ICML 2019; official code github.com/xingruiyu/coteaching_plus @a68ed61, ``main.py``
and ``loss.py`` ``loss_coteaching_plus``).

Two networks, as Co-teaching (methods/coteaching.py), with the peer update restricted to where
they disagree. Before ``init_epoch`` it is plain Co-teaching on the whole batch (``main.py:251-252``):
each net keeps the ``int((1 - tau(e)) B)`` samples of smallest own cross-entropy and its PEER is
updated on them. From ``init_epoch`` on (``loss.py:37-68``): the disagreement set
``D' = {i : argmax z1_i != argmax z2_i}``; inside D' each net ranks its own per-sample CE, keeps
the ``int((1 - tau(e)) |D'|)`` smallest, and the peer is updated on them (mean CE over the kept).

Defaults and their sources: ``forget_rate`` tau = the run's nominal noise rate (``main.py:155-158``;
real noise has none, so the option is required there); the ramp ``linspace(0, tau, 10)`` over
the first ``tk`` = 10 epochs (``main.py:28,180-183``, type_1; no exponent in this repository; ``tk``
is not scaled to ``--epochs``, as in methods/coteaching.py, so the three co-training methods
share one ramp); ``init_epoch`` 0 (MNIST), 20 (CIFAR-10), 5 (CIFAR-100), 100 (Tiny-ImageNet) of
``n_epoch`` 200 (``main.py:52,73,94,132``), scaled to ``--epochs`` as ``round(share * E)``; other
data sets take CIFAR-10's share (10%) with at most 10 classes, else CIFAR-100's (2.5%), so
Fashion-MNIST starts the disagreement phase after 10% of the epochs.

Learning rate (``lr_schedule=official``): the official Adam plan (``main.py:165-177``) through
methods/cotraining.py, decaying from 40% of the epochs for EVERY data set (``--epoch_decay_start``
80 of 200, ``main.py:35``, which no data-set branch changes: unlike Co-teaching's CIFAR-100 100).
``lr_schedule=trainer`` leaves the run's optimiser and scheduler alone.

Official quirks (``loss=official`` reproduces (a)-(c); the default ``loss=paper`` follows the paper):
(a) in the disagreement phase the official code passes softmax PROBABILITIES where logits are
    expected (``loss.py:38-39,65-68``): ranking and gradient use CE(softmax(p)) (a double softmax);
    paper: CE on the logits.
(b) each loss is ``F.cross_entropy`` (already a mean) divided again by ``num_remember``
    (``loss.py:32-35``), in both phases; paper: the plain mean over the kept samples. With the
    official ``int`` giving 0 kept, ``loss.py:24-27`` keeps all of the (D') batch; the paper mode
    keeps at least one (the paper's selection has at least ``lambda |D'|`` samples, so one where
    ``0 < lambda |D'| < 1``), as methods/coteaching.py.
(c) an empty D' (``loss.py:69-78``): CE on probabilities over the whole batch if
    ``epoch * batch_idx < 5000`` (``main.py:255``: the epoch times the batch index within it, not a
    global step) else a zero loss, whose optimiser step still moves Adam's momentum. Official
    mode counts the batch index itself (reset in ``on_epoch_start``, so a resume at an epoch
    boundary counts alike) with the epoch counted from 0 as the forget-rate index. Paper mode: an
    empty D' gives no update at all (``StepOutput(step=False)``: no backward, no optimiser step;
    its logged losses are 0).
(d) ``loss.py:53-58`` drops dataset index 0 from ``ind_disagree`` (the logged pure ratio) and, by
    truncating ``disagree_id`` to match, the LAST disagreement sample of the one batch per epoch
    that holds sample 0 in D': at most one sample an epoch. Not reproduced in either mode.

Deviations (both modes): ranking by a stable sort (``small_loss``); no ``drop_last`` (a last
short batch trains); every epoch trains (the official epoch 0 only evaluates); from
``init_epoch`` on the size of D' is read on the host once per step (it sets ``int((1 - tau) |D'|)``,
as the official code does in numpy). Test accuracy is network 1's (the official logs both).
Detections: net 1's last cross-entropy (on logits) per sample as the score, and the samples
net 1 kept at its last visit (none outside D' from ``init_epoch`` on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, Scaled, case
from bench.common.errors import UsageError
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.cotraining import (
    DECAY_START,
    NominalRate,
    apply_lr_plan,
    cross_update_losses,
    forget_rate_at,
)
from methods.lr import base_lrs

OFFICIAL_EPOCHS = 200  # main.py:54,75,96 args.n_epoch = 200
# main.py:52,73,94,132: the epoch the disagreement phase starts, of OFFICIAL_EPOCHS
INIT_EPOCH = {"mnist": 0, "cifar10": 20, "cifar100": 5, "tinyimagenet": 100}
EMPTY_DISAGREEMENT_STEPS = 5000  # loss.py:60: `step < 5000`, step = epoch * batch index (main.py:255)


INIT_EPOCH_DEFAULT = PerSetting(  # the official share of the epochs
    case(Scaled(INIT_EPOCH["mnist"], OFFICIAL_EPOCHS, least=0), "main.py:52 init_epoch 0 of 200", dataset="mnist"),
    case(Scaled(INIT_EPOCH["cifar100"], OFFICIAL_EPOCHS, least=0), "main.py:94 init_epoch 5 of 200",
         dataset="cifar100"),
    case(Scaled(INIT_EPOCH["tinyimagenet"], OFFICIAL_EPOCHS, least=0), "main.py:132 init_epoch 100 of 200",
         dataset="tiny-imagenet"),
    case(Scaled(INIT_EPOCH["cifar10"], OFFICIAL_EPOCHS, least=0), "main.py:73 init_epoch 20 of 200 (CIFAR-10)",
         classes="<=10"),
    case(Scaled(INIT_EPOCH["cifar100"], OFFICIAL_EPOCHS, least=0), "main.py:94 init_epoch 5 of 200 (CIFAR-100)"))


def peer_update(loss1: torch.Tensor, loss2: torch.Tensor, rate: float, official: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Co-teaching's exchange over the samples given (the whole batch, or D'): each net keeps
    ``int((1 - rate) n)`` of its own smallest losses and the peer is trained on them.
    Returns (loss_net1, loss_net2, the positions net 1 kept)."""
    n = len(loss1)
    num_keep = int((1 - rate) * n)  # loss.py:19-20
    if num_keep == 0:  # official loss.py:24-27: all; paper: at least one
        num_keep = n if official else 1
    l1, l2, kept1, _ = cross_update_losses(loss1, loss2, num_keep)
    if official:  # quirk (b), loss.py:32-35: the mean divided once more by num_remember
        l1, l2 = l1 / num_keep, l2 / num_keep
    return l1, l2, kept1


@dataclass
class CoteachingPlusOptions:
    forget_rate: float | None = field(default=None, metadata={
        "help": "final fraction of each batch (of D' from init_epoch on) dropped as large-loss; "
                "default the run's nominal noise rate",
        "source": "main.py:155-158 (--forget_rate None: noise_rate)",
        "setting": PerSetting(case(NominalRate("coteaching_plus", "main.py"), "main.py:155-158"))})
    tk: int = field(default=10, metadata={
        "help": "epochs over which the forget rate ramps up linearly from 0 (E_k)",
        "source": "main.py:28 --num_gradual 10; main.py:180-183 rate_schedule type_1"})
    init_epoch: int | None = field(default=None, metadata={
        "help": "epoch (from 0) the disagreement phase starts; default the official share of the epochs: "
                "MNIST 0, CIFAR-10 10%, CIFAR-100 2.5%, Tiny-ImageNet 50% (others as CIFAR-10 if <= 10 classes "
                "else CIFAR-100)",
        "source": "main.py:52,73,94,132 init_epoch 0/20/5/100 of n_epoch 200", "setting": INIT_EPOCH_DEFAULT})
    loss: Literal["paper", "official"] = field(default="paper", metadata={
        "help": "paper: CE on logits, plain mean, no update on an empty disagreement set; official: CE on softmax "
                "probabilities in the disagreement phase, the mean divided by the kept count, and the official "
                "empty-set rule (epoch * batch index < 5000)",
        "source": "paper Algorithm 1; loss.py:32-35,38-39,60-81"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: constant lr, from 40% of the epochs linear decay and Adam beta1 0.1; "
                "trainer: the run's optimiser and scheduler",
        "source": "main.py:35 --epoch_decay_start 80 of 200; main.py:165-177 alpha_plan, beta1_plan"})

    def __post_init__(self) -> None:
        if self.forget_rate is not None and not 0 <= self.forget_rate < 1:
            raise ValueError(f"forget_rate {self.forget_rate} is outside [0, 1)")
        if self.tk < 1:
            raise ValueError(f"tk {self.tk} must be at least 1")
        if self.init_epoch is not None and self.init_epoch < 0:
            raise ValueError(f"init_epoch {self.init_epoch} must be >= 0")


@METHODS.register("coteaching_plus", aliases=("coteaching-plus",))
class CoteachingPlus(Method):
    """Co-teaching+ (ICML 2019): Co-teaching's peer update, restricted to the samples the two
    networks' predictions disagree on after ``init_epoch``."""

    family = "selection"  # `bench report` and `bench plot` group methods by it

    paper = "Yu et al., How does Disagreement Help Generalization against Label Corruption?, ICML 2019"
    code = "github.com/xingruiyu/coteaching_plus"
    Options = CoteachingPlusOptions
    smoke_options = {"tk": "1", "init_epoch": "1"}  # epoch 0 Co-teaching, epochs 1-2 disagreement
    official_options = {
        # xingruiyu/coteaching_plus @a68ed61 loss.py:38-39,65-68 (CE of the softmax probabilities),
        # loss.py:32-35 (the mean / num_remember), loss.py:69-78 with main.py:255 (the empty-D' rule)
        "loss": "official",
    }

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """forget_rate from half to 1.5 times the noise rate (main.py: forget_rate = noise_rate);
        init_epoch over the official shares of the epochs (0, 2.5%, 10%, 50%: main.py:52,73,94,132);
        tk as Co-teaching's (main.py:28 --num_gradual 10). Range ends our choice."""
        r, e = setting.noise_rate, setting.epochs
        low, high = (round(0.5 * r, 6), round(min(1.5 * r, 0.95), 6)) if r else (0.0, 0.5)  # real noise: rate unknown
        shares = sorted({round(INIT_EPOCH[k] / OFFICIAL_EPOCHS * e) for k in INIT_EPOCH})
        return {
            "forget_rate": Param("float", low, high, grid=tuple(sorted({low, (low + high) / 2, high})),
                                 source="main.py:155-158 forget_rate = noise_rate; 0.5x-1.5x our choice"),
            "init_epoch": Param("int", 0, shares[-1], grid=tuple(shares),
                                source="main.py:52,73,94,132 init_epoch 0/5/20/100 of 200 epochs"),
            "tk": Param("int", 1, 20, grid=(1, 5, 10, 15, 20), source="main.py:28 --num_gradual 10"),
        }

    def setup(self) -> None:
        ctx = self.ctx
        self.forget_rate, self.init_epoch = self.opts.forget_rate, self.opts.init_epoch  # filled per setting
        for name in ("net1", "net2"):  # two calls: two initialisations
            self.add_network(name, ctx.epochs if self.opts.lr_schedule == "trainer" else None)
        if self.opts.loss == "official" and not all(isinstance(o, torch.optim.Adam) for o in self.optimizers.values()):
            raise UsageError("coteaching_plus: loss=official reproduces the official Adam recipe (main.py:335,350); "
                             "with another optimiser its extra 1/|kept| scale shrinks every step ~100x: use "
                             "--optimizer adam or loss=paper")
        self.base_lr = base_lrs(self.optimizers)
        self.decay_start = round(DECAY_START * ctx.epochs)  # main.py:35: 80 of 200 for every data set
        n, dev = ctx.num_train, ctx.device
        self.state.update(loss1=torch.zeros(n, device=dev), kept1=torch.zeros(n, dtype=torch.bool, device=dev),
                          disagree=torch.zeros(n, dtype=torch.bool, device=dev))
        self.rate = 0.0
        self.batch_idx = 0  # the batch index within the epoch (official empty-D' rule)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.rate = forget_rate_at(epoch, self.forget_rate, self.opts.tk, 1.0)  # main.py:183: no exponent
        self.batch_idx = 0
        if self.opts.lr_schedule == "official":
            apply_lr_plan(self.optimizers, self.base_lr, epoch, self.ctx.epochs, self.decay_start)
        return {"forget_rate": self.rate}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        x, y, idx = batch["train"], batch["label"], batch["index"]
        logits1 = self.models["net1"](x)
        z1, z2 = logits1.float(), self.models["net2"](x).float()
        ce1 = F.cross_entropy(z1, y, reduction="none")
        ce2 = F.cross_entropy(z2, y, reduction="none")
        disagree = z1.argmax(1) != z2.argmax(1)  # loss.py:41-51
        self.state["loss1"][idx] = ce1.detach()
        self.state["disagree"][idx] = disagree
        step_idx, self.batch_idx = self.batch_idx, self.batch_idx + 1
        official = self.opts.loss == "official"
        kept1 = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        step = True
        if epoch < self.init_epoch:  # main.py:251-252: Co-teaching on the whole batch, on logits
            l1, l2, pos = peer_update(ce1, ce2, self.rate, official)
            kept1[pos] = True
        else:
            dis = disagree.nonzero().squeeze(1)  # the one host sync of the step
            if len(dis) > 0:
                if official:  # quirk (a): CE on the probabilities (loss.py:38-39,65-68)
                    ce1 = F.cross_entropy(z1.softmax(1), y, reduction="none")
                    ce2 = F.cross_entropy(z2.softmax(1), y, reduction="none")
                l1, l2, pos = peer_update(ce1[dis], ce2[dis], self.rate, official)
                kept1[dis[pos]] = True
            elif official:  # quirk (c), loss.py:69-78
                gate = float(epoch * step_idx < EMPTY_DISAGREEMENT_STEPS)
                l1 = gate * F.cross_entropy(z1.softmax(1), y)
                l2 = gate * F.cross_entropy(z2.softmax(1), y)
            else:  # nothing to learn from: no update
                l1 = l2 = z1.new_zeros(())
                step = False
        self.state["kept1"][idx] = kept1
        return StepOutput(loss=l1 + l2, logits=logits1, step=step,
                          terms={"loss_net1": l1.detach(), "loss_net2": l2.detach(),
                                 "disagree": disagree.float().mean()})

    def detections(self, epoch: int) -> list[Detection]:
        """Net 1's small-loss ranking (minus its last CE per sample) and its kept set."""
        return [Detection(-self.state["loss1"], selected=self.state["kept1"])]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net1"](x)  # network 1 (the official code logs both)
