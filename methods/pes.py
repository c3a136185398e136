"""PES and PES-semi, progressive early stopping (Bai, Yang, Han, Yang, Li, Mao, Niu, Liu,
"Understanding and Improving Early Stopping for Learning with Noisy Labels", NeurIPS 2021;
official github.com/tmllab/PES @5466238: ``PES_cs.py`` (PES), ``PES_semi.py`` (PES-semi),
``PES_noisylabels.py`` (CIFAR-N), ``networks/ResNet.py``, ``common/tools.py``).

**PES** (``pes``, PES_cs.py). CE on every sample until epoch T1. Epoch T1's training is replaced
by the refinement (PES_cs.py:175-177, ``noisy_refine``): everything frozen, the last block
("layer4") and the classifier re-created and trained alone with Adam (lr ``PES_lr``) by plain CE
on all noisy samples for T2 passes; then the classifier re-created again and trained alone for T3
passes (a fresh Adam). Every later epoch: the confident set, the samples whose mean softmax over
two draws of the training view (eval mode) predicts their given label (``common/tools.py:177-191``,
PES_cs.py:67-88), is the training set, with class-weighted CE, w_c = mean_{n_c' > 0} n_c' / n_c,
0 for an empty class (PES_cs.py:91-101), recomputed every epoch (PES_cs.py:178-180).

**PES-semi** (``pes_semi``, PES_semi.py). CE until T1; at T1 the classifier re-created and trained
alone (Adam ``PES_lr``, T2 passes, PES_semi.py:198-216, 269-270); from T1 on, every epoch: the
confident set is labeled (given labels, one-hot), the rest unlabeled (PES_semi.py:167-195); each
step takes B_l labeled and B_u unlabeled samples, B_u = B/2 when |U| > |L| else int(|U|/N B),
B_l = B - B_u (PES_semi.py:176-177), for int(N / B) steps (the labeled set is cycled,
PES_semi.py:81-87); MixMatch (PES_semi.py:70-142): two weak views of each, unlabeled target =
sharpen(mean softmax of both views, T 0.5), mixup of all 2(B_l + B_u) rows with lambda ~
Beta(alpha, alpha), max(lambda, 1 - lambda), alpha 4 and 0.75 from half of the epochs on;
Lx = sum_c w_c mean_rows(-log_softmax * target)_c with the class weights clipped at 3
(PES_semi.py:189-193), Lu = MSE of the softmax, L = Lx + lambda_u ramp Lu, ramp =
clip((e + b / iters - T1) / 16, 0, 1). No label refinement, no co-guessing, no uniform prior.

**Re-creation, for any backbone.** The classifier is :func:`methods.shared.classifier_of`; the
block is :func:`last_stage`: ``net.layer4`` where it exists (the official ResNet, timm's and
torchvision's ResNets); otherwise the last child holding a conv or linear layer before the
classifier's branch (searched from the classifier upwards): for our ``smallcnn`` the hidden FC
layer (1568-128, the last stage before the classifier, as layer4 is ResNet-18's: 97% and 75% of
the parameters), for a stack of blocks whose width changes (our ``preact_resnet18``'s ``layers``,
timm's ConvNeXt ``stages``) its trailing blocks of the last width (the 512-channel pair =
layer4), for a constant-width stack (a ViT's ``blocks``) its last block; plus every parameterised
module between that block and the classifier (our PreAct ResNet's final BN, a ViT's final norm).
"Re-create" is re-initialisation in place (``reset_parameters`` of every submodule: PyTorch's
default initialisation, which is what the official re-created modules get; BN running statistics
reset too), drawn under ``torch.random.fork_rng`` seeded from the run's generator, so a resumed
run draws the same weights and the refinement optimisers, built in ``setup`` over these
parameter objects, stay valid (and checkpointed). During the refinement the other parameters are
frozen (``requires_grad`` off, as the official code) but the network is in training mode, so
their BN running statistics still move, as in the official ``train()``. A module with parameters
of its own but no ``reset_parameters`` (timm's ConvNeXt blocks hold a layer-scale ``gamma``)
cannot be re-created so: setup refuses such a backbone in one line.

**Quirk (official vs paper), ``renew``.** The official main optimiser is built before
``renew_layers`` replaces the modules (PES_cs.py:165, PES_semi.py:258), so the re-created
parameters are never updated by it again: after T1 they keep their Adam-refined values
(layer4 + classifier in PES, the classifier in PES-semi). That follows from PyTorch's semantics
(an optimiser holds the parameter objects it was given), not from anything the paper describes:
the paper re-initialises and refines the layers and then trains the network on the confident
samples. ``renew=paper`` (default) re-initialises in place and the main optimiser
goes on training those parameters, their stale state (momentum, Adam moments) cleared at the
re-creation; ``renew=official`` freezes them after the refinement (BN statistics still move).

**Defaults and scaling.** T1 is 25 (<= 10 classes, CIFAR-10 ResNet-18) / 30 (CIFAR-100
ResNet-34) of 200 epochs for PES (PES_cs.py:128-146; 200: :25) and 20 / 35 of 300 for PES-semi
(PES_semi.py:219-234; 300: :32), scaled to the run's epochs (at least 1); a T1 given with
``--set`` is taken as it is. T2, T3 are passes of the refinement, not a share of the schedule:
not scaled (so a small data set gets few refinement steps: 32 per pass on 4,000 samples at batch
128, against 351 on the official 45,000; ``PES_lr`` is in the search space). The 16-epoch
ramp is scaled too (16 of 300): PES_semi.py measures it in the same epochs as T1
(``linear_rampup(epoch + b / iters, T1)``) and the alpha switch (``num_epochs / 2``), both
fractions of the run here, so it ends at (T1 + 16) / 300 of the run as in the official schedule.
lambda_u by the table ``SEMI_LAMBDA_U``. The main optimiser and schedule are the run's (official:
SGD 0.1, steps at 100 / 150, PES; SGD 0.02, cosine, PES-semi); the refinement's Adam is the
method's own.

**Deviations, named.** No 90/10 split into a noisy validation set and no model selection on it
(PES_cs.py:157-161, 183-187): the harness trains on every sample and reports best and last test
accuracy like every method (``--val-fraction 0.1`` holds out a noisy validation part and logs
``val_acc``, but no model is selected on it). The confident loader's ``drop_last`` (PES) is not
kept: the last partial batch trains, as in every method here. PES-semi's confidence pass uses the ``weak`` view,
the augmentation its MixMatch views use (the official ``transform_train`` for both); under
``--views shared`` that is the run's training view. A refinement with no pass at all
(T2 = T3 = 0) is refused. Clothing1M's script (two networks, chunked epochs, clean-validation
weights) is not reproduced: other data sets take the CIFAR values by class count.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.defaults import PerSetting, Scaled, case
from bench.common.errors import UsageError
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs
from methods.mixmatch import linear_rampup, mixup, sharpen
from methods.shared import classifier_of
from methods.streams import BatchStream

PES_EPOCHS = 200  # PES_cs.py:25 --num_epochs 200
SEMI_EPOCHS = 300  # PES_semi.py:32 --num_epochs 300
PES_T1 = (25, 30)  # PES_cs.py:128-146: CIFAR-10 (ResNet-18) 25, CIFAR-100 (ResNet-34) 30
SEMI_T1 = (20, 35)  # PES_semi.py:219-234: CIFAR-10 20, CIFAR-100 35
RAMPUP_EPOCHS = 16  # PES_semi.py:64 linear_rampup(rampup_length=16), of 300 epochs
SEMI_WEIGHT_CLIP = 3.0  # PES_semi.py:192 cw[cw > 3] = 3
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# --- hand-checkable pieces -------------------------------------------------------------------
def confident(probs: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """The confident rule: argmax of the (mean) softmax equals the given label (PES_cs.py:67-79)."""
    return probs.argmax(dim=1) == given


def class_weights(labels: torch.Tensor, num_classes: int, clip: float | None = None) -> torch.Tensor:
    """w_c = mean over the non-empty classes of n_c' / n_c, 0 for an empty class, at most ``clip``
    (PES_cs.py:91-97; PES_semi.py:183-193 clips at 3): float64 as numpy, then float32."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    present = counts > 0
    mean = counts[present].mean() if bool(present.any()) else counts.new_ones(())
    w = torch.where(present, mean / counts.clamp_min(1), torch.zeros_like(counts))
    if clip is not None:
        w = w.clamp(max=clip)
    return w.float()


def semi_batch_split(n_labeled: int, n_unlabeled: int, batch_size: int) -> tuple[int, int]:
    """(B_l, B_u): B_u = int(B / 2) if |U| > |L| else int(|U| / N * B), B_l = B - B_u (PES_semi.py:176-177)."""
    if n_unlabeled > n_labeled:
        b_u = int(batch_size / 2)
    else:
        b_u = int(n_unlabeled / (n_labeled + n_unlabeled) * batch_size) if n_labeled + n_unlabeled else 0
    return batch_size - b_u, b_u


def semi_loss(logits: torch.Tensor, mixed_target: torch.Tensor, n_labeled: int,
              weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lx, Lu) of PES_semi.py:127-131: Lx = sum_c w_c * mean over the labeled rows of
    -log_softmax * target; Lu = mean over the unlabeled rows and classes of (softmax - target)^2."""
    lx = (-(F.log_softmax(logits[:n_labeled], dim=1) * mixed_target[:n_labeled]).mean(dim=0) * weights).sum()
    if logits.shape[0] > n_labeled:
        lu = (F.softmax(logits[n_labeled:], dim=1) - mixed_target[n_labeled:]).pow(2).mean()
    else:
        lu = logits.new_zeros(())
    return lx, lu


def cycled(pool: torch.Tensor, total: int, gen: torch.Generator) -> torch.Tensor:
    """``total`` indices from ``pool``: whole copies, then a random part of one more (the official
    labeled loader restarted until int(N / B) steps are done)."""
    if len(pool) == 0 or total <= 0:
        return pool[:0]
    reps, rest = divmod(total, len(pool))
    parts = [pool] * reps
    if rest:
        parts.append(pool[torch.randperm(len(pool), generator=gen, device=gen.device).to(pool.device)[:rest]])
    return torch.cat(parts)


# --- the block to re-create ------------------------------------------------------------------
def _holds_weights(m: nn.Module) -> bool:
    return any(isinstance(s, WEIGHT_LAYERS) for s in m.modules())


def _width(m: nn.Module) -> int:
    last = [s for s in m.modules() if isinstance(s, WEIGHT_LAYERS)][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def _stage(net: nn.Module, head: nn.Module, method: str) -> list[nn.Module]:
    """The last block before the classifier (see the module docstring)."""
    if isinstance(getattr(net, "layer4", None), nn.Module):  # the official ResNet, timm / torchvision
        return [net.layer4]
    name = next(n for n, m in net.named_modules() if m is head)
    path = [net]
    for part in name.split(".") if name else []:
        path.append(getattr(path[-1], part))
    for parent, child in zip(reversed(path[:-1]), reversed(path[1:]), strict=True):
        before: list[nn.Module] = []
        for c in parent.children():
            if c is child:
                break
            before.append(c)
        holders = [c for c in before if _holds_weights(c)]
        if holders:
            cand = holders[-1]
            break
    else:
        raise UsageError(f"{method}: the backbone has no layer before its classifier to re-create")
    if isinstance(cand, (nn.Sequential, nn.ModuleList)) and len(cand) > 1 and all(map(_holds_weights, cand)):
        blocks = list(cand)
        widths = [_width(b) for b in blocks]
        if len(set(widths)) == 1:  # a constant-width stack (transformer blocks): its last block
            return blocks[-1:]
        k = len(blocks)
        while k > 0 and widths[k - 1] == widths[-1]:  # the trailing blocks of the last width
            k -= 1
        return blocks[k:]
    return [cand]


def last_stage(net: nn.Module, head: nn.Module, method: str) -> list[nn.Module]:
    """The block PES re-creates with the classifier ("layer4", networks/ResNet.py:168-185), plus
    every module with parameters of its own between it and the classifier (registration order)."""
    stage = _stage(net, head, method)
    order = list(net.modules())
    pos = {id(m): i for i, m in enumerate(order)}
    last = max(pos[id(s)] for s in stage[-1].modules())
    ancestors = {id(m) for m in order if any(s is head for s in m.modules())}
    between = [m for m in order[last + 1:pos[id(head)]]
               if id(m) not in ancestors and next(m.parameters(recurse=False), None) is not None]
    return stage + between


def _submodules(modules: list[nn.Module]) -> list[nn.Module]:
    return list({id(s): s for m in modules for s in m.modules()}.values())


def check_resettable(modules: list[nn.Module], method: str) -> None:
    """Every module with parameters of its own must know how to re-initialise itself."""
    for s in _submodules(modules):
        if next(s.parameters(recurse=False), None) is not None and not hasattr(s, "reset_parameters"):
            raise UsageError(f"{method}: cannot re-create {type(s).__name__} (no reset_parameters); "
                             "use another backbone")


def reinitialise(modules: list[nn.Module], seed: int, device: torch.device) -> None:
    """``reset_parameters`` of every submodule, with the global RNG seeded by ``seed`` and then
    restored (the run's draws stay where they were)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        fork = torch.random.fork_rng(devices=[index], device_type="cuda")
    else:
        fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        for s in _submodules(modules):
            if hasattr(s, "reset_parameters"):
                s.reset_parameters()


# --- options ---------------------------------------------------------------------------------
RENEW_HELP = ("paper: the re-created layers are re-initialised in place and the main optimiser trains them "
              "after the refinement (stale state cleared); official: they stay at their refined values "
              "(the main optimiser was built before they were re-created)")


def _check_common(o: Any) -> None:
    if o.T1 is not None and o.T1 < 1:
        raise ValueError(f"T1 {o.T1} must be >= 1 (the network must learn before the refinement)")
    if o.PES_lr <= 0:
        raise ValueError(f"PES_lr {o.PES_lr} must be positive")


# Per-setting defaults: T1 of the official scripts (CIFAR-10's for <= 10 classes, else CIFAR-100's)
# scaled to the run's epochs; PES-semi's lambda_u the official value of the same family and noise
# kind, else the code default (PES_semi.py:37: what a bare ``python PES_semi.py``, CIFAR-10
# symmetric 50%, runs with).
PES_T1_DEFAULT = PerSetting(
    case(Scaled(PES_T1[0], PES_EPOCHS), "PES_cs.py:128-146: CIFAR-10 (ResNet-18) 25 of 200 (:25)", classes="<=10"),
    case(Scaled(PES_T1[1], PES_EPOCHS), "PES_cs.py:128-146: CIFAR-100 (ResNet-34) 30 of 200 (:25)"))
SEMI_T1_DEFAULT = PerSetting(
    case(Scaled(SEMI_T1[0], SEMI_EPOCHS), "PES_semi.py:219-234: CIFAR-10 20 of 300 (:32)", classes="<=10"),
    case(Scaled(SEMI_T1[1], SEMI_EPOCHS), "PES_semi.py:219-234: CIFAR-100 35 of 300 (:32)"))
SEMI_LAMBDA_U = PerSetting(
    case(5.0, "PES_noisylabels.py:5, 249, 279: CIFAR-10N 5", classes="<=10", rate="real"),
    case(75.0, "PES_noisylabels.py:5, 249, 279: CIFAR-100N 75", rate="real"),
    case(15.0, "README: CIFAR-10 instance 40%", classes="<=10", noise="instance"),
    case(50.0, "README: CIFAR-100 pairflip 45%", classes=">10", noise=CLASS_DEPENDENT),
    case(150.0, "PES_semi.py:37 (CIFAR-10 symmetric 50%)"))


@dataclass
class PESOptions:
    T1: int | None = field(default=None, metadata={
        "help": "epoch of the refinement (CE before it); default 25 (<= 10 classes) / 30 of 200, scaled to --epochs",
        "source": "PES_cs.py:128-146; paper Sec. 5", "setting": PES_T1_DEFAULT})
    T2: int = field(default=7, metadata={"help": "passes training the re-created last block and classifier",
                                         "source": "PES_cs.py:37"})
    T3: int = field(default=5, metadata={"help": "passes training the re-created classifier alone",
                                         "source": "PES_cs.py:38"})
    PES_lr: float = field(default=1e-4, metadata={"help": "Adam lr of the refinement", "source": "PES_cs.py:35"})
    renew: Literal["paper", "official"] = field(default="paper", metadata={
        "help": RENEW_HELP, "source": "PES_cs.py:165 vs 114 (optimiser built before renew_layers)"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "the network's lr: official: x 0.1 at 100 and 150 of 200 epochs, as shares; trainer: the run's "
                "scheduler (the refinement's Adam is never scheduled)", "source": "PES_cs.py:166 MultiStepLR"})

    def __post_init__(self) -> None:
        _check_common(self)
        if self.T2 < 0 or self.T3 < 0 or self.T2 + self.T3 < 1:
            raise ValueError(f"T2 {self.T2} and T3 {self.T3} must be >= 0 and give at least one refinement pass")


@dataclass
class PESSemiOptions:
    T1: int | None = field(default=None, metadata={
        "help": "epoch of the refinement and first SSL epoch; default 20 (<= 10 classes) / 35 of 300, scaled",
        "source": "PES_semi.py:219-234", "setting": SEMI_T1_DEFAULT})
    T2: int = field(default=5, metadata={"help": "passes training the re-created classifier alone",
                                         "source": "PES_semi.py:40"})
    PES_lr: float = field(default=1e-4, metadata={"help": "Adam lr of the refinement", "source": "PES_semi.py:38"})
    lambda_u: float | None = field(default=None, metadata={
        "help": "weight of the unlabeled MSE; default 5 / 75 real noise (<= / > 10 classes), 15 for <= 10 classes "
                "instance, 50 for > 10 classes class-dependent, else 150",
        "source": "PES_semi.py:37; README; PES_noisylabels.py:249, 279", "setting": SEMI_LAMBDA_U})
    alpha: float = field(default=4.0, metadata={"help": "mixup Beta(alpha, alpha) before half of the epochs",
                                                "source": "PES_semi.py:35"})
    alpha_late: float = field(default=0.75, metadata={"help": "mixup alpha from half of the epochs on",
                                                      "source": "PES_semi.py:72-73"})
    temperature: float = field(default=0.5, metadata={"help": "sharpening temperature T", "source": "PES_semi.py:36"})
    renew: Literal["paper", "official"] = field(default="paper", metadata={
        "help": RENEW_HELP, "source": "PES_semi.py:258 vs 205 (optimiser built before renew_layers)"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "the network's lr: official: cosine over the epochs to lr / 100; trainer: the run's scheduler "
                "(the refinement's Adam is never scheduled)", "source": "PES_semi.py:259-260 CosineAnnealingLR"})

    def __post_init__(self) -> None:
        _check_common(self)
        if self.T2 < 0:
            raise ValueError(f"T2 {self.T2} must be >= 0")
        if self.lambda_u is not None and self.lambda_u < 0:
            raise ValueError(f"lambda_u {self.lambda_u} must be >= 0")
        if self.alpha <= 0 or self.alpha_late <= 0 or self.temperature <= 0:
            raise ValueError("alpha, alpha_late and temperature must be positive")


def _t1_param(setting: Setting, share: tuple[float, float], source: str) -> Param:
    """T1 from 5% to 20% of the epochs, the published values (scaled) on the grid."""
    e = setting.epochs
    low = max(1, round(0.05 * e))
    high = max(low, min(e - 1, round(0.2 * e)))
    grid = tuple(sorted({min(high, max(low, round(s * e))) for s in share}))
    return Param("int", low, high, grid=grid, source=source)


PES_LR_PARAM = Param("float", 5e-6, 1e-3, log=True, grid=(5e-6, 1e-5, 1e-4, 1e-3),
                     source="PES_cs.py:35 1e-4, PES_Clothing1M.py:37 5e-6; ends our choice")


# --- the shared machinery ------------------------------------------------------------------------
class _Progressive(Method):
    """What PES and PES-semi share: the network, the re-creations, the freezing, the confident pass."""

    confidence_view = "train"

    def _build(self, block: bool) -> None:
        ctx, o = self.ctx, self.opts
        self.t1 = o.T1  # per-setting default filled in by Method.__init__
        if self.t1 >= ctx.epochs:
            raise UsageError(f"{self.name}: T1 = {self.t1} leaves no epoch after it of --epochs {ctx.epochs}; "
                             "raise --epochs or --set T1=N")
        net = self.add_network("net", schedule_epochs=ctx.epochs if o.lr_schedule == "trainer" else None)
        self.base_lr = base_lrs({"net": self.optimizers["net"]})
        self.head = classifier_of(net, self.name)
        self.block = last_stage(net, self.head, self.name) + [self.head] if block else []
        check_resettable(self.block + [self.head], self.name)
        # the refinement's Adam (noisy_refine); its state is cleared at each re-creation
        if block:
            self.optimizers["refine_block"] = torch.optim.Adam(_params(self.block), lr=o.PES_lr)
        self.optimizers["refine_head"] = torch.optim.Adam(self.head.parameters(), lr=o.PES_lr)
        ids = {id(p) for p in net.parameters()}
        self._allowed: dict[str, set[int] | None] = {
            "all": None, "block": {id(p) for p in _params(self.block)}, "head": {id(p) for p in self.head.parameters()}}
        self._allowed["after"] = ids - {id(p) for p in _params(self._renewed())}
        self._trainable: str | None = None
        n = ctx.num_train
        self.state["score"] = torch.zeros(n, device=ctx.device)
        self.state["confident"] = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        self._log: dict[str, float] = {}

    def _renewed(self) -> list[nn.Module]:
        """The modules re-created at T1 (frozen after it under renew=official)."""
        raise NotImplementedError

    def _renew(self, modules: list[nn.Module], refine: str) -> torch.Tensor:
        """Re-create ``modules`` (in place, from the run's generator), a fresh refinement optimiser,
        and no stale main-optimiser state for them; the samples the pass visits (all)."""
        gen = self.ctx.generators().torch
        seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
        reinitialise(modules, seed, self.ctx.device)
        self.optimizers[refine].state.clear()
        main = self.optimizers["net"]
        for p in _params(modules):
            main.state.pop(p, None)
        pool = self.ctx.epoch_pool()
        return torch.arange(self.ctx.num_train, device=self.ctx.device) if pool is None else pool

    def _refine_phases(self, name: str, count: int, modules: list[nn.Module]) -> list[Phase]:
        """``count`` passes of the refinement optimiser ``name``; the first re-creates ``modules``."""
        first = Phase(name, optimizers=(name,), select=lambda: self._renew(modules, name))
        return [first] + [Phase(name, optimizers=(name,)) for _ in range(count - 1)] if count > 0 else []

    def _train_only(self, key: str) -> None:
        """requires_grad on the parameters the pass trains only (others frozen, as noisy_refine)."""
        if key == self._trainable:
            return
        allowed = self._allowed[key]
        for p in self.models["net"].parameters():
            p.requires_grad_(allowed is None or id(p) in allowed)
        self._trainable = key

    def _main_key(self, epoch: int) -> str:
        return "after" if self.opts.renew == "official" and epoch >= self.t1 else "all"

    def _confident_pass(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean softmax of two draws of the confidence view (eval mode) for every sample (of the
        epoch's sample when the data set draws one); sets the score (probability of the given
        label) and the confident mask; returns (dataset indices, given labels, confident)."""
        ctx, net = self.ctx, self.models["net"]
        pool = ctx.epoch_pool()
        with torch.no_grad():
            probs = sum(F.softmax(ctx.predict_train(net, pool, view=self.confidence_view).float(), dim=1)
                        for _ in range(2)) / 2
        ids = torch.arange(ctx.num_train, device=ctx.device) if pool is None else pool.to(ctx.device)
        given = ctx.given_labels.to(ctx.device)[ids]
        conf = confident(probs, given)
        score = torch.zeros(ctx.num_train, device=ctx.device)
        score[ids] = probs.gather(1, given[:, None]).squeeze(1)
        mask = torch.zeros(ctx.num_train, dtype=torch.bool, device=ctx.device)
        mask[ids[conf]] = True
        self.state["score"], self.state["confident"] = score, mask
        self._log["confident_frac"] = float(conf.float().mean()) if len(conf) else 0.0
        return ids, given, conf

    def _ce_step(self, batch: dict[str, torch.Tensor], key: str) -> StepOutput:
        self._train_only(key)
        logits = self.models["net"](batch["train"])
        return StepOutput(loss=F.cross_entropy(logits.float(), batch["label"]), logits=logits)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self._log = {}
        if self.opts.lr_schedule == "official":  # from the epoch alone (resume-safe); not the refinement's Adam
            set_lrs(self.optimizers, self.base_lr, lambda lr: self.official_lr(lr, epoch))
        return {"pes_T1": float(self.t1)} if epoch == 0 else {}

    def official_lr(self, lr: float, epoch: int) -> float:
        """The main optimiser's official lr at ``epoch`` of the run (PES: x 0.1 at 100 and 150 of
        200 epochs, PES_cs.py:166; PES-semi: cosine to lr / 100, PES_semi.py:259-260)."""
        epochs = self.ctx.epochs
        if self.name == "pes":
            return lr * 0.1 ** sum(epoch >= round(m * epochs) for m in (100 / 200, 150 / 200))
        low = lr / 100
        return low + (lr - low) * (1 + math.cos(math.pi * epoch / epochs)) / 2

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return dict(self._log)

    def detections(self, epoch: int) -> list[Detection]:
        """The mean probability of the given label in the confident pass, and the confident set."""
        if epoch < self.first_selection:
            return []
        return [Detection(self.state["score"], selected=self.state["confident"])]


def _params(modules: list[nn.Module]) -> list[nn.Parameter]:
    return list({id(p): p for m in modules for p in m.parameters()}.values())


@METHODS.register("pes")
class PES(_Progressive):
    """PES (NeurIPS 2021): CE, refinement of the re-created last block and classifier, confident-set CE."""

    family = "selection"  # `bench report` and `bench plot` group methods by it

    paper = ("Bai et al., Understanding and Improving Early Stopping for Learning with Noisy Labels, "
             "NeurIPS 2021 (PES)")
    code = "github.com/tmllab/PES (PES_cs.py)"
    Options = PESOptions
    smoke_options = {"T1": "1", "T2": "1", "T3": "1"}  # CE, the refinement, a confident epoch
    official_options = {
        # tmllab/PES PES_cs.py:114 builds the main optimiser, :165 re-creates the layers after it (renew_layers),
        # so the optimiser never trains them again
        "renew": "official",
    }

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """T1 from 5% to 20% of the epochs (published 25 / 30 of 200, PES_cs.py:128-146) and the
        refinement's lr (1e-4 CIFAR, 5e-6 Clothing1M); range ends our choice."""
        return {"T1": _t1_param(setting, (PES_T1[0] / PES_EPOCHS, PES_T1[1] / PES_EPOCHS), "PES_cs.py:128-146"),
                "PES_lr": PES_LR_PARAM}

    def setup(self) -> None:
        ctx = self.ctx
        self._build(block=True)
        self.first_selection = self.t1 + 1
        self._weights = torch.ones(ctx.num_classes, device=ctx.device)

    def _renewed(self) -> list[nn.Module]:
        return (self.block if self.opts.T2 > 0 else []) + [self.head]

    def phases(self, epoch: int) -> list[Phase]:
        if epoch < self.t1:
            return [Phase("ce", optimizers=("net",))]
        if epoch == self.t1:  # noisy_refine(model, 1, T2), then noisy_refine(model, 0, T3) (PES_cs.py:175-177)
            return (self._refine_phases("refine_block", self.opts.T2, self.block)
                    + self._refine_phases("refine_head", self.opts.T3, [self.head]))
        return [Phase("confident", optimizers=("net",), select=self._select)]

    def _select(self) -> torch.Tensor:
        """The confident set and its class weights (update_trainloader, PES_cs.py:82-102)."""
        t0 = time.perf_counter()
        ids, given, conf = self._confident_pass()
        self._weights = class_weights(given[conf], self.ctx.num_classes).to(self.ctx.device)
        self._log.update(class_weight_max=float(self._weights.max()), select_s=time.perf_counter() - t0)
        return ids[conf]

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if phase.name == "refine_block":
            return self._ce_step(batch, "block")
        if phase.name == "refine_head":
            return self._ce_step(batch, "head")
        if phase.name == "ce":
            return self._ce_step(batch, "all")
        self._train_only(self._main_key(epoch))
        logits = self.models["net"](batch["train"])
        loss = F.cross_entropy(logits.float(), batch["label"], weight=self._weights)  # nn.CrossEntropyLoss(weight)
        return StepOutput(loss=loss, logits=logits)


@METHODS.register("pes_semi")
class PESSemi(_Progressive):
    """PES-semi (NeurIPS 2021): CE, classifier refinement, MixMatch on the confident / other split."""

    family = "semi-supervised"  # `bench report` and `bench plot` group methods by it

    paper = ("Bai et al., Understanding and Improving Early Stopping for Learning with Noisy Labels, "
             "NeurIPS 2021 (PES with semi-supervised learning)")
    code = "github.com/tmllab/PES (PES_semi.py)"
    Options = PESSemiOptions
    # CE, then the refinement epoch (its confidence pass too), then the two augmentations of MixMatch
    # (PES_semi.py: Semi_*_Dataset)
    view_sets = {"ce": ("train",), "refine": ("train", "weak", "weak2"), "semi": ("weak", "weak2")}
    smoke_options = {"T1": "1", "T2": "1"}  # CE, the refinement and the first SSL epoch, SSL with alpha_late
    official_options = {
        # tmllab/PES PES_semi.py:205 builds the main optimiser, :258 re-creates the classifier after it
        # (renew_layers), so the optimiser never trains it again
        "renew": "official",
    }
    confidence_view = "weak"

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """T1 from 5% to 20% of the epochs (published 20 / 35 of 300), lambda_u over the published
        5, 15, 50, 75, 150 (README, PES_semi.py:37, PES_noisylabels.py), the refinement's lr."""
        return {
            "T1": _t1_param(setting, (SEMI_T1[0] / SEMI_EPOCHS, SEMI_T1[1] / SEMI_EPOCHS), "PES_semi.py:219-234"),
            "lambda_u": Param("float", 5.0, 150.0, log=True, grid=(5.0, 15.0, 50.0, 75.0, 150.0),
                              source="README 15 / 50; PES_semi.py:37 150; PES_noisylabels.py:249, 279 5 / 75"),
            "PES_lr": PES_LR_PARAM,
        }

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts
        self._build(block=False)
        self.first_selection = self.t1
        self.lambda_u = o.lambda_u
        self.rampup = RAMPUP_EPOCHS * ctx.epochs / SEMI_EPOCHS  # 16 of 300, scaled (module docstring)
        self.eye = torch.eye(ctx.num_classes, device=ctx.device)
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._stream: BatchStream | None = None
        self._iters, self._step = 1, 0
        self._weights = torch.ones(self.ctx.num_classes, device=self.ctx.device)

    def _renewed(self) -> list[nn.Module]:
        return [self.head] if self.opts.T2 > 0 else []

    def views(self, epoch: int) -> tuple[str, ...]:
        if epoch < self.t1:
            return self.view_sets["ce"]
        return self.view_sets["refine" if epoch == self.t1 and self.opts.T2 > 0 else "semi"]

    def phases(self, epoch: int) -> list[Phase]:
        if epoch < self.t1:
            return [Phase("ce", optimizers=("net",))]
        refine = self._refine_phases("refine_head", self.opts.T2, [self.head]) if epoch == self.t1 else []
        ssl = Phase("ssl", optimizers=("net",))
        ssl.select = lambda: self._select(ssl)  # after the refinement: it must see the refined classifier
        return refine + [ssl]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self._reset_epoch()
        out = super().on_epoch_start(epoch)
        return {**out, "lambda_u": self.lambda_u} if epoch == 0 else out

    def _select(self, phase: Phase) -> torch.Tensor:
        """Labeled = confident, unlabeled = the rest; the batch split, clipped class weights and the
        int(N / B) steps of the epoch (update_trainloader, PES_semi.py:167-195; :81)."""
        t0 = time.perf_counter()
        ctx = self.ctx
        ids, given, conf = self._confident_pass()
        labeled, unlabeled = ids[conf], ids[~conf]
        b_l, b_u = semi_batch_split(len(labeled), len(unlabeled), ctx.batch_size)
        self._iters = max(1, len(ids) // ctx.batch_size)  # num_iter = int(50000 / batch_size)
        # full batches, one per step of the epoch (the labeled loader is cycled to int(N / B) steps)
        self._stream = BatchStream(ctx, "ssl", unlabeled, b_u, ("weak", "weak2"), "drop", count=self._iters)
        self._weights = class_weights(given[conf], ctx.num_classes, SEMI_WEIGHT_CLIP).to(ctx.device)
        phase.batch_size = b_l
        self._log.update(labeled_batch=float(b_l), unlabeled_batch=float(b_u), select_s=time.perf_counter() - t0)
        return cycled(labeled, self._iters * b_l, ctx.generators().torch)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if phase.name == "refine_head":
            return self._ce_step(batch, "head")
        if phase.name == "ce":
            return self._ce_step(batch, "all")
        self._train_only(self._main_key(epoch))
        return self._ssl_step(batch, epoch)

    def _ssl_step(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        """MixMatch_train's step (PES_semi.py:95-132)."""
        net, n_l = self.models["net"], batch["index"].shape[0]
        lam_u = linear_rampup(epoch + self._step / self._iters, self.t1, self.lambda_u, self.rampup)
        self._step += 1
        ub = self._stream.next() if self._stream is not None else None
        targets_x = self.eye[batch["label"]]
        inputs, targets = [batch["weak"], batch["weak2"]], [targets_x, targets_x]
        if ub is not None:
            with torch.no_grad():  # in training mode, as the official loop
                pu = (F.softmax(net(ub["weak"]), dim=1) + F.softmax(net(ub["weak2"]), dim=1)).float() / 2
                targets_u = sharpen(pu, self.opts.temperature)
            inputs += [ub["weak"], ub["weak2"]]
            targets += [targets_u, targets_u]
        alpha = self.opts.alpha_late if epoch >= self.ctx.epochs / 2 else self.opts.alpha  # PES_semi.py:72-73
        mixed_in, mixed_t = mixup(torch.cat(inputs), torch.cat(targets), alpha, self.ctx.generators())
        logits = net(mixed_in).float()
        lx, lu = semi_loss(logits, mixed_t, 2 * n_l, self._weights)
        ramped = torch.full((), lam_u, device=logits.device)  # a fill on the device: no host-to-device copy
        terms = {"loss_x": lx.detach(), "loss_u": lu.detach(), "lambda_u_ramped": ramped}
        return StepOutput(loss=lx + lam_u * lu, terms=terms)
