"""mixup as a noisy-label baseline (Zhang et al., "mixup: Beyond Empirical Risk Minimization",
ICLR 2018; official github.com/facebookresearch/mixup-cifar10 ``train.py:119-138``).

One network; per batch lambda ~ Beta(alpha, alpha) (lambda = 1 when alpha = 0) and a random
permutation pi of the batch:

    x~ = lambda x + (1 - lambda) x_pi,    L = lambda CE(f(x~), y) + (1 - lambda) CE(f(x~), y_pi)

Unlike DivideMix's and ELR+'s mixup there is no lambda = max(lambda, 1 - lambda). alpha = 1 is
the official default (``train.py:26-40``); the paper's corrupted-label experiments (Sec. 3.4) use
alpha in {1, 2, 8, 32}. The draws come from the run's generators (the official code: numpy's
and torch's global RNGs), so resume is exact. No train accuracy is logged: the predictions are
of mixed images, which have no single given label.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput


@dataclass
class MixupOptions:
    alpha: float = field(default=1.0, metadata={"help": "mixing Beta(alpha, alpha); 0 turns mixup off",
                                                "source": "train.py:26-40 (--alpha 1.)"})

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha {self.alpha} must be >= 0")


def mixup_loss(logits: torch.Tensor, y: torch.Tensor, y_perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda CE(logits, y) + (1 - lambda) CE(logits, y_pi) (``mixup_criterion``)."""
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y_perm)


@METHODS.register("mixup")
class Mixup(Method):
    """mixup (ICLR 2018): convex combinations of image pairs and of their given labels."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"
    code = "github.com/facebookresearch/mixup-cifar10"
    Options = MixupOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """alpha over the paper's corrupted-label values 1, 2, 8, 32 (Sec. 3.4)."""
        return {"alpha": Param("float", 0.1, 32.0, log=True, grid=(1.0, 2.0, 8.0, 32.0), source="paper Sec. 3.4")}

    def setup(self) -> None:
        self.add_network("net", schedule_epochs=self.ctx.epochs)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        x, y = batch["train"], batch["label"]
        gens = self.ctx.generators()
        lam = float(gens.numpy.beta(self.opts.alpha, self.opts.alpha)) if self.opts.alpha > 0 else 1.0
        perm = torch.randperm(x.shape[0], generator=gens.torch, device=gens.torch.device).to(x.device)
        logits = self.models["net"](lam * x + (1 - lam) * x[perm])
        loss = mixup_loss(logits.float(), y, y[perm], lam)
        return StepOutput(loss=loss, terms={"mixup_lambda": torch.full((), lam, device=loss.device)})
