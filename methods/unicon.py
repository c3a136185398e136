"""UNICON (Karim et al., CVPR 2022; official github.com/nazmul-karim170/UNICON, ``Train_cifar.py``,
``dataloader_cifar.py``, ``Contrastive_loss.py``, ``PreResNet_cifar.py``; the lines named below
are of those files).

DivideMix's two networks and MixMatch, with a different division and a contrastive loss:

1. Warm-up: each network CE on its own pass over the data (plus the negative-entropy penalty
   under class-dependent noise; the official code adds it under ``asym``).
2. After warm-up, for network 1 and then network 2: the Jensen-Shannon divergence between the
   one-hot given label and the mean softmax of both networks on the plain image
   (``Calculate_JSD``); threshold = mean JSD (``mean - (mean - min) / tau`` when the mean
   exceeds ``d_u``); selection ratio SR = share below it; **uniform selection**: the
   ``int(SR N / C)`` lowest-JSD samples of every given-label class are labeled, the rest
   unlabeled; label-refinement weight ``w = 1 - JSD`` where JSD >= 0.5, else 1. Network 2's
   JSD is computed again after network 1 has trained (Train_cifar.py:412-417): its phase
   selects when it begins (:attr:`methods.base.Phase.select`).
3. Per step: a labeled batch of B (drop_last) and an unlabeled batch of ``int(B / (2 SR))``,
   four views each (``weak``, ``weak2``: the base; ``autoaug``, ``autoaug2``: the base plus
   AutoAugment's CIFAR-10 policy); co-guessing on the weak views of the unlabeled batch, label
   refinement on the labeled one, both sharpened; SimCLR loss (``SupConLoss`` without labels,
   temperature 0.05) on the projections of the two AutoAugment views of the unlabeled batch;
   mixup of the AutoAugment views, CE + lambda_u(t) MSE + uniform prior (the shared
   :mod:`methods.mixmatch`), plus lambda_c times the contrastive loss.

Test: the sum of both networks' logits (Train_cifar.py:258-260). Each network carries the
projection head of ``PreResNet_cifar.py`` (``bnl(projection_head(features))``: Linear to 128,
BatchNorm1d) on the backbone's penultimate features. Batch sizes follow DivideMix's ratio in
this harness: warm-up the run's batch (official 2B = 128), training half of it (official 64).

Departures, named: the official JSD uses the natural log, so the mean never exceeds d_u = 0.7
and the tau branch is dead code (it would raise a NameError); ``jsd_base=2`` divides by ln 2 as
the paper's [0, 1] range presumes (selection, threshold and weights alike). The official
labeled list has int(SR N) zero-filled slots, of which the classes fill C int(SR N / C) at most
(a class shorter than its quota gives all it has), so whenever int(SR N) is not a multiple of C,
or a class is short, the rest stay index 0: sample 0 joins the labeled list, once per empty
slot, and leaves the unlabeled set (dataloader_cifar.py:139-156, 163-167); here the labeled set
holds the selected samples only, each once. The official JSD of network 2 runs network 1 in
training mode (no ``.eval()``); here both are in eval mode, as the Clothing1M script does.
The official best checkpoint is chosen on the test set; here the run reports best and last like
every method. The AutoAugment views follow torchvision's ``AutoAugment`` (zero fill, nearest
interpolation); the ``CIFAR10Policy`` UNICON imports has the same sub-policies but fills warps
with grey and shears bicubically.

The step and schedule are the CIFAR script's on every data set. The other official scripts
differ in ways not reproduced here: Clothing1M (``Train_clothing1M.py``) adds the warm-up
penalty always, trains each network twice per epoch, reloads network 1's best-validation
checkpoint before network 2's JSD, co-guesses and refines on the strong views, contrasts the
weak ones, mixes and forwards only 2B rows, and has its own cosine (100 epochs); Tiny-ImageNet
uses ImageNet's AutoAugment policy with ColorJitter and a step schedule; WebVision a step
schedule and a "jump restart". Their defaults (warm-up, lambda_u, alpha) are taken; the rest is
the CIFAR recipe, named.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.augment import auto_augment
from bench.common.defaults import PerSetting, case
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from bench.common.views import View, register_view
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs
from methods.mixmatch import linear_rampup, mixmatch_loss, mixup, negative_entropy, sharpen
from methods.shared import classifier_of
from methods.streams import BatchStream

EPS = 1e-10  # kl_divergence's (p + 1e-10) / (q + 1e-10) (Train_cifar.py:278)
VIEWS = ("weak", "weak2", "autoaug", "autoaug2")  # transform_weak x 2, transform_strong x 2 (dataloader_cifar.py)
# UNICON's strong views (dataloader_cifar.py: crop + flip + CIFAR10Policy()): AutoAugment with the
# CIFAR-10 policy, sub-policy, probabilities and signs drawn per sample, on uint8 before normalisation,
# with torchvision's AutoAugment(AutoAugmentPolicy.CIFAR10) semantics (bench.common.augment.auto_augment)
for _name, _draw in (("autoaug", ""), ("autoaug2", ", a second draw")):
    register_view(View(_name, "{base} + AutoAugment (CIFAR-10 policy)" + _draw,
                       "UNICON dataloader_cifar.py transform_strong: CIFAR10Policy()", owner=__name__,
                       after=auto_augment))
COSINE_SHARE = 280 / 350  # CosineAnnealingLR(T_max=280) over epochs 0..350 (Train_cifar.py:35, 359)
ETA_MIN_SHARE = 2e-4 / 0.02  # eta_min 2e-4 of lr 0.02 (Train_cifar.py:28, 359)


# Per-data-set defaults of the official scripts (Train_*.py, lines named in each case); other data
# sets take the CIFAR values of the same class count.
WARMUP = PerSetting(
    case(0, "Train_clothing1M.py: warm_up 0 [330]", dataset="clothing1m"),
    case(2, "Train_webvision.py: warm_up 2 [253]", dataset="webvision"),
    case(15, "Train_TinyImageNet.py: warm-up 15 [298]", dataset="tiny-imagenet"),
    case(10, "Train_cifar.py: warm_up 10 (CIFAR-10) [338-341]", classes="<=10"),
    case(30, "Train_cifar.py: warm_up 30 (CIFAR-100) [338-341]"))
LAMBDA_U = PerSetting(
    case(0.0, "Train_clothing1M.py: no Lu term [147]", dataset="clothing1m"),
    case(0.0, "Train_webvision.py: no Lu term [137]", dataset="webvision"),
    case(50.0, "Train_TinyImageNet.py: lambda_u 50 [23]", dataset="tiny-imagenet"),
    case(30.0, "Train_cifar.py: lambda_u 30 [32]"))
ALPHA = PerSetting(
    case(0.5, "Train_clothing1M.py, Train_webvision.py, Train_TinyImageNet.py: alpha 0.5",
         dataset=("clothing1m", "webvision", "tiny-imagenet")),
    case(4.0, "Train_cifar.py: alpha 4 [31]"))


@dataclass
class UniconOptions:
    warmup_epochs: int | None = field(default=None, metadata={
        "help": "CE warm-up epochs; default per data set", "source": "Train_cifar.py:338-341 (10 / 30)",
        "setting": WARMUP})
    lambda_u: float | None = field(default=None, metadata={
        "help": "weight of the unlabeled MSE; default 30 (CIFAR), 0 (Clothing1M, WebVision)",
        "source": "Train_cifar.py:32; Train_clothing1M.py:147", "setting": LAMBDA_U})
    lambda_c: float = field(default=0.025, metadata={"help": "weight of the contrastive loss",
                                                     "source": "Train_cifar.py:33"})
    alpha: float | None = field(default=None, metadata={
        "help": "mixup Beta(alpha, alpha); default 4 (CIFAR), 0.5 (other data sets)", "source": "Train_cifar.py:31",
        "setting": ALPHA})
    temperature: float = field(default=0.5, metadata={"help": "sharpening temperature T",
                                                      "source": "Train_cifar.py:34"})
    contrastive_temperature: float = field(default=0.05, metadata={
        "help": "SimCLR temperature (= base temperature)", "source": "Contrastive_loss.py:14"})
    d_u: float = field(default=0.7, metadata={"help": "mean JSD above which the threshold moves down",
                                              "source": "Train_cifar.py:37"})
    tau: float = field(default=5.0, metadata={"help": "the move: threshold = mean - (mean - min) / tau",
                                              "source": "Train_cifar.py:38"})
    jsd_base: Literal["e", "2"] = field(default="e", metadata={
        "help": "e: natural-log JSD in [0, ln 2], the official code (the d_u branch never fires); "
                "2: JSD in [0, 1] as the paper's d_u presumes", "source": "Train_cifar.py:278-311"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: cosine per epoch over 280/350 of the epochs down to lr/100, rising after; "
                "trainer: the run's own schedule", "source": "Train_cifar.py:359"})

    def __post_init__(self) -> None:
        if (self.warmup_epochs or 0) < 0 or (self.lambda_u or 0) < 0 or self.lambda_c < 0:
            raise ValueError("warmup_epochs, lambda_u and lambda_c must be >= 0")
        if self.temperature <= 0 or self.contrastive_temperature <= 0 or (self.alpha is not None and self.alpha <= 0):
            raise ValueError("temperature, contrastive_temperature and alpha must be positive")
        if self.d_u <= 0 or self.tau <= 0:
            raise ValueError("d_u and tau must be positive")


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise JSD, natural log, as ``Jensen_Shannon`` (Train_cifar.py:278-287): with m = (p + q) / 2,
    0.5 KL(p || m) + 0.5 KL(q || m), KL(a || b) = sum a log((a + 1e-10) / (b + 1e-10))."""
    m = (p + q) / 2

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * ((a + EPS) / (b + EPS)).log()).sum(dim=1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def jsd_threshold(jsd: torch.Tensor, d_u: float, tau: float) -> float:
    """Mean JSD, moved to mean - (mean - min) / tau when it exceeds d_u (Train_cifar.py:403-405)."""
    thr = float(jsd.mean())
    return thr - (thr - float(jsd.min())) / tau if thr > d_u else thr


def uniform_selection(jsd: torch.Tensor, labels: torch.Tensor, num_classes: int, ratio: float) -> torch.Tensor:
    """Positions of the ``int(ratio * n / C)`` lowest-JSD samples of every given-label class (a
    class with fewer gives all it has), in class order, without the official index-0 padding
    (dataloader_cifar.py:138-156)."""
    quota = int(ratio * len(jsd) / num_classes)
    order = torch.argsort(jsd, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, lowest JSD first
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=jsd.device) - starts[labels[order]]
    return order[rank < quota]


def refinement_weight(jsd: torch.Tensor) -> torch.Tensor:
    """w = 1 - JSD where JSD >= 0.5, else 1 (dataloader_cifar.py:160-161)."""
    return torch.where(jsd >= 0.5, 1 - jsd, torch.ones_like(jsd))


def simclr_loss(f1: torch.Tensor, f2: torch.Tensor, temperature: float, base_temperature: float) -> torch.Tensor:
    """``SupConLoss`` without labels (SimCLR; Contrastive_loss.py): the 2n normalised features
    as anchors, each one's positive the other view of its sample, the other 2n - 2 negatives;
    -(T / T_base) times the mean log-probability of the positive."""
    z = torch.cat([f1, f2]).float()
    n = f1.shape[0]
    with torch.autocast(z.device.type, enabled=False):  # fp32 as the official code: logits reach 1 / T = 20
        sim = z @ z.T / temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return (temperature / base_temperature) * F.cross_entropy(sim, positive)


class ProjectedNet(nn.Module):
    """A backbone with UNICON's projection head on its penultimate features
    (PreResNet_cifar.py:131-133, 161: ``bnl(projection_head(out))``, Linear to 128 + BatchNorm1d).
    ``forward`` gives the logits (evaluation, test); :meth:`project` gives (projection, logits)."""

    def __init__(self, backbone: nn.Module, dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        classifier = classifier_of(backbone, "unicon")
        self.proj = nn.Sequential(nn.Linear(classifier.in_features, dim), nn.BatchNorm1d(dim))
        self._features: torch.Tensor | None = None
        classifier.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._features = inputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.backbone(x)
        features, self._features = self._features, None
        return self.proj(features.flatten(1)), logits


@METHODS.register("unicon")
class UNICON(Method):
    """UNICON (CVPR 2022): JSD-based uniform selection, MixMatch and SimCLR on the unlabeled set."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Karim et al., UNICON: Combating Label Noise Through Uniform Selection and Contrastive Learning, CVPR 2022"
    code = "github.com/nazmul-karim170/UNICON"
    smoke_options = {"warmup_epochs": "1"}  # warm-up, then selection, MixMatch and contrast
    view_sets = {"warmup": ("train",), "train": VIEWS}
    Options = UniconOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The SSL weights and mixup: lambda_u over the published 0 (Clothing1M), 30 (CIFAR) and
        50 (Tiny-ImageNet); lambda_c around the official 0.025; alpha between 0.5 and 4. Range
        ends beyond the published values are our choice."""
        return {
            "lambda_u": Param("float", 0.0, 50.0, grid=(0.0, 30.0, 50.0), source="Train_cifar.py:32, Tiny 50"),
            "lambda_c": Param("float", 0.005, 0.1, log=True, grid=(0.01, 0.025, 0.05), source="Train_cifar.py:33"),
            "alpha": Param("float", 0.5, 4.0, log=True, grid=(0.5, 1.0, 4.0), source="Train_cifar.py:31 (4), 0.5"),
        }

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        self.warmup, self.lambda_u, self.alpha = int(o.warmup_epochs), o.lambda_u, o.alpha
        self.check_warmup(self.warmup)
        for k in ("net1", "net2"):
            net = ProjectedNet(ctx.make_backbone()).to(ctx.device)
            opt = ctx.make_optimizer(net.parameters())
            self.models[k], self.optimizers[k] = net, opt
            if o.lr_schedule == "trainer":
                sched = ctx.make_scheduler(opt, ctx.epochs)
                if sched is not None:
                    self.schedulers[k] = sched
        self.base_lr = base_lrs(self.optimizers)
        n = ctx.num_train
        for k in ("1", "2"):  # the last selection of each network: JSD and the labeled set
            self.state["jsd" + k] = torch.zeros(n, device=ctx.device)
            self.state["labeled" + k] = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        self.eye = torch.eye(ctx.num_classes, device=ctx.device)
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._streams: dict[str, BatchStream] = {}
        self._u_batch: dict[str, int] = {}
        self._weights: dict[str, torch.Tensor] = {}
        self._steps: dict[str, int] = {}
        self._log: dict[str, float] = {}

    # --- epoch structure -------------------------------------------------------------------
    def views(self, epoch: int) -> tuple[str, ...]:
        return self.view_sets["warmup" if epoch < self.warmup else "train"]

    def phases(self, epoch: int) -> list[Phase]:
        if epoch < self.warmup:  # warmup_standard for net1, then net2 (Train_cifar.py:392-396)
            return [Phase("warmup1", optimizers=("net1",)), Phase("warmup2", optimizers=("net2",))]
        half = max(1, self.ctx.batch_size // 2)
        return [Phase("net1", optimizers=("net1",), batch_size=half, select=lambda: self._select("1")),
                Phase("net2", optimizers=("net2",), batch_size=half, select=lambda: self._select("2"))]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if self.opts.lr_schedule == "official":  # CosineAnnealingLR's closed form, stepped per epoch
            t_max = max(1, round(COSINE_SHARE * self.ctx.epochs))
            factor = ETA_MIN_SHARE + (1 - ETA_MIN_SHARE) * (1 + math.cos(math.pi * epoch / t_max)) / 2
            set_lrs(self.optimizers, self.base_lr, lambda lr: lr * factor)
        self._reset_epoch()
        return {"lambda_u": self.lambda_u}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        out = dict(self._log)
        self._reset_epoch()
        return out

    def _select(self, k: str) -> torch.Tensor:
        """JSD of every sample (of the epoch's sample when the data set draws one) under both
        networks, threshold, uniform selection; sets network ``k``'s unlabeled stream, batch size
        and refinement weights; returns the labeled dataset indices."""
        t0 = time.perf_counter()
        ctx = self.ctx
        pool = ctx.epoch_pool()
        with torch.no_grad():
            p1 = F.softmax(ctx.predict_train(self.models["net1"], pool), dim=1)
            p2 = F.softmax(ctx.predict_train(self.models["net2"], pool), dim=1)
        given = ctx.given_labels if pool is None else ctx.given_labels[pool]
        jsd = js_divergence((p1 + p2) / 2, self.eye[given])
        if self.opts.jsd_base == "2":
            jsd = jsd / math.log(2)
        thr = jsd_threshold(jsd, self.opts.d_u, self.opts.tau)
        ratio = int((jsd < thr).sum()) / max(1, len(jsd))  # float64, as sum(prob < thr).item() / N
        chosen = uniform_selection(jsd, given, ctx.num_classes, ratio)
        ids = torch.arange(ctx.num_train, device=ctx.device) if pool is None else pool.to(ctx.device)
        labeled = torch.zeros(ctx.num_train, dtype=torch.bool, device=ctx.device)
        labeled[ids[chosen]] = True
        full = torch.full((ctx.num_train,), float(jsd.max()) if len(jsd) else 0.0, device=ctx.device)
        full[ids] = jsd
        self.state["jsd" + k], self.state["labeled" + k] = full, labeled
        unlabeled = ids[~labeled[ids]]
        half = max(1, ctx.batch_size // 2)
        self._u_batch[k] = int(half / (2 * ratio)) if ratio > 0 else 0  # batch_size / (2 SR) (dataloader_cifar.py)
        # full batches (drop_last, dataloader_cifar.py:325), one per full labeled batch (the steps)
        self._streams[k] = BatchStream(ctx, "net" + k, unlabeled, self._u_batch[k], VIEWS, "drop",
                                       count=len(chosen) // half)
        self._weights[k] = refinement_weight(full)
        self._log.update({f"jsd_threshold_net{k}": thr, f"selection_ratio_net{k}": ratio,
                          f"labeled_frac_net{k}": len(chosen) / max(1, len(ids)),
                          f"unlabeled_batch_net{k}": float(self._u_batch[k]),
                          f"select_s_net{k}": time.perf_counter() - t0})
        return ids[chosen]

    def detections(self, epoch: int) -> list[Detection]:
        """1 - JSD as the clean score: network 1's selection with its labeled set, network 2's
        (made after network 1 trained) as ``clean_auc_net2``."""
        if epoch < self.warmup:
            return []
        return [Detection(1 - self.state["jsd1"], selected=self.state["labeled1"]),
                Detection(1 - self.state["jsd2"], auc="clean_auc_net2")]

    # --- steps ----------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if phase.name.startswith("warmup"):
            return self._warmup_step(batch, "net" + phase.name[-1])
        return self._ssl_step(batch, epoch, phase)

    def _warmup_step(self, batch: dict[str, torch.Tensor], key: str) -> StepOutput:
        logits = self.models[key](batch["train"])
        loss = F.cross_entropy(logits, batch["label"])
        terms = {"loss_x": loss.detach()}
        if self.ctx.noise in CLASS_DEPENDENT:  # conf_penalty = NegEntropy() under asym (Train_cifar.py:326-329)
            penalty = negative_entropy(logits)
            loss = loss + penalty
            terms["penalty"] = penalty.detach()
        return StepOutput(loss=loss, logits=logits if key == "net1" else None, terms=terms)

    def _ssl_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        k = phase.name[-1]
        net, other = self.models[phase.name], self.models["net2" if k == "1" else "net1"]
        n_l = batch["index"].shape[0]
        if n_l < (phase.batch_size or 1):  # the labeled loader drops its last batch (drop_last=True)
            return StepOutput(loss=batch["weak"].new_zeros(()), step=False)
        net.train()
        other.eval()  # net2.eval(): frozen peer (Train_cifar.py:79)
        step = self._steps.get(k, 0)
        self._steps[k] = step + 1
        num_iter = len(phase.indices) // phase.batch_size + 1  # (len(labeled) // batch_size) + 1
        lam_u = linear_rampup(epoch + step / num_iter, self.warmup, self.lambda_u)
        ub = self._streams[k].next()
        with torch.no_grad():
            targets_x, weak_logits = self._refine(net, batch, self._weights[k][batch["index"]])
            targets_u = self._co_guess(net, other, ub) if ub is not None else None
        terms: dict[str, torch.Tensor] = {}
        contrast = batch["weak"].new_zeros(())
        if ub is not None and len(ub["index"]) > 1:  # SimCLR on the unlabeled AutoAugment views
            f1 = F.normalize(net.project(ub["autoaug"])[0].float(), dim=1)
            f2 = F.normalize(net.project(ub["autoaug2"])[0].float(), dim=1)
            t = self.opts.contrastive_temperature
            contrast = simclr_loss(f1, f2, t, t)
        inputs = [batch["autoaug"], batch["autoaug2"]] + ([ub["autoaug"], ub["autoaug2"]] if ub is not None else [])
        targets = [targets_x, targets_x] + ([targets_u, targets_u] if ub is not None else [])
        mixed_in, mixed_t = mixup(torch.cat(inputs), torch.cat(targets), self.alpha, self.ctx.generators())
        logits = net(mixed_in)
        loss, terms = mixmatch_loss(logits.float(), mixed_t, 2 * n_l, lam_u)
        loss = loss + self.opts.lambda_c * contrast
        terms.update(loss_c=contrast.detach(), lambda_u_ramped=torch.full((), lam_u, device=logits.device))
        return StepOutput(loss=loss, logits=weak_logits if k == "1" else None, terms=terms)

    def _refine(self, net: nn.Module, batch: dict[str, torch.Tensor],
                w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w * onehot(y) + (1 - w) * mean softmax of the two weak views, sharpened (Train_cifar.py:121-131)."""
        weak = net(batch["weak"])
        px = (F.softmax(weak, dim=1) + F.softmax(net(batch["weak2"]), dim=1)).float() / 2
        w = w[:, None]
        return sharpen(w * self.eye[batch["label"]] + (1 - w) * px, self.opts.temperature), weak

    def _co_guess(self, net: nn.Module, other: nn.Module, ub: dict[str, torch.Tensor]) -> torch.Tensor:
        """Both networks' softmax on both weak views of the unlabeled batch, averaged, sharpened (106-119)."""
        pu = sum(F.softmax(m(ub[v]), dim=1).float() for m in (net, other) for v in ("weak", "weak2")) / 4
        return sharpen(pu, self.opts.temperature)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net1"](x) + self.models["net2"](x)  # Train_cifar.py test()
