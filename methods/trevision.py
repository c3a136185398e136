"""T-Revision (Xia et al., "Are Anchor Points Really Indispensable in Label-Noise Learning?",
NeurIPS 2019; official github.com/xiaoboxia/T-Revision, ``main.py``, ``loss.py``, ``tools.py``).

Three stages over the run's epochs, in the official proportions 20 : 200 : 200 (CIFAR-100
15 : 200 : 200; ``main.py:56-79``):

1. estimate: CE; after it, T_hat by anchor points (``tools.fit``, the 97th-percentile filter
   on 10-class data, not on CIFAR-100) from the softmax of the training set under its training
   augmentation in eval mode (``estimate_loader``, ``main.py:193-213``);
2. reweight: importance reweighting, L = mean_i beta_i CE_i with beta_i = p_y / (T_hat^T p)_y,
   beta detached (``loss.py:6-29``; the legacy ``Variable`` wrapper detaches);
3. revise: the same loss with T_hat + dT, dT a trainable C x C matrix starting at 0 (a bias-free
   ``Linear(C, C)``, ``Resnet.py:77``), beta not detached, so dT and the network learn through
   it, with Adam at lr 5e-7 and weight decay 1e-4 over both (``main.py:26, 85``).

The official revision loss adds dT inside its per-sample loop (``T = T + correction``,
``loss.py:47-49``), so sample i of a batch uses T_hat + (i + 1) dT; the paper's loss uses
T_hat + dT. The paper's form is the default; ``revision=official`` reproduces the accumulation
(the sheet's recommendation; the file's "v2" loss fixes the loop but detaches beta, so dT would
not learn, and is not offered). Departures, named: the estimate comes from the last CE epoch
(officially the epoch with the best noisy-validation accuracy of a 90/10 split), and stages 1-2
use the run's optimiser and schedule (officially a fresh SGD per stage); the revision stage has
its own Adam at the run's lr x 5e-5 (5e-7 against the official 0.01). The trainer logs the error
of T_hat (stages 2-3: T_hat + dT) against the realised T (``t_error``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.defaults import PerSetting, Scaled, case
from bench.common.errors import UsageError
from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput
from methods.shared import anchor_transition

# The official stages, n_epoch_estimate (CIFAR-10 20, CIFAR-100 15), 200 reweighting and 200
# revision epochs, in their proportions of the run's epochs
ESTIMATE = PerSetting(
    case(Scaled(20, 420), "main.py:56-79: n_epoch_estimate 20 of 20 + 200 + 200 (CIFAR-10)", classes="<=10"),
    case(Scaled(15, 415), "main.py:56-79: n_epoch_estimate 15 of 15 + 200 + 200 (CIFAR-100)"))
REWEIGHT = PerSetting(
    case(Scaled(200, 420), "main.py:56-79, 224-257: 200 of 20 + 200 + 200 (CIFAR-10)", classes="<=10"),
    case(Scaled(200, 415), "main.py:56-79, 224-257: 200 of 15 + 200 + 200 (CIFAR-100)"))
REVISION_LR = 5e-7 / 0.01  # Adam lr 5e-7 (main.py:26) against the reweighting stage's SGD lr 0.01
REVISION_WD = 1e-4  # main.py:85


def reweighted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor, detach: bool,
                    accumulate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_i beta_i CE_i, beta_i = p_y / (T^T p)_y = p_y / sum_k p_k T[k, y]; with
    ``accumulate`` (dT), sample i uses T + i dT (the official loop, which has added dT once more
    than the T passed in). Returns the loss and beta."""
    p = F.softmax(logits, dim=1)
    y_col = y[:, None]
    denom = (p @ t).gather(1, y_col).squeeze(1)
    if accumulate is not None:
        steps = torch.arange(len(y), device=logits.device, dtype=p.dtype)
        denom = denom + steps * (p @ accumulate).gather(1, y_col).squeeze(1)
    beta = p.gather(1, y_col).squeeze(1) / denom
    if detach:
        beta = beta.detach()
    return (beta * F.cross_entropy(logits, y, reduction="none")).mean(), beta


@dataclass
class TRevisionOptions:
    estimate_epochs: int | None = field(default=None, metadata={
        "help": "CE epochs before T is estimated; default 20/420 of the epochs (CIFAR-100 15/415)",
        "source": "main.py:56-79 (n_epoch_estimate 20 / 15, then 200 + 200)", "setting": ESTIMATE})
    reweight_epochs: int | None = field(default=None, metadata={
        "help": "importance-reweighting epochs; default 200/420 of the epochs", "source": "main.py:224-257",
        "setting": REWEIGHT})
    revision: Literal["paper", "official"] = field(default="paper", metadata={
        "help": "paper: T_hat + dT for every sample; official: sample i of a batch uses T_hat + (i + 1) dT",
        "source": "loss.py:47-49"})

    def __post_init__(self) -> None:
        for name in ("estimate_epochs", "reweight_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} {value} must be >= 1")


@METHODS.register("trevision")
class TRevision(Method):
    """T-Revision (NeurIPS 2019): anchor-point T, importance reweighting, then T revised by learning dT."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Xia et al., Are Anchor Points Really Indispensable in Label-Noise Learning?, NeurIPS 2019"
    code = "github.com/xiaoboxia/T-Revision"
    Options = TRevisionOptions
    smoke_options = {"estimate_epochs": "1", "reweight_epochs": "1"}
    official_options = {
        "revision": "official",  # xiaoboxia/T-Revision loss.py:47-49 (T = T + correction inside the per-sample loop)
    }

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The stage split (no loss hyperparameter): estimate 1 to a quarter, reweighting a quarter to half."""
        e = max(4, setting.epochs)
        return {"estimate_epochs": Param("int", 1, max(1, e // 4), source="harness range around 20/420"),
                "reweight_epochs": Param("int", max(1, e // 4), max(1, e // 2), source="harness range around 200/420")}

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        c = ctx.num_classes
        self.s1, s2 = o.estimate_epochs, o.reweight_epochs
        self.s2 = self.s1 + s2
        if self.s2 >= ctx.epochs:
            raise UsageError(f"trevision: {self.s1} estimation + {s2} reweighting epochs leave no revision epoch "
                             f"of --epochs {ctx.epochs}; raise --epochs or lower estimate_epochs / reweight_epochs")
        self.filter = c <= 10  # filter_outlier: True for CIFAR-10 / MNIST, False for CIFAR-100 (main.py:65, 78)
        net = self.add_network("net", schedule_epochs=self.s2)
        delta = nn.Linear(c, c, bias=False).to(ctx.device)
        nn.init.zeros_(delta.weight)  # the "trans" layer, zero at the start (Resnet.py:77, main.py:300)
        self.models["delta"] = delta
        lr = self.optimizers["net"].param_groups[0]["lr"] * REVISION_LR
        self.optimizers["revision"] = torch.optim.Adam([*net.parameters(), delta.weight], lr=lr,
                                                       weight_decay=REVISION_WD)
        self.state["T"] = torch.eye(c, device=ctx.device)
        self.state["t_ready"] = torch.zeros((), dtype=torch.bool)

    def phases(self, epoch: int) -> list[Phase]:
        if epoch < self.s1:
            return [Phase("estimate", optimizers=("net",))]
        if epoch < self.s2:
            return [Phase("reweight", optimizers=("net",))]
        return [Phase("revise", optimizers=("revision",))]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if epoch == self.s1 and not bool(self.state["t_ready"]):
            probs = F.softmax(self.ctx.predict_train(self.models["net"], view="train"), dim=1).cpu().numpy()
            self.state["T"] = torch.as_tensor(anchor_transition(probs, self.filter), dtype=torch.float32,
                                              device=self.ctx.device)
            self.state["t_ready"] = torch.ones((), dtype=torch.bool)
        return {"trevision_stage": float((epoch >= self.s1) + (epoch >= self.s2))}

    def _revised(self) -> torch.Tensor:
        return self.state["T"] + self.models["delta"].weight

    def transition(self) -> torch.Tensor | None:
        if not bool(self.state["t_ready"]):
            return None
        return self._revised().detach()

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        y = batch["label"]
        if phase.name == "estimate":
            return StepOutput(loss=F.cross_entropy(logits.float(), y), logits=logits)
        if phase.name == "reweight":
            loss, beta = reweighted_loss(logits.float(), y, self.state["T"], detach=True)
        else:
            delta = self.models["delta"].weight
            if self.opts.revision == "official":  # T = T + correction inside the loop: T_hat + (i + 1) dT
                loss, beta = reweighted_loss(logits.float(), y, self._revised(), detach=False, accumulate=delta)
            else:
                loss, beta = reweighted_loss(logits.float(), y, self._revised(), detach=False)
        return StepOutput(loss=loss, logits=logits, terms={"beta_mean": beta.detach().mean()})
