"""Forward and backward loss correction with the anchor-point estimate of T (Patrini et al.,
"Making Deep Neural Networks Robust to Label Noise: a Loss Correction Approach", CVPR 2017;
official Keras code github.com/giorgiop/loss-correction, ``loss.py:13-31``, ``models.py:413-477``,
``experiment.py:97-145``).

T is row-stochastic, T[i, j] = P(given j | true i); q = p / sum(p) clipped to [1e-7, 1 - 1e-7]:

    forward:   L = -log (q T)_y                       (``robust('forward')``)
    backward:  L = sum_j (T^-1)[y, j] (-log q_j)      (``robust('backward')``; can be negative)

Pipeline (``experiment.py``): a network trained with CE, its softmax eta on the whole training
set, and per class i the anchor: the sample with the largest eta[:, i] (below the column's 97th
percentile, ``interpolation='higher'``, when ``filter_outlier``: every data set but CIFAR-100,
``experiment.py:58-62``); T[i, :] = eta[anchor, :], rows normalised. Then a fresh network is
trained with the corrected loss. Here both trainings share the run's epochs: CE for
``warmup_epochs`` (default half, the official two trainings having the same length), the
estimate from the last CE epoch's network on the plain view (official: the best-validation-loss
checkpoint on a 10% split), then the fresh network for the rest, with the run's optimiser and
its schedule over those epochs. The official zeroing of outliers works in place on eta, so it
changes the columns later anchors read; here each column is filtered on a copy (the sheet's
quirk 1). ``t_source=true`` is the ORACLE of the official ``forward``/``backward`` variants
(without ``est_``): the noise model's nominal T, no warm-up. The trainer logs the estimate's
error against the realised T (``t_error``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, RunSetting, case
from bench.common.errors import UsageError
from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput
from methods.shared import anchor_transition, keras_probs

EPS = 1e-7  # K.epsilon(): q clipped to [1e-7, 1 - 1e-7] (loss.py:16, 25)


def half_the_epochs(s: RunSetting) -> int:
    """Half the run's epochs, rounded down, at least 1."""
    return max(1, s.epochs // 2)


WARMUP = PerSetting(case(half_the_epochs, "experiment.py: a CE training, then the corrected one of the same length"))
FILTER_OUTLIER = PerSetting(
    case(True, "experiment.py:58-62: filter_outlier on every data set but CIFAR-100", classes="<=10"),
    case(False, "experiment.py:58-62: no filter on CIFAR-100 (> 10 classes)"))


def forward_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """-log (q T)_y, batch mean (no clamp after the product, as loss.py:28-31)."""
    return -((keras_probs(logits, EPS) @ t).gather(1, y[:, None]).squeeze(1).log()).mean()


def backward_loss(logits: torch.Tensor, y: torch.Tensor, t_inv: torch.Tensor) -> torch.Tensor:
    """sum_j T^-1[y, j] (-log q_j), batch mean (loss.py:19-25)."""
    return (t_inv[y] * -keras_probs(logits, EPS).log()).sum(dim=1).mean()


@dataclass
class CorrectionOptions:
    t_source: Literal["estimate", "true"] = field(default="estimate", metadata={
        "help": "estimate: anchor points of a CE warm-up; true: ORACLE, the noise model's nominal T",
        "source": "experiment.py:97-145 (est_forward / forward)"})
    warmup_epochs: int | None = field(default=None, metadata={
        "help": "CE epochs before T is estimated; default half the epochs (t_source=estimate)",
        "source": "experiment.py: a CE training, then the corrected one with the same recipe", "setting": WARMUP})
    filter_outlier: bool | None = field(default=None, metadata={
        "help": "anchors below the 97th percentile; default true, false on CIFAR-100 (> 10 classes)",
        "source": "experiment.py:58-62", "setting": FILTER_OUTLIER})

    def __post_init__(self) -> None:
        if self.warmup_epochs is not None and self.warmup_epochs < 1:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be >= 1")


class _Correction(Method):
    """CE warm-up and anchor-point T (or the oracle T), then a fresh network with a corrected loss."""

    Options = CorrectionOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The warm-up length (no other hyperparameter): between a quarter and three quarters of the run."""
        e = max(2, setting.epochs)
        return {"warmup_epochs": Param("int", max(1, e // 4), max(1, 3 * e // 4), source="harness range")}

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        c = ctx.num_classes
        self.filter = o.filter_outlier
        if o.t_source == "true":
            truth = ctx.noise_transition()
            if truth is None:
                raise UsageError(f"{self.name}: t_source=true needs the nominal T of a synthetic class-conditional "
                                 f"noise model (sym, sym-biased, pairflip, asym); --noise {ctx.noise} has none; "
                                 f"use t_source=estimate")
            self.warmup = 0
        else:
            self.warmup = o.warmup_epochs
            self.check_warmup(self.warmup, "corrected epoch")
            self.add_network("warm", schedule_epochs=self.warmup)
        self.add_network("net")
        self._net_scheduler = ctx.make_scheduler(self.optimizers["net"], ctx.epochs - self.warmup)
        self._t_inv: torch.Tensor | None = None
        self.state["T"] = torch.eye(c, device=ctx.device)
        self.state["t_ready"] = torch.zeros((), dtype=torch.bool)
        if o.t_source == "true":
            self._set_t(torch.as_tensor(truth, dtype=torch.float32, device=ctx.device))
            self._start_net_schedule()

    def resolved_options(self) -> dict[str, Any]:
        # the oracle (t_source=true) has no warm-up, whatever warmup_epochs says: log the 0 it runs
        return {**super().resolved_options(), "warmup_epochs": self.warmup}

    def _set_t(self, t: torch.Tensor) -> None:
        self.state["T"], self.state["t_ready"] = t, torch.ones((), dtype=torch.bool)

    def _start_net_schedule(self) -> None:
        """The fresh network's schedule runs over the corrected epochs only (the trainer steps
        every scheduler in ``schedulers`` after each epoch)."""
        if self._net_scheduler is not None:
            self.schedulers["net"] = self._net_scheduler

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if "net" in sd["schedulers"]:
            self._start_net_schedule()
        super().load_state_dict(sd)

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("warm", optimizers=("warm",))] if epoch < self.warmup else [Phase("net", optimizers=("net",))]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if epoch == self.warmup and self.warmup > 0 and not bool(self.state["t_ready"]):
            eta = F.softmax(self.ctx.predict_train(self.models["warm"]), dim=1).cpu().numpy()
            self._set_t(torch.as_tensor(anchor_transition(eta, self.filter), dtype=torch.float32,
                                        device=self.ctx.device))
            self._start_net_schedule()
        out = {"correction_stage": float(epoch >= self.warmup)}
        if bool(self.state["t_ready"]):
            out.update(self.prepare())
        return out

    def prepare(self) -> dict[str, float]:
        """Per-epoch work on T before the corrected epochs (the backward loss inverts it)."""
        return {}

    def transition(self) -> torch.Tensor | None:
        return self.state["T"] if bool(self.state["t_ready"]) else None

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if phase.name == "warm":
            logits = self.models["warm"](batch["train"])
            return StepOutput(loss=F.cross_entropy(logits.float(), batch["label"]), logits=logits)
        logits = self.models["net"](batch["train"])
        return StepOutput(loss=self.corrected(logits.float(), batch["label"]), logits=logits)

    def corrected(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net" if bool(self.state["t_ready"]) else "warm"](x)


@METHODS.register("forward")
class Forward(_Correction):
    """Forward correction (CVPR 2017): -log of the prediction pushed through T, T from anchor points."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Patrini et al., Making Deep Neural Networks Robust to Label Noise: a Loss Correction Approach, CVPR 2017"
    code = "github.com/giorgiop/loss-correction"

    def corrected(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return forward_loss(logits, y, self.state["T"])


@METHODS.register("backward")
class Backward(_Correction):
    """Backward correction (CVPR 2017): the per-class losses weighted by T^-1's row of the given label."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Patrini et al., Making Deep Neural Networks Robust to Label Noise: a Loss Correction Approach, CVPR 2017"
    code = "github.com/giorgiop/loss-correction"

    def prepare(self) -> dict[str, float]:
        """T^-1 once per epoch (np.linalg.inv officially); a singular estimate takes the
        pseudo-inverse, logged as ``t_pinv`` 1."""
        t = self.state["T"].double()
        try:
            self._t_inv, pinv = torch.linalg.inv(t).float(), 0.0
        except torch.linalg.LinAlgError:
            self._t_inv, pinv = torch.linalg.pinv(t).float(), 1.0
        return {"t_pinv": pinv}

    def corrected(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return backward_loss(logits, y, self._t_inv)
