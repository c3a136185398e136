"""TURN (Ahn, Kim, Ko, Yun, "Fine tuning Pre trained Models for Robustness Under Noisy Labels",
arXiv 2310.17668, 2023; IJCAI 2024 per a third-party source). No official code exists (the
authors' repositories hold none); this follows the paper's abstract and the summary of its
Algorithm 1 of the paper. Every number below that the
paper does not give is a harness choice, named as such.

A pre-trained model is fine-tuned in two steps:

1. Linear probing (LP): the feature extractor frozen (eval mode, no gradient, so noisy labels
   cannot distort the features nor the BatchNorm statistics), a fresh linear classifier trained
   with GCE (q = 0.7, the common default) on every noisy sample, for ``lp_epochs``.
2. Noise reduction: one evaluation pass gives each sample's CE loss under the LP model; for each
   class (of the given label) a two-component GMM on the class's min-max normalised losses, the
   clean component being the one of lower mean; n_c samples with clean posterior > 0.5; the
   ``min_c n_c`` lowest-loss samples of every class are kept (class-balanced selection).
3. Full fine-tuning (FFT) of the whole model from the LP classifier (LP-FT) with CE on the kept
   samples for the remaining epochs.

Harness choices (the paper's values are not known here): ``lp_epochs`` 20% of ``--epochs``; the
GMM is scikit-learn's default fit (100 iterations, tol 1e-3, reg_covar 1e-6); the classifier is
the backbone's last linear layer (timm's ``get_classifier()``); LP has an optimiser of its own
over the classifier (the run's optimiser settings), FFT the run's optimiser over the whole model.
TURN assumes pre-trained weights (``--pretrained`` / ``--weights``); without them it runs, on a
random frozen feature extractor, and says so in its logged ``turn_pretrained`` 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.defaults import PerSetting, Scaled, case
from bench.common.errors import UsageError
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.mixtures import GaussianMixture2
from methods.shared import classifier_of, lq_loss

LP_EPOCHS = PerSetting(case(Scaled(20, 100), "harness choice: 20% of --epochs (the paper's LP epochs are not known)"))
GMM_ITERATIONS = 100  # scikit-learn GaussianMixture defaults (max_iter 100, tol 1e-3, reg_covar 1e-6)


@dataclass
class TURNOptions:
    lp_epochs: int | None = field(default=None, metadata={
        "help": "linear-probing epochs (backbone frozen); default 20% of --epochs (harness choice)",
        "source": "paper Sec. 4 (value not known here)", "setting": LP_EPOCHS})
    q: float = field(default=0.7, metadata={"help": "GCE exponent of the linear probing",
                                            "source": "GCE's default (Zhang & Sabuncu 2018); TURN Sec. 4 uses GCE"})
    p_threshold: float = field(default=0.5, metadata={
        "help": "clean posterior above which a sample counts for its class's n_c",
        "source": "paper Algorithm 1 (the value is inferred; no official code)"})

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1:
            raise ValueError(f"q {self.q} is outside (0, 1]")
        if not 0 < self.p_threshold < 1:
            raise ValueError(f"p_threshold {self.p_threshold} must lie in (0, 1)")
        if self.lp_epochs is not None and self.lp_epochs < 1:
            raise ValueError(f"lp_epochs {self.lp_epochs} must be >= 1")


def class_balanced_selection(losses: np.ndarray, labels: np.ndarray, num_classes: int,
                             p_threshold: float) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Per class a GMM on its normalised losses; n_c = #(p_clean > threshold); keep the min_c n_c
    lowest-loss samples of every class. Returns (kept mask, p_clean, n_c per class)."""
    p_clean = np.zeros(len(losses))
    counts: dict[int, int] = {}
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < 2 or np.ptp(losses[members]) == 0:  # nothing to separate: all clean
            p_clean[members], counts[c] = 1.0, len(members)
            continue
        gmm = GaussianMixture2(tol=1e-3, reg_covar=1e-6, warm_start=False)
        gmm.fit(losses[members], GMM_ITERATIONS)
        p_clean[members] = gmm.posterior(losses[members])[0]
        counts[c] = int((p_clean[members] > p_threshold).sum())
    present = [c for c in range(num_classes) if (labels == c).any()]
    keep = min(counts[c] for c in present) if present else 0
    kept = np.zeros(len(losses), dtype=bool)
    for c in present:
        members = np.flatnonzero(labels == c)
        kept[members[np.argsort(losses[members], kind="stable")[:keep]]] = True
    return kept, p_clean, counts


@METHODS.register("turn")
class TURN(Method):
    """TURN (arXiv 2023): linear probing with GCE, class-balanced clean selection, full fine-tuning."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Ahn et al., Fine tuning Pre trained Models for Robustness Under Noisy Labels, arXiv 2310.17668, 2023"
    code = "none official (built from the paper)"
    Options = TURNOptions
    smoke_options = {"lp_epochs": "1"}

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The LP length and the GCE exponent (no published ranges known: harness ranges)."""
        return {"q": Param("float", 0.1, 1.0, grid=(0.3, 0.7, 1.0), source="GCE's range (0, 1]"),
                "p_threshold": Param("float", 0.3, 0.8, grid=(0.3, 0.5, 0.7), source="harness range")}

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        self.lp = o.lp_epochs
        if self.lp >= ctx.epochs:
            raise UsageError(f"turn: {self.lp} linear-probing epochs leave no fine-tuning epoch of --epochs "
                             f"{ctx.epochs}; raise --epochs or --set lp_epochs=N")
        net = self.add_network("net", schedule_epochs=ctx.epochs)
        self.head = classifier_of(net, "turn")
        self.optimizers["lp"] = ctx.make_optimizer(self.head.parameters())
        n = ctx.num_train
        self.state["kept"] = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        self.state["p_clean"] = torch.zeros(n, device=ctx.device)
        self._features: torch.Tensor | None = None
        self.head.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._features = inputs[0]

    def phases(self, epoch: int) -> list[Phase]:
        if epoch < self.lp:
            return [Phase("lp", optimizers=("lp",))]
        kept = torch.nonzero(self.state["kept"]).squeeze(1)
        pool = self.ctx.epoch_pool()  # data sets that sample their epochs: the kept part of the sample
        if pool is not None:
            kept = kept[torch.isin(kept, pool.to(kept.device))]
        return [Phase("fft", optimizers=("net",), indices=kept)]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if epoch != self.lp:
            return {"turn_pretrained": float(self.ctx.pretrained)} if epoch == 0 else {}
        return self._select()

    def _select(self) -> dict[str, float]:
        """Step 2, once, between LP and FFT."""
        logits = self.ctx.predict_train(self.models["net"])
        labels = self.ctx.given_labels.to(logits.device)
        losses = F.cross_entropy(logits.float(), labels, reduction="none").double().cpu().numpy()
        kept, p_clean, counts = class_balanced_selection(losses, labels.cpu().numpy(), self.ctx.num_classes,
                                                         self.opts.p_threshold)
        if not kept.any():
            raise UsageError("turn: the selection kept no sample (a class has no clean sample); "
                             "lower --set p_threshold=P or use more data")
        self.state["kept"] = torch.from_numpy(kept).to(self.ctx.device)
        self.state["p_clean"] = torch.from_numpy(p_clean).float().to(self.ctx.device)
        return {"turn_kept_frac": float(kept.mean()), "turn_per_class": float(min(counts.values()))}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        net, x, y = self.models["net"], batch["train"], batch["label"]
        if phase.name == "fft":
            logits = net(x)
            return StepOutput(loss=F.cross_entropy(logits.float(), y), logits=logits)
        net.eval()  # LP: features of the frozen extractor, no gradient, no BatchNorm update
        with torch.no_grad():
            net(x)
        net.train()
        logits = self.head(self._features.detach())
        return StepOutput(loss=lq_loss(logits.float(), y, self.opts.q), logits=logits)

    def detections(self, epoch: int) -> list[Detection]:
        if epoch < self.lp:
            return []
        return [Detection(self.state["p_clean"], selected=self.state["kept"])]
