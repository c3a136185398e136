"""GCE, the generalized cross-entropy L_q (Zhang & Sabuncu, "Generalized Cross Entropy Loss for
Training Deep Neural Networks with Noisy Labels", NeurIPS 2018).

One network trained with

    L_q = (1 - p_y^q) / q,    q in (0, 1]

on the given label y, averaged over the batch: cross-entropy as q -> 0, (half) MAE at q = 1.
p_y^q is computed as exp(q log_softmax_y), the same value without the NaN gradient that p^q
has where p_y underflows to 0. There is no official code; the
value of q is the paper's and the Keras reference's (SCE ``loss.py:33-39``).

``truncated=true`` gives the truncated L_q of the most-used reference code (AlanChou/Truncated-Loss,
unofficial: ``TruncatedLoss.py:9-34``, ``main.py:176-186``): L = mean_i w_i (L_q(p_yi) - L_q(k)),
k = 0.5, with per-sample weights w_i in {0, 1} (1 at the start, by dataset index) set to
1[p_yi > k] by a pass over the training set (training augmentation, eval mode) when epoch + 1
reaches ``start_prune`` and every ``prune_every`` epochs after (CIFAR-10: 40 and 10 of 120
epochs; here the same shares of the run's epochs). The reference code prunes with its
best-test-accuracy checkpoint (its README admits it); here with the current network.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, Scaled, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.shared import lq_loss

# The truncated variant's pruning schedule, CIFAR-10's of the reference code scaled to --epochs.
START_PRUNE = PerSetting(case(Scaled(40, 120), "GCE-u README.md:17-34: --start_prune 40 of 120 epochs (CIFAR-10)"))
PRUNE_EVERY = PerSetting(case(Scaled(10, 120), "GCE-u main.py:176: (epoch + 1) % 10 == 0, of 120 epochs"))


@dataclass
class GCEOptions:
    q: float = field(default=0.7, metadata={
        "help": "exponent of L_q: towards 0 cross-entropy, 1 mean absolute error",
        "source": "paper Sec. 4 (q = 0.7); SCE loss.py:33-39; GCE-u TruncatedLoss.py:9"})
    truncated: bool = field(default=False, metadata={
        "help": "the truncated L_q with pruning of samples whose p_y <= k", "source": "GCE-u TruncatedLoss.py"})
    k: float = field(default=0.5, metadata={"help": "truncation threshold of the truncated L_q",
                                            "source": "GCE-u TruncatedLoss.py:9"})
    start_prune: int | None = field(default=None, metadata={
        "help": "first pruning at epoch + 1 = start_prune; default 40/120 of the epochs",
        "source": "GCE-u README.md:19 (40 of 120)", "setting": START_PRUNE})
    prune_every: int | None = field(default=None, metadata={
        "help": "epochs between prunings; default 10/120 of the epochs", "source": "GCE-u main.py:176",
        "setting": PRUNE_EVERY})

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1:
            raise ValueError(f"q {self.q} is outside (0, 1]")
        if not 0 < self.k < 1:
            raise ValueError(f"k {self.k} is outside (0, 1)")
        for name in ("start_prune", "prune_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} {value} must be >= 1")


def lq_of(p: torch.Tensor, q: float) -> torch.Tensor:
    """L_q of probabilities ``p`` (elementwise)."""
    return (1 - p ** q) / q


def truncated_lq(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, q: float, k: float) -> torch.Tensor:
    """mean_i w_i (L_q(p_yi) - L_q(k)) (TruncatedLoss.forward), p_y^q as exp(q log_softmax_y)."""
    p_y_q = torch.exp(q * F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1))
    return (w * ((1 - p_y_q) / q - lq_of(torch.tensor(k), q))).mean()


@METHODS.register("gce")
class GCE(Method):
    """GCE (NeurIPS 2018): the generalized cross-entropy L_q, between CE (q -> 0) and MAE (q = 1)."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = ("Zhang & Sabuncu, "
             "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels, NeurIPS 2018")
    code = "none official; unofficial github.com/AlanChou/Truncated-Loss"
    Options = GCEOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """q over (0, 1]: the paper's ablation runs q from 0.1 to 1 (its Fig. 1 and Sec. 4)."""
        return {"q": Param("float", 0.1, 1.0, grid=(0.1, 0.4, 0.7, 1.0), source="paper Sec. 4, q in (0, 1]")}

    def setup(self) -> None:
        o, ctx = self.opts, self.ctx  # per-setting defaults filled in by Method.__init__
        self.add_network("net", schedule_epochs=ctx.epochs)
        self.start, self.every = o.start_prune, o.prune_every
        if o.truncated:
            self.state["w"] = torch.ones(ctx.num_train, device=ctx.device)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if not self.opts.truncated:
            return {}
        if epoch + 1 >= self.start and (epoch + 1 - self.start) % self.every == 0:
            logits = self.ctx.predict_train(self.models["net"], view="train")
            p_y = F.softmax(logits, dim=1).gather(1, self.ctx.given_labels[:, None]).squeeze(1)
            self.state["w"] = (p_y > self.opts.k).float()  # 1[L_q(k) > L_q(p_y)] (TruncatedLoss.update_weight)
        return {"gce_kept": float(self.state["w"].mean())}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        if self.opts.truncated:
            w = self.state["w"][batch["index"]]
            return StepOutput(loss=truncated_lq(logits.float(), batch["label"], w, self.opts.q, self.opts.k),
                              logits=logits)
        return StepOutput(loss=lq_loss(logits.float(), batch["label"], self.opts.q), logits=logits)

    def detections(self, epoch: int) -> list[Detection]:
        """The truncated variant's weights are a selection (pruned samples are guessed noisy)."""
        if not self.opts.truncated:
            return []
        return [Detection(self.state["w"], selected=self.state["w"] > 0)]
