"""ELR+ (Liu et al., "Early-Learning Regularization Prevents Memorization of Noisy Labels",
NeurIPS 2020, section 5; official github.com/shengliu66/ELR, directory ``ELR_plus/``:
``trainer/trainer.py``, ``model/loss.py``, ``base/base_trainer.py``, ``utils/util.py``, the
``config_*.json`` files).

ELR (methods/elr.py) plus two networks, weight averaging, targets from the other network's
average and mixup. Each network k has its own optimiser and schedule (the run's), its own
weight-averaged copy EMA_k and its own target history t^k (N x C, zeros at the start,
``loss.py:14-21``). An epoch trains network 1 on a full pass, then network 2 on its own pass (two
phases, two independent orders: ``train.py:39-59``, ``base_trainer.py:184-185``). A step of
network k (``trainer.py:93-120``, ``loss.py:23-41``):

1. o = EMA_{-k}(x), the OTHER network's average on the un-mixed batch, no gradient;
   t^k_i <- beta t^k_i + (1 - beta) softmax(o_i) (renormalised). The update precedes the loss.
2. mixup: lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda), a permutation pi of the
   batch; inputs, one-hot labels and targets mixed alike: q_i = lambda t_i + (1 - lambda) t_pi(i).
3. L = mean_i CE(y_mix, z) + s(step) lam mean_i log(1 - <q_i, clamp(p_i, 1e-4, 1 - 1e-4)>), with
   s = sigmoid_rampup(step, coef_step); on CIFAR-100 alone (``num_classes == 100``) the CE target is
   normalize(y_mix * q) (``loss.py:28-30``).
4. after the optimiser step, EMA_k <- alpha EMA_k + (1 - alpha) net_k over the parameters, alpha =
   sigmoid_rampup(step + 1, ema_step) gamma with ``ema_update``, else min(1 - 1 / (step + 1), gamma)
   (``trainer.py:321-331``; methods/ema.py).

``step`` is the global step plus the batch number of the pass counted from 1 (``trainer.py:111-112``:
``local_step += 1`` before its uses); the global step advances by network 1's number of batches
after each epoch (``base_trainer.py:188``), so both networks of an epoch share the step values.
Each average starts from its own initialisation (``train.py:75,78``). The ramps' length counts
the run's steps as epochs x ceil(N / B); a data set that samples its epochs (Clothing1M) has
fewer steps, so a ramp set there stretches (the Clothing1M defaults have none). The averaged
copies stay in train mode (``trainer.py:77``): their
BatchNorm statistics come from their own forwards.

Defaults by setting (``config_cifar10.json``, ``config_cifar10_asym.json``,
``config_cifar100.json``, ``config_clothing1m.json``, ``config_webvision.json``; the table in the
fact sheet): beta / lam / alpha / gamma / ema_update. The ramps (``ema_step``, ``coef_step``) are
given in steps of the official runs; here they are the same share of the run's steps (40000 of
200 x 352 steps on CIFAR-10, 40000 of 250 x 352 on CIFAR-100: 45,000 training images, batch 128,
352 batches an epoch, inferred). Data sets without a config take CIFAR-10's of their noise type
(asymmetric for class-dependent models) with at most 10 classes, CIFAR-100's otherwise.

Choices where the official code is inconsistent or silent, named: test predictions average the
two raw networks' logits (the single-GPU path, ``trainer.py:231-234``; the multi-GPU path uses
net 1 and EMA 2); the WebVision config has no ``coef_step`` (a KeyError there): 0 here; the
official warm-up path is unused by every config (``warmup`` 0) and not built. The run's optimiser
trains both networks (official: SGD lr 0.02, momentum 0.9, wd 5e-4); ``lr_schedule=official``
(default) divides its lr by 10 at the official milestone's share of the epochs (150 of 200 on
CIFAR-10), ``trainer`` uses the run's scheduler instead. Detection: ELR+ selects nothing; its
clean score is net 1's target probability of the given label, t^1_i[y_i].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, case
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput, run_setting
from methods.ema import ema_decay, make_ema, sigmoid_rampup, update_ema
from methods.lr import base_lrs, set_lrs
from methods.mixmatch import mixup

PROB_CLAMP = 1e-4  # loss.py:33: torch.clamp(y_pred, 1e-4, 1.0 - 1e-4)
OFFICIAL_STEPS_PER_EPOCH = 352  # ceil(45000 / 128): cifar10.py's 45k training split, batch 128 (inferred)


# Per-setting defaults of the official configs (ELR_plus/config_*.json): data sets without a config
# take CIFAR-10's of their noise type (asymmetric for class-dependent models) with at most 10
# classes, CIFAR-100's otherwise. The ramps are the official ema_step / coef_step as a share of the
# official run's steps.
REAL_DATA = ("clothing1m", "webvision")
C10_RAMP = 40000 / (200 * OFFICIAL_STEPS_PER_EPOCH)  # ema_step 40000, 200 epochs (config_cifar10*.json)
C100_RAMP = 40000 / (250 * OFFICIAL_STEPS_PER_EPOCH)  # ema_step = coef_step = 40000, 250 epochs (config_cifar100.json)
BETA = PerSetting(
    case(0.7, "config_clothing1m.json, config_webvision.json", dataset=REAL_DATA),
    case(0.9, "config_cifar100.json", dataset="cifar100"),
    case(0.9, "config_cifar100.json (> 10 classes)", classes=">10"),
    case(0.9, "config_cifar10_asym.json (class-dependent noise)", noise=CLASS_DEPENDENT),
    case(0.7, "config_cifar10.json"))
LAM = PerSetting(
    case(3.0, "config_clothing1m.json, config_webvision.json", dataset=REAL_DATA),
    case(7.0, "config_cifar100.json", dataset="cifar100"),
    case(7.0, "config_cifar100.json (> 10 classes)", classes=">10"),
    case(1.0, "config_cifar10_asym.json (class-dependent noise)", noise=CLASS_DEPENDENT),
    case(3.0, "config_cifar10.json"))
ALPHA = PerSetting(
    case(1.5, "config_webvision.json mixup_alpha", dataset="webvision"),
    case(1.0, "config_cifar10*.json, config_cifar100.json, config_clothing1m.json mixup_alpha"))
GAMMA = PerSetting(
    case(0.9999, "config_clothing1m.json ema_alpha", dataset="clothing1m"),
    case(0.997, "config_cifar10*.json, config_cifar100.json, config_webvision.json ema_alpha"))
EMA_UPDATE = PerSetting(
    case(False, "config_clothing1m.json, config_webvision.json ema_update", dataset=REAL_DATA),
    case(True, "config_cifar10*.json, config_cifar100.json ema_update"))
EMA_RAMP = PerSetting(
    case(0.0, "config_clothing1m.json (ema_step -1, unused), config_webvision.json: no ramp", dataset=REAL_DATA),
    case(C100_RAMP, "config_cifar100.json: ema_step 40000 of 250 x 352 steps", dataset="cifar100"),
    case(C100_RAMP, "config_cifar100.json (> 10 classes)", classes=">10"),
    case(C10_RAMP, "config_cifar10*.json: ema_step 40000 of 200 x 352 steps"))
COEF_RAMP = PerSetting(
    case(0.0, "config_clothing1m.json, config_webvision.json (no coef_step: 0)", dataset=REAL_DATA),
    case(C100_RAMP, "config_cifar100.json: coef_step 40000 of 250 x 352 steps", dataset="cifar100"),
    case(C100_RAMP, "config_cifar100.json (> 10 classes)", classes=">10"),
    case(0.0, "config_cifar10*.json: coef_step 0, no ramp"))
# not an option: the official MultiStepLR milestone (lr x 0.1) as a share of the official epochs
# (config_*.json lr_scheduler, train.py:107-108), for lr_schedule=official
DECAY_SHARE = PerSetting(
    case(7 / 15, "config_clothing1m.json: 7 of 15 epochs", dataset="clothing1m"),
    case(50 / 100, "config_webvision.json: 50 of 100 epochs", dataset="webvision"),
    case(200 / 250, "config_cifar100.json: 200 of 250 epochs", dataset="cifar100"),
    case(200 / 250, "config_cifar100.json (> 10 classes)", classes=">10"),
    case(150 / 200, "config_cifar10*.json: 150 of 200 epochs"))


@dataclass
class ELRPlusOptions:
    beta: float | None = field(default=None, metadata={
        "help": "momentum of the per-sample targets; default by setting (CIFAR-10 sym 0.7, asym 0.9, CIFAR-100 0.9, "
                "Clothing1M and WebVision 0.7)", "source": "ELR_plus/config_*.json beta", "setting": BETA})
    lam: float | None = field(default=None, metadata={
        "help": "weight of the ELR term; default by setting (CIFAR-10 sym 3, asym 1, CIFAR-100 7, Clothing1M 3, "
                "WebVision 3)", "source": "ELR_plus/config_*.json lambda", "setting": LAM})
    alpha: float | None = field(default=None, metadata={
        "help": "mixup Beta(alpha, alpha); default 1 (1.5 on WebVision)",
        "source": "ELR_plus/config_*.json mixup_alpha", "setting": ALPHA})
    gamma: float | None = field(default=None, metadata={
        "help": "weight-averaging decay; default 0.997 (0.9999 on Clothing1M)",
        "source": "ELR_plus/config_*.json ema_alpha", "setting": GAMMA})
    ema_update: bool | None = field(default=None, metadata={
        "help": "ramp the averaging weight up by sigmoid_rampup over ema_ramp (else min(1 - 1/(step+1), gamma)); "
                "default true on CIFAR, false on Clothing1M and WebVision",
        "source": "ELR_plus/config_*.json ema_update; trainer.py:321-331",
        "setting": EMA_UPDATE})
    ema_ramp: float | None = field(default=None, metadata={
        "help": "length of the averaging ramp as a share of the run's steps; default the official ema_step's share "
                "(40000 of 70400 steps on CIFAR-10, of 88000 on CIFAR-100)",
        "source": "ELR_plus/config_*.json ema_step", "setting": EMA_RAMP})
    coef_ramp: float | None = field(default=None, metadata={
        "help": "length of the ELR weight's ramp as a share of the run's steps; default the official coef_step's "
                "share (0 on CIFAR-10: no ramp; 40000 of 88000 steps on CIFAR-100)",
        "source": "ELR_plus/config_*.json coef_step", "setting": COEF_RAMP})

    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: the lr / 10 step of the official MultiStepLR at its share of the epochs (150/200 on "
                "CIFAR-10, 200/250 on CIFAR-100, 7/15 Clothing1M, 50/100 WebVision); trainer: the run's schedule",
        "source": "ELR_plus/config_*.json lr_scheduler; train.py:107-108"})

    def __post_init__(self) -> None:
        for key in ("beta", "gamma"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{key} {value} is outside [0, 1)")
        if self.lam is not None and not self.lam >= 0:
            raise ValueError(f"lam {self.lam} must be >= 0")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha {self.alpha} must be positive")
        for key in ("ema_ramp", "coef_ramp"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{key} {value} is outside [0, 1] (a share of the run's steps)")


def elr_plus_loss(logits: torch.Tensor, y_mix: torch.Tensor, q: torch.Tensor, lam: float, coef: float,
                  target_ce: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE against the mixed one-hot labels (or normalize(y_mix * q) with ``target_ce``) plus
    ``coef * lam`` times the ELR term against the mixed targets ``q`` (loss.py:23-36)."""
    if target_ce:
        y_mix = F.normalize(y_mix * q, p=1, dim=1)
    ce = -(y_mix * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    p = F.softmax(logits, dim=1).clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    reg = (1 - (q * p).sum(dim=1)).log().mean()
    return ce + coef * lam * reg, {"loss_ce": ce.detach(), "loss_elr": reg.detach()}


def update_targets(target: torch.Tensor, idx: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> None:
    """t_i <- beta t_i + (1 - beta) softmax(o_i) / sum, in place at the dataset indices (loss.py:38-41)."""
    p = F.softmax(teacher_logits.float(), dim=1)
    target[idx] = beta * target[idx] + (1 - beta) * (p / p.sum(dim=1, keepdim=True))


@METHODS.register("elr_plus", aliases=("elr+",))
class ELRPlus(Method):
    """ELR+ (NeurIPS 2020): two nets with ELR targets from the peer's weight average, and mixup."""

    family = "semi-supervised"  # `bench report` and `bench plot` group methods by it

    paper = "Liu et al., Early-Learning Regularization Prevents Memorization of Noisy Labels, NeurIPS 2020"
    code = "github.com/shengliu66/ELR (ELR_plus/)"
    Options = ELRPlusOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """beta and lam over the official configs' values (beta 0.7 / 0.9, lambda 1 / 3 / 7), mixup
        alpha over 1 / 1.5 and the averaging decay over 0.997 / 0.9999 (config_*.json); the ends
        beyond them are our choice."""
        return {
            "beta": Param("float", 0.5, 0.99, grid=(0.5, 0.7, 0.9, 0.99), source="ELR_plus configs 0.7, 0.9"),
            "lam": Param("float", 0.5, 10.0, log=True, grid=(1.0, 3.0, 7.0, 10.0), source="ELR_plus configs 1, 3, 7"),
            "alpha": Param("float", 0.5, 2.0, grid=(0.5, 1.0, 1.5, 2.0), source="ELR_plus configs 1, 1.5"),
            "gamma": Param("float", 0.99, 0.9999, log=True, grid=(0.99, 0.997, 0.999, 0.9999),
                           source="ELR_plus configs 0.997, 0.9999"),
        }

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts
        # per-setting defaults filled in by Method.__init__
        self.beta, self.lam, self.alpha, self.gamma = o.beta, o.lam, o.alpha, o.gamma
        self.ema_update, self.ema_ramp, self.coef_ramp = o.ema_update, o.ema_ramp, o.coef_ramp
        total = ctx.epochs * math.ceil(ctx.num_train / ctx.batch_size)  # net 1's steps in the run
        self.ema_step, self.coef_step = self.ema_ramp * total, self.coef_ramp * total
        self.target_ce = ctx.num_classes == 100  # loss.py:28-30: `if self.num_classes == 100`
        self.decay_epoch = round(DECAY_SHARE(run_setting(ctx)) * ctx.epochs)
        trainer_schedule = ctx.epochs if o.lr_schedule == "trainer" else None
        for k in ("1", "2"):
            self.add_network(f"net{k}", schedule_epochs=trainer_schedule)
            # train.py:75,78: the average is a network of its own initialisation, without gradient
            self.models[f"ema{k}"] = make_ema(ctx.make_backbone())
            self.state[f"target{k}"] = torch.zeros(ctx.num_train, ctx.num_classes, device=ctx.device)
        self.base_lr = base_lrs(self.optimizers)
        self.global_step = 0
        self._batches: dict[str, int] = {}
        self._step = 0

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("net1", optimizers=("net1",)), Phase("net2", optimizers=("net2",))]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self._batches = {}
        if self.opts.lr_schedule == "official":  # MultiStepLR(gamma 0.1) from the epoch alone: resume-safe
            factor = 0.1 if epoch >= self.decay_epoch else 1.0
            set_lrs(self.optimizers, self.base_lr, lambda lr: lr * factor)
        return {"global_step": float(self.global_step)}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        k, other = ("1", "2") if phase.name == "net1" else ("2", "1")
        b = self._batches.get(phase.name, 0)
        self._batches[phase.name] = b + 1
        self._step = self.global_step + b + 1  # trainer.py:111-112: local_step += 1 before its uses
        x, y, idx = batch["train"], batch["label"], batch["index"]
        target = self.state[f"target{k}"]
        with torch.no_grad():
            update_targets(target, idx, self.models[f"ema{other}"](x), self.beta)
        onehot = F.one_hot(y, self.ctx.num_classes).float()
        mixed_x, mixed_t = mixup(x, torch.cat([onehot, target[idx]], dim=1), self.alpha, self.ctx.generators())
        y_mix, q = mixed_t.split(self.ctx.num_classes, dim=1)
        logits = self.models[f"net{k}"](mixed_x)
        coef = sigmoid_rampup(self._step, self.coef_step)
        loss, terms = elr_plus_loss(logits.float(), y_mix, q, self.lam, coef, self.target_ce)
        # terms: means over both networks' steps (as DivideMix); train accuracy: net 1 on the mixed
        # batch against the given label of the larger mixing share (lambda >= 1/2)
        return StepOutput(loss=loss, logits=logits if k == "1" else None, terms=terms)

    def after_step(self, phase: Phase) -> None:
        k = "1" if phase.name == "net1" else "2"
        alpha = ema_decay(self._step, self.gamma, self.ema_update, self.ema_step)
        update_ema(self.models[f"ema{k}"], self.models[f"net{k}"], alpha)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.global_step += self._batches.get("net1", 0)  # base_trainer.py:188: net 1's step count
        return {}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.models["net1"](x) + self.models["net2"](x)) / 2  # trainer.py:231-234 (single GPU)

    def detections(self, epoch: int) -> list[Detection]:
        """Net 1's target probability of the given label (a score; ELR+ selects nothing)."""
        t = self.state["target1"]
        return [Detection(t.gather(1, self.ctx.given_labels.to(t.device)[:, None]).squeeze(1))]

    def extra_state(self) -> dict[str, Any]:
        return {"global_step": self.global_step}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
