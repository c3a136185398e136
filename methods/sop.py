"""SOP and SOP+, sparse over-parameterisation of the label noise (Liu, Zhu, Qu, You, "Robust
Training under Label Noise by Over-parameterization", ICML 2022; official code
github.com/shengliu66/SOP @4d991ce: ``model/loss.py`` ``overparametrization_loss``,
``trainer/trainer.py``, ``train.py``, ``config_cifar100.json``, ``README.md``).

Every training sample i has two learnable vectors besides the network: u_i (a scalar) and v_i
(C values), initialised N(0, std 1e-8) (loss.py:45-52; config_cifar100.json:21-30), drawn here
from the run's generator. With y the one-hot given label and z the network's logits
(loss.py:70-110):

    U = clamp(u_i^2 y, 0, 1),  V = clamp(v_i^2 (1 - y), 0, 1)
    p = clamp(softmax(z) + U - V.detach(), min 1e-4);  p = p / max(|p|_1, 1e-4);  p = clamp(p, 1e-4, 1)
    L = mean_i -sum_c y log p  +  sum_{i,c} (onehot(argmax z) + U - V - y)^2 / B
        + r_bal * (-sum_c 1/C log clamp(mean_batch p_c, 1e-4, 1))
        + r_cons * mean_i KL(softmax(z_weak).detach() || softmax(z_strong))

so u learns from the cross-entropy, the MSE and the balance term, v only from the MSE (V is
detached in p), and the network from the cross-entropy, the balance and the consistency terms
(the MSE's one-hot argmax is detached). u_i^2 is how much the given label needed propping up:
``detections`` offers -u_i^2 as a clean score (a score only: SOP selects nothing). The gradients
of u and v are proportional to u and v, so from their 1e-8 start they grow geometrically, once per
visit: in the first epochs SOP trains as CE does (bit for bit in a 3-epoch Fashion-MNIST run), and
the correction appears later. The small start is the method's implicit sparsity bias, as published.

u and v are ``nn.Parameter``s of a small module kept as ``models["uv"]`` (so the checkpoint
carries them), each with its own SGD optimiser (``optimizers["u"]``, ``["v"]``): lr_u / lr_v,
momentum 0, weight decay 0, no scheduler (train.py:83-93, config_cifar100.json:62-72; the
u/v scheduler is commented out, trainer.py:155-156). The official code holds both in one SGD with
two parameter groups and steps it before the network's (trainer.py:103-110): the same update,
since the gradients are computed before either step. The trainer steps every optimiser each
batch and, under AMP, unscales each through its grad scaler; only the network has a scheduler,
and the run's weight decay reaches only the network's optimiser. Since momentum and weight decay
are 0, a sample's u and v change only in the steps that visit it.

**SOP** is r_cons = r_bal = 0 on the run's ``train`` view. **SOP+** adds r_cons 0.9, r_bal 0.1
(config_cifar100.json:77-85) and a strong view, ``autoaug-cutout`` (crop/flip + AutoAugment's
CIFAR-10 policy + Cutout 16; config:34-37, data_loaders.py:97-124; the official policy is
Fast-AutoAugment's ``autoaug_paper_cifar10`` (augmentation_archive.py:10-69): the same table with
other magnitude mappings, e.g. Posterize level 7 = 2 bits where torchvision's is 5: an
approximation, named), forwarded with the ``weak`` view in
one batch (trainer.py:92-101); CE, MSE and balance use the weak half. With r_cons 0 the strong
view is not drawn or forwarded, as trainer.py:92-96.

Defaults of (lr_u, lr_v) by setting (the tables ``LR_U`` and ``LR_V``): CIFAR-100 symmetric 1 / 10
(config_cifar100.json:71-72, README.md:15), CIFAR-100 asymmetric 0.1 / 100 (README.md:17-19; the
README says the paper used lr_u 1 and the released code needs 0.1: the code's value is the
default, ``--set lr_u=1`` gives the paper's), CIFAR-10 10 / 10 for every noise type (not in the
official repository: noisy-labels' reading of the paper's Table A.1, NP-C SOP.py:19-20,
SOP_plus.py:19-20). Class-dependent noise (``asym``, ``pairflip``) takes the asymmetric values,
every other model the symmetric ones; data sets without official values take the CIFAR-10 values
when they have at most 10 classes, else CIFAR-100's (so CIFAR-100N gets 1 / 10, as NP's
cifar100n configs). The resolved values are logged as ``sop_lr_u`` / ``sop_lr_v`` in epoch 1.

The network's optimiser is the run's, as for every method (official: SGD lr 0.02, momentum 0.9,
weight decay 1e-3 (CIFAR-100) or 5e-4 (CIFAR-10, NP), batch 128, PreActResNet-18 (ResNet-34 for
SOP on CIFAR-10 in NP)). ``lr_schedule=official`` (default) gives its official schedule as shares
of the run: CIFAR-100 and SOP+ cosine over the epochs to lr / 100 (config_cifar100.json:39-60,
98-108: 0.02 to 2e-4 over 300), SOP on at most 10 classes x0.1 at 40 and 80 of 120 epochs (NP-C
SOP.py); ``trainer`` uses the run's scheduler. u and v learn once per visit with a 1 / B share of
the batch's gradient, so their published learning rates assume batch 128: other batch sizes change
how fast they move (not rescaled here).
SOP has no epoch-based constants (no warm-up: ``begin`` 0), so nothing is scaled to --epochs.

Deviations: the official CIFAR-100 strong view is normalised with CIFAR-10 statistics and applies
AutoAugment before crop/flip (data_loaders.py:97-124); the shared view layer normalises every view
with the data set's statistics and crops/flips first (bench/training/data.py). The official
"val" split, which overlaps the training set (cifar100.py), does not exist here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.augment import auto_augment, cutout
from bench.common.defaults import PerSetting, case
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from bench.common.views import View, register_view
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs

EPS = 1e-4  # eps = 1e-4: the clamps and F.normalize's floor (loss.py:68, 83-87, 106)

# Per-setting (lr_u, lr_v): class-dependent noise takes the asymmetric values, every other model
# the symmetric ones; data sets without official values take CIFAR-10's with at most 10 classes,
# else CIFAR-100's.
LR_U = PerSetting(
    case(0.1, "README.md:17-19: CIFAR-100 asym (the paper used lr_u 1)", dataset="cifar100", noise=CLASS_DEPENDENT),
    case(1.0, "config_cifar100.json:71; README.md:15: CIFAR-100 sym", dataset="cifar100"),
    case(0.1, "README.md:17-19: as CIFAR-100 asym (> 10 classes)", classes=">10", noise=CLASS_DEPENDENT),
    case(1.0, "config_cifar100.json:71: as CIFAR-100 sym (> 10 classes)", classes=">10"),
    case(10.0, "NP-C SOP.py:19, SOP_plus.py:19 (paper Table A.1 as NP read it): CIFAR-10"))
LR_V = PerSetting(
    case(100.0, "README.md:17-19: CIFAR-100 asym", dataset="cifar100", noise=CLASS_DEPENDENT),
    case(10.0, "config_cifar100.json:72; README.md:15: CIFAR-100 sym", dataset="cifar100"),
    case(100.0, "README.md:17-19: as CIFAR-100 asym (> 10 classes)", classes=">10", noise=CLASS_DEPENDENT),
    case(10.0, "config_cifar100.json:72: as CIFAR-100 sym (> 10 classes)", classes=">10"),
    case(10.0, "NP-C SOP.py:20, SOP_plus.py:20 (paper Table A.1 as NP read it): CIFAR-10"))


def _autoaug_cutout(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return cutout(x, gen)  # a square half the image side (16 px of 32), in the normalised image


# SOP+'s strong view (data_loaders.py: crop + flip + CIFAR10Policy() + Cutout(16)): AutoAugment with
# the CIFAR-10 policy drawn per sample (bench.common.augment.auto_augment), then Cutout
register_view(View("autoaug-cutout", "{base} + AutoAugment (CIFAR-10 policy) + Cutout 16",
                   "SOP data_loaders.py: CIFAR10Policy() + Cutout(16)", owner=__name__, after=auto_augment,
                   normalised=_autoaug_cutout))


@dataclass
class SOPOptions:
    lr_u: float | None = field(default=None, metadata={
        "help": "SGD lr of u (momentum 0, wd 0, no schedule); default by setting (CIFAR-10 10, CIFAR-100 sym 1, "
                "CIFAR-100 asym 0.1 (paper: 1); other data sets as CIFAR-10 if <= 10 classes else CIFAR-100)",
        "source": "config_cifar100.json:71; README.md:15-19; NP-C SOP.py:19", "setting": LR_U})
    lr_v: float | None = field(default=None, metadata={
        "help": "SGD lr of v (momentum 0, wd 0, no schedule); default by setting (CIFAR-10 10, CIFAR-100 sym 10, "
                "CIFAR-100 asym 100; other data sets as lr_u)",
        "source": "config_cifar100.json:72; README.md:15-19; NP-C SOP.py:20", "setting": LR_V})
    init_std: float = field(default=1e-8, metadata={
        "help": "standard deviation of the N(0, std) initialisation of u and v",
        "source": "config_cifar100.json:27-28; loss.py:50-52"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "the network's lr: official: cosine to lr/100 over the run (CIFAR-100 and SOP+), for SOP on <= 10 "
                "classes lr x 0.1 at 40 and 80 of 120 epochs as shares; trainer: the run's scheduler",
        "source": "config_cifar100.json:98-108 (T_max 300, eta_min 2e-4 of 0.02); NP-C SOP.py (milestones 40, 80)"})

    def __post_init__(self) -> None:
        for key in ("lr_u", "lr_v"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"{key} {value} must be > 0")
        if not self.init_std >= 0:
            raise ValueError(f"init_std {self.init_std} must be >= 0")


@dataclass
class SOPPlusOptions(SOPOptions):
    r_cons: float = field(default=0.9, metadata={
        "help": "weight of the weak-to-strong consistency KL (0: no strong view is drawn)",
        "source": "config_cifar100.json:82 ratio_consistency"})
    r_bal: float = field(default=0.1, metadata={
        "help": "weight of the class-balance term on the corrected prediction",
        "source": "config_cifar100.json:83 ratio_balance"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("r_cons", "r_bal"):
            value = getattr(self, key)
            if not value >= 0:
                raise ValueError(f"{key} {value} must be >= 0")


class NoiseParams(nn.Module):
    """Per-sample u (N x 1) and v (N x C), N(0, std) from ``gen`` (loss.py:45-52)."""

    def __init__(self, num_train: int, num_classes: int, std: float, gen: torch.Generator) -> None:
        super().__init__()
        kw: dict[str, Any] = {"generator": gen, "device": gen.device, "dtype": torch.float32}
        self.u = nn.Parameter(torch.randn(num_train, 1, **kw) * std)
        self.v = nn.Parameter(torch.randn(num_train, num_classes, **kw) * std)


def corrected_prediction(z: torch.Tensor, big_u: torch.Tensor, big_v: torch.Tensor) -> torch.Tensor:
    """softmax(z) + U - V (V detached: v learns from the MSE only), clamped to >= 1e-4, divided by
    max(L1 norm, 1e-4), clamped to [1e-4, 1] (loss.py:81-87)."""
    pred = (F.softmax(z, dim=1) + big_u - big_v.detach()).clamp(min=EPS)
    return F.normalize(pred, p=1, dim=1, eps=EPS).clamp(EPS, 1.0)


def sop_loss(z_w: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, z_s: torch.Tensor | None = None,
             r_bal: float = 0.0, r_cons: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SOP's loss (loss.py:55-127) of the weak-view logits ``z_w`` (B x C), given labels ``y``, the
    batch's rows of u (B x 1) and v (B x C), and for SOP+ the strong-view logits ``z_s``."""
    onehot = F.one_hot(y, z_w.shape[1]).to(z_w.dtype)
    big_u = (u.pow(2) * onehot).clamp(0, 1)
    big_v = (v.pow(2) * (1 - onehot)).clamp(0, 1)
    pred = corrected_prediction(z_w, big_u, big_v)
    ce = -(onehot * pred.log()).sum(dim=1).mean()
    hard = F.one_hot(z_w.detach().argmax(dim=1), z_w.shape[1]).to(z_w.dtype)
    mse = (hard + big_u - big_v - onehot).pow(2).sum() / len(y)
    loss = ce + mse
    terms = {"loss_ce": ce.detach(), "loss_mse": mse.detach()}
    if r_bal > 0:  # loss.py:102-110: the prior 1/C against the batch mean of the corrected prediction
        avg = pred.mean(dim=0).clamp(EPS, 1.0)
        bal = -(avg.log() / z_w.shape[1]).sum()
        loss = loss + r_bal * bal
        terms["loss_bal"] = bal.detach()
    if z_s is not None and r_cons > 0:  # loss.py:112-127: KL(weak (fixed) || strong)
        cons = F.kl_div(F.log_softmax(z_s, dim=1), F.softmax(z_w, dim=1).detach(), reduction="none").sum(1).mean()
        loss = loss + r_cons * cons
        terms["loss_cons"] = cons.detach()
    return loss, terms


@METHODS.register("sop")
class SOP(Method):
    """SOP (ICML 2022): per-sample sparse terms u^2 y - v^2 (1 - y) learn the label noise beside the network."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Liu, Zhu, Qu & You, Robust Training under Label Noise by Over-parameterization, ICML 2022"
    code = "github.com/shengliu66/SOP"
    Options = SOPOptions
    r_bal = 0.0  # SOP: no balance and no consistency term, one view
    r_cons = 0.0

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """lr_u over the published 0.1, 1, 10 and lr_v over 10, 100 (README.md, NP configs), both on
        a log scale over 0.1-100; the range ends are our choice."""
        return {
            "lr_u": Param("float", 0.1, 100.0, log=True, grid=(0.1, 1.0, 10.0), source="README.md; NP-C SOP.py"),
            "lr_v": Param("float", 0.1, 100.0, log=True, grid=(10.0, 100.0), source="README.md; NP-C SOP.py"),
        }

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts
        self.lr_u, self.lr_v = o.lr_u, o.lr_v  # per-setting defaults filled in by Method.__init__
        # first: the trainer logs the first optimiser's lr; the run's scheduler only with lr_schedule=trainer
        self.add_network("net", schedule_epochs=ctx.epochs if o.lr_schedule == "trainer" else None)
        self.base_lr = base_lrs({"net": self.optimizers["net"]})
        uv = self.models["uv"] = NoiseParams(ctx.num_train, ctx.num_classes, o.init_std, ctx.generators().torch)
        # train.py:83-89: SGD, momentum 0, weight decay 0; no scheduler (trainer.py:155-156 commented out)
        self.optimizers["u"] = torch.optim.SGD([uv.u], lr=self.lr_u, momentum=0.0, weight_decay=0.0)
        self.optimizers["v"] = torch.optim.SGD([uv.v], lr=self.lr_v, momentum=0.0, weight_decay=0.0)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if self.opts.lr_schedule == "official":  # from the epoch alone: resume-safe; u and v keep theirs
            set_lrs(self.optimizers, self.base_lr, lambda lr: self._official_lr(lr, epoch))
        return {"sop_lr_u": self.lr_u, "sop_lr_v": self.lr_v} if epoch == 0 else {}

    def _official_lr(self, lr: float, epoch: int) -> float:
        """The network's official lr at ``epoch``: x 0.1 at 40 and 80 of 120 epochs for SOP on
        CIFAR-10-sized label sets (NP-C SOP.py), else cosine from lr to lr / 100 over the run
        (config_cifar100.json:98-108: CosineAnnealingLR T_max 300, eta_min 2e-4 with lr 0.02)."""
        epochs = self.ctx.epochs
        if self.name == "sop" and self.ctx.num_classes <= 10:
            return lr * 0.1 ** sum(epoch >= round(m * epochs) for m in (40 / 120, 80 / 120))
        low = lr / 100
        return low + (lr - low) * (1 + math.cos(math.pi * epoch / epochs)) / 2

    def _views(self) -> tuple[str, ...]:
        return self.view_sets["train"]

    def views(self, epoch: int) -> tuple[str, ...]:
        return self._views()

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        views, idx, y = self._views(), batch["index"], batch["label"]
        uv = self.models["uv"]
        x = batch[views[0]] if len(views) == 1 else torch.cat([batch[v] for v in views])
        logits = self.models["net"](x).float()  # weak and strong in one forward (trainer.py:92-98)
        z_w, z_s = logits[:len(y)], (logits[len(y):] if len(views) > 1 else None)
        loss, terms = sop_loss(z_w, y, uv.u[idx], uv.v[idx], z_s, self.r_bal, self.r_cons)
        return StepOutput(loss=loss, logits=z_w, terms=terms)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """The mean clamped u^2 (how much the given labels are being propped up)."""
        return {"sop_u2_mean": float(self.models["uv"].u.detach().pow(2).clamp(max=1).mean())}

    def detections(self, epoch: int) -> list[Detection]:
        """-u_i^2 as a clean score (large u: the label needed correcting); no selected set."""
        return [Detection(-self.models["uv"].u.detach().pow(2).squeeze(1))]


@METHODS.register("sop_plus")
class SOPPlus(SOP):
    """SOP+ (ICML 2022): SOP with a weak/strong consistency and a class-balance term."""

    family = "semi-supervised"  # `bench report` and `bench plot` group methods by it

    Options = SOPPlusOptions
    # the strong view only where the consistency term uses it (trainer.py:92-96)
    view_sets = {"consistency": ("weak", "autoaug-cutout"), "weak": ("weak",)}

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """SOP's lr_u and lr_v, and the two weights around the official 0.9 and 0.1
        (config_cifar100.json:82-83); the range ends are our choice."""
        return {
            **super().search_space(setting),
            "r_cons": Param("float", 0.1, 1.0, grid=(0.1, 0.5, 0.9), source="config_cifar100.json:82 (0.9)"),
            "r_bal": Param("float", 0.01, 1.0, log=True, grid=(0.01, 0.1, 1.0), source="config_cifar100.json:83 (0.1)"),
        }

    def setup(self) -> None:
        super().setup()
        self.r_cons, self.r_bal = self.opts.r_cons, self.opts.r_bal

    def _views(self) -> tuple[str, ...]:
        return self.view_sets["consistency" if self.r_cons > 0 else "weak"]
