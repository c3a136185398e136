"""Plain cross-entropy ("Standard"): the floor every LNL method is measured against.

One network trained with cross-entropy on the given (possibly noisy) labels, using the
run's shared backbone, optimiser and schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import METHODS, Method, Phase, StepOutput


@METHODS.register("ce", aliases=("standard",))
class CrossEntropy(Method):
    """Cross-entropy on the given labels: one network, no noise handling (the baseline floor)."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "the cross-entropy baseline every LNL paper reports (Standard)"
    code = "none (the harness's plain training)"
    time_reference = "CE"  # `bench table --time`: every method's time per epoch against CE's
    perf_figures = ("methods",)  # `bench perf`'s suites time it beside the others (the reference)

    def setup(self) -> None:
        self.add_network("net", schedule_epochs=self.ctx.epochs)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        loss = F.cross_entropy(logits, batch["label"])
        return StepOutput(loss=loss, logits=logits)
