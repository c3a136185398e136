"""GCE, the generalized cross-entropy L_q (Zhang & Sabuncu, "Generalized Cross Entropy Loss for
Training Deep Neural Networks with Noisy Labels", NeurIPS 2018). Facts:
../shared/reference/methods-losses.md, section 1.

One network trained with

    L_q = (1 - p_y^q) / q,    q in (0, 1]

on the given label y, averaged over the batch: cross-entropy as q -> 0, (half) MAE at q = 1.
p_y^q is computed as exp(q log_softmax_y), the same value without the NaN gradient that p^q
has where p_y underflows to 0 (methods-losses.md, quirk 2). There is no official code; the
value of q is the paper's and the Keras reference's (SCE ``loss.py:33-39``). The truncated L_q
(pruning with a threshold k) is not part of this method.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput
from methods.shared import lq_loss


@dataclass
class GCEOptions:
    q: float = field(default=0.7, metadata={
        "help": "exponent of L_q: towards 0 cross-entropy, 1 mean absolute error",
        "source": "paper Sec. 4 (q = 0.7); SCE loss.py:33-39; GCE-u TruncatedLoss.py:9"})

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1:
            raise ValueError(f"q {self.q} is outside (0, 1]")


@METHODS.register("gce")
class GCE(Method):
    """GCE (NeurIPS 2018): the generalized cross-entropy L_q, between CE (q -> 0) and MAE (q = 1)."""

    name = "gce"
    Options = GCEOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """q over (0, 1]: the paper's ablation runs q from 0.1 to 1 (its Fig. 1 and Sec. 4)."""
        return {"q": Param("float", 0.1, 1.0, grid=(0.1, 0.4, 0.7, 1.0), source="paper Sec. 4, q in (0, 1]")}

    def setup(self) -> None:
        self.add_network("net", schedule_epochs=self.ctx.epochs)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        return StepOutput(loss=lq_loss(logits.float(), batch["label"], self.opts.q), logits=logits)
