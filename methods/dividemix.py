"""DivideMix (Li, Socher, Hoi, ICLR 2020; official github.com/LiJunnan1992/DivideMix,
``Train_cifar.py``, ``Train_clothing1M.py``, ``Train_webvision.py``; per-setting defaults
from the paper's appendix and those scripts, each cited where it is set).

Two networks. Warm-up: each network trained with CE on its own pass over the data, plus the
negative-entropy confidence penalty under asymmetric noise (Train_cifar.py:132-136), always
on Clothing1M (Train_clothing1M.py:127-130), never on WebVision (Train_webvision.py:128-131,
commented out): option ``warmup_penalty``. After warm-up, every epoch:

1. for each network, an evaluation pass over the whole training set (plain view), per-sample
   CE min-max normalised (averaged over the last 5 epochs at 90% noise), a fresh
   two-component GMM (max_iter 10, tol 1e-2, reg_covar 5e-4), clean probability = posterior of
   the lower-mean component;
2. co-divide: network 1 trains on the labeled set (p > p_threshold) and clean probabilities
   of network 2's division, then network 2 on network 1's (one phase per network);
3. per step (MixMatch style): two weak views of a labeled and an unlabeled batch; co-guessing
   for unlabeled samples (mean of both networks' softmax on both views), label refinement for
   labeled ones (w * onehot + (1 - w) * own prediction), sharpening with temperature T,
   mixup with lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda), CE on the mixed
   labeled part, MSE on the mixed unlabeled part weighted by lambda_u ramped up linearly over
   16 epochs after warm-up, and the uniform-prior penalty on the mean prediction. On
   Clothing1M and WebVision only the first 2B of the 4B permuted rows (the labeled views, each
   mixed with any of the 4B) are mixed and forwarded, and the loss is Lx + the penalty over
   them (Train_clothing1M.py:91-109, Train_webvision.py:93-110; Train_cifar.py:93-113 mixes
   and forwards all 4B): option ``mix_rows``.

Test: the sum of both networks' logits. Batch sizes follow the official ratio: warm-up uses
the run's batch size B (official 128), training B / 2 labeled + B / 2 unlabeled (64 + 64).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.common.defaults import ByRate, PerSetting, case
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs
from methods.mixmatch import linear_rampup, mixmatch_loss, mixup, negative_entropy, sharpen
from methods.mixtures import GaussianMixture2
from methods.streams import BatchStream

HISTORY = 5  # epochs of loss averaged at 90% noise (Train_cifar.py eval_train)


# Per-setting defaults of the DivideMix paper's appendix and the official scripts. Data sets the
# paper does not cover take the CIFAR values of the same class count, and the CIFAR script's step
# (all 4B rows mixed) and warm-up (the penalty under class-dependent noise); noise rates between
# published settings take the nearest one (ties: the lower rate), real noise that of rate 0.
REAL_DATA = ("clothing1m", "webvision")
WARMUP = PerSetting(
    case(1, "Train_clothing1M.py, Train_webvision.py: warm-up 1", dataset=REAL_DATA),
    case(10, "paper App. / README: CIFAR-10 warm-up 10", classes="<=10"),
    case(30, "paper App. / README: CIFAR-100 warm-up 30"))
LAMBDA_U = PerSetting(
    case(0.0, "Train_clothing1M.py, Train_webvision.py: lambda_u 0", dataset=REAL_DATA),
    case(0.0, "paper App.: CIFAR-10 asym lambda_u 0", classes="<=10", noise=CLASS_DEPENDENT),
    case(ByRate({0.2: 0.0, 0.5: 25.0, 0.8: 25.0, 0.9: 50.0}), "paper App.: CIFAR-10 sym", classes="<=10"),
    case(ByRate({0.2: 25.0, 0.5: 150.0, 0.8: 150.0, 0.9: 150.0}), "paper App.: CIFAR-100"))
P_THRESHOLD = PerSetting(
    case(0.5, "Train_clothing1M.py, Train_webvision.py", dataset=REAL_DATA),
    case(0.6, "paper App.: 0.6 at 90% noise", rate=">=0.9"),
    case(0.5, "paper App.: 0.5"))
ALPHA = PerSetting(
    case(0.5, "Train_clothing1M.py, Train_webvision.py: alpha 0.5", dataset=REAL_DATA),
    case(4.0, "Train_cifar.py: alpha 4"))
MIX_ROWS = PerSetting(
    case("labeled", "Train_clothing1M.py:91-109, Train_webvision.py:93-110: first 2B rows mixed, Lx + penalty",
         dataset=REAL_DATA),
    case("all", "Train_cifar.py:93-113: all 4B rows mixed and forwarded, Lx + Lu + penalty"))
WARMUP_PENALTY = PerSetting(
    case("always", "Train_clothing1M.py:127-130: CE + NegEntropy, any noise", dataset="clothing1m"),
    case("never", "Train_webvision.py:128-131: the penalty commented out", dataset="webvision"),
    case("class-dependent", "Train_cifar.py:132-136: NegEntropy under asym (here pairflip too)"))


@dataclass
class DivideMixOptions:
    warmup_epochs: int | None = field(default=None, metadata={
        "help": "CE warm-up epochs; default per data set", "source": "Train_cifar.py (10 / 30), clothing1M (1)",
        "setting": WARMUP})
    p_threshold: float | None = field(default=None, metadata={
        "help": "clean-probability threshold of the labeled set; default 0.5, 0.6 at 90% noise",
        "source": "paper appendix", "setting": P_THRESHOLD})
    lambda_u: float | None = field(default=None, metadata={
        "help": "weight of the unlabeled loss; default per data set and noise rate", "source": "paper appendix",
        "setting": LAMBDA_U})
    alpha: float | None = field(default=None, metadata={
        "help": "mixup Beta(alpha, alpha); default 4 (CIFAR), 0.5 (Clothing1M, WebVision)",
        "source": "Train_cifar.py, Train_clothing1M.py", "setting": ALPHA})
    temperature: float = field(default=0.5, metadata={"help": "sharpening temperature T",
                                                      "source": "Train_cifar.py --T 0.5"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: lr / 10 from half of the epochs (150 of 300); trainer: the run's own schedule",
        "source": "Train_cifar.py adjust_learning_rate"})
    mix_rows: Literal["all", "labeled"] | None = field(default=None, metadata={
        "help": "rows of the permuted 4B-row batch mixed and forwarded: all (CE on the labeled 2B, lambda_u x MSE "
                "on the unlabeled 2B, penalty over all), or labeled (the first 2B, each mixed with any of the 4B; "
                "loss CE + penalty over them, no unlabeled term: lambda_u has no effect); default labeled on "
                "clothing1m and webvision, all elsewhere",
        "source": "Train_clothing1M.py:91-109, Train_webvision.py:93-110; Train_cifar.py:93-113",
        "setting": MIX_ROWS})
    warmup_penalty: Literal["always", "never", "class-dependent"] | None = field(default=None, metadata={
        "help": "negative-entropy confidence penalty in the warm-up: always, never, or under class-dependent "
                "noise (asym, pairflip); default always on clothing1m, never on webvision, class-dependent elsewhere",
        "source": "Train_clothing1M.py:127-130, Train_webvision.py:128-131 (commented out), Train_cifar.py:132-136",
        "setting": WARMUP_PENALTY})

    def __post_init__(self) -> None:
        if self.p_threshold is not None and not 0 < self.p_threshold < 1:
            raise ValueError(f"p_threshold {self.p_threshold} must lie in (0, 1)")
        if self.temperature <= 0 or (self.alpha is not None and self.alpha <= 0):
            raise ValueError("temperature and alpha must be positive")
        if (self.lambda_u is not None and self.lambda_u < 0) or (self.warmup_epochs or 0) < 0:
            raise ValueError("lambda_u and warmup_epochs must be >= 0")
        # --set values are checked against the Literal already; this catches options built in code
        valid = {"mix_rows": ("all", "labeled"), "warmup_penalty": ("always", "never", "class-dependent")}
        for name, choices in valid.items():
            if getattr(self, name) not in (None, *choices):
                raise ValueError(f"{name} {getattr(self, name)!r} must be one of {', '.join(choices)} "
                                 "(or unset: per data set)")


@METHODS.register("dividemix")
class DivideMix(Method):
    """DivideMix (ICLR 2020): two nets, GMM co-divide on per-sample loss, MixMatch-style training."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Li, Socher, Hoi, DivideMix: Learning with Noisy Labels as Semi-supervised Learning, ICLR 2020"
    code = "github.com/LiJunnan1992/DivideMix"
    time_reference = "DivideMix"  # the IDO paper's time claim is against DivideMix
    smoke_options = {"warmup_epochs": "1"}  # warm-up, then co-divide and MixMatch
    perf_figures = ("methods",)  # `bench perf`'s suites: the IDO paper's time claim is against it
    # the warm-up on CE's view, then its two augmentations of every sample (Train_cifar.py)
    view_sets = {"warmup": ("train",), "train": ("weak", "weak2")}
    Options = DivideMixOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The four MixMatch-side hyperparameters. lambda_u over the paper appendix's per-setting
        values (0, 25, 50, 150); p_threshold around 0.5 (0.6 at 90% noise, paper appendix);
        alpha between the official 0.5 (Train_clothing1M.py) and 4 (Train_cifar.py); T around
        Train_cifar.py's 0.5. Range ends beyond the published values are our choice."""
        return {
            "lambda_u": Param("float", 0.0, 150.0, grid=(0.0, 25.0, 50.0, 150.0), source="paper appendix"),
            "p_threshold": Param("float", 0.3, 0.8, grid=(0.3, 0.5, 0.6, 0.7), source="paper appendix (0.5, 0.6)"),
            "alpha": Param("float", 0.5, 4.0, log=True, grid=(0.5, 1.0, 2.0, 4.0),
                           source="Train_cifar.py 4, Train_clothing1M.py 0.5"),
            "temperature": Param("float", 0.25, 1.0, grid=(0.25, 0.5, 1.0), source="Train_cifar.py --T 0.5"),
        }

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        self.warmup, self.lambda_u, self.p_threshold, self.alpha = o.warmup_epochs, o.lambda_u, o.p_threshold, o.alpha
        self.mix_rows, self.warmup_penalty = o.mix_rows, o.warmup_penalty
        self.check_warmup(self.warmup)
        for k in ("net1", "net2"):
            self.add_network(k, ctx.epochs if o.lr_schedule == "trainer" else None)
        n = ctx.num_train
        self.base_lr = base_lrs(self.optimizers)
        self.state.update(prob1=torch.zeros(n, device=ctx.device), prob2=torch.zeros(n, device=ctx.device),
                          hist1=torch.zeros(HISTORY, n, device=ctx.device),
                          hist2=torch.zeros(HISTORY, n, device=ctx.device),
                          hist_len=torch.zeros((), dtype=torch.int64))
        self.onehot_eye = torch.eye(ctx.num_classes, device=ctx.device)
        self._unlabeled: dict[str, BatchStream] = {}
        self._steps: dict[str, int] = {}

    # --- epoch structure -------------------------------------------------------------------
    def views(self, epoch: int) -> tuple[str, ...]:
        return self.view_sets["warmup" if epoch < self.warmup else "train"]

    def phases(self, epoch: int) -> list[Phase]:
        if epoch < self.warmup:  # each net its own CE pass (Train_cifar.py warmup(), twice)
            return [Phase("warmup1", optimizers=("net1",)), Phase("warmup2", optimizers=("net2",))]
        half = max(1, self.ctx.batch_size // 2)
        labeled2 = torch.nonzero(self.state["prob2"] > self.p_threshold).squeeze(1)
        labeled1 = torch.nonzero(self.state["prob1"] > self.p_threshold).squeeze(1)
        # each phase's unlabeled pool is made here, with its labeled set, not at its first step:
        # its size is read on the host (nothing is drawn until the first batch)
        self._unlabeled = {k: self._stream(k, v, half) for k, v in (("net1", labeled2), ("net2", labeled1))}
        return [Phase("net1", optimizers=("net1",), indices=labeled2, batch_size=half),
                Phase("net2", optimizers=("net2",), indices=labeled1, batch_size=half)]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if self.opts.lr_schedule == "official":
            factor = 0.1 if epoch >= self.ctx.epochs // 2 else 1.0  # lr / 10 at 150 of 300
            set_lrs(self.optimizers, self.base_lr, lambda lr: lr * factor)
        self._steps = {}
        if epoch < self.warmup:
            return {"lambda_u": self.lambda_u, "p_threshold": self.p_threshold}
        return self._divide()

    def _divide(self) -> dict[str, float]:
        """Evaluation pass and GMM per network; the clean probabilities of every sample."""
        t_eval = t_gmm = 0.0
        metrics: dict[str, float] = {}
        for k in ("1", "2"):
            t0 = time.perf_counter()
            # the epoch's sample when the data set draws one (Clothing1M: the official
            # eval_train loader draws num_batches x batch_size samples too), else every sample
            pool = self.ctx.epoch_pool()
            logits = self.ctx.predict_train(self.models["net" + k], pool)
            given = self.ctx.given_labels if pool is None else self.ctx.given_labels[pool]
            loss = F.cross_entropy(logits, given, reduction="none")
            loss = (loss - loss.min()) / (loss.max() - loss.min()).clamp_min(1e-12)
            t1 = time.perf_counter()
            prob = torch.as_tensor(self._fit_gmm(k, loss, pool), dtype=torch.float32, device=self.ctx.device)
            t_gmm += time.perf_counter() - t1
            t_eval += t1 - t0
            if pool is None:
                self.state["prob" + k] = prob
            else:  # samples outside the epoch's sample are neither labeled nor unlabeled
                self.state["prob" + k] = torch.zeros_like(self.state["prob" + k])
                self.state["prob" + k][pool] = prob
        self.state["hist_len"] += 1
        metrics.update(divide_eval_s=t_eval, divide_gmm_s=t_gmm, lambda_u=self.lambda_u,
                       p_threshold=self.p_threshold,
                       labeled_frac_net1=self._labeled_frac("prob2"), labeled_frac_net2=self._labeled_frac("prob1"))
        return metrics

    def _labeled_frac(self, key: str) -> float:
        """Share of the divided samples (the epoch's sample when there is one) labeled clean."""
        pool = self.ctx.epoch_pool()
        prob = self.state[key] if pool is None else self.state[key][pool]
        return float((prob > self.p_threshold).float().mean())

    def _fit_gmm(self, k: str, loss: torch.Tensor, pool: torch.Tensor | None = None) -> np.ndarray:
        hist = self.state["hist" + k]
        hist.copy_(torch.roll(hist, -1, dims=0))
        if pool is None:
            hist[-1] = loss
        else:
            hist[-1] = hist[-2]
            hist[-1][pool] = loss
        if (self.ctx.noise_rate or 0) >= 0.9:  # average the last 5 epochs at 90% noise
            filled = int(min(self.state["hist_len"].item() + 1, HISTORY))
            loss = hist[-filled:].mean(dim=0)
            loss = loss if pool is None else loss[pool]
        gmm = GaussianMixture2(warm_start=False, normalise=False)  # losses are normalised above
        values = loss.double().cpu().numpy()
        gmm.fit(values, 10)
        return gmm.posterior(values)[0]

    def detections(self, epoch: int) -> list[Detection]:
        """Each network's clean probability from its GMM (after the warm-up): network 1's with
        its labeled set (p > p_threshold), network 2's as ``clean_auc_net2``."""
        if epoch < self.warmup:
            return []
        return [Detection(self.state["prob1"], selected=self.state["prob1"] > self.p_threshold),
                Detection(self.state["prob2"], auc="clean_auc_net2")]

    # --- steps ----------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if phase.name.startswith("warmup"):
            return self._warmup_step(batch, "net" + phase.name[-1])
        return self._mix_step(batch, epoch, phase)

    def _warmup_step(self, batch: dict[str, torch.Tensor], key: str) -> StepOutput:
        logits = self.models[key](batch["train"])
        loss = F.cross_entropy(logits, batch["label"])
        terms = {"loss_x": loss.detach()}
        if self.warmup_penalty == "always" or (self.warmup_penalty == "class-dependent"
                                               and self.ctx.noise in CLASS_DEPENDENT):
            penalty = negative_entropy(logits)  # NegEntropy: mean sum p log p (Train_cifar.py conf_penalty)
            loss = loss + penalty
            terms["penalty"] = penalty.detach()
        return StepOutput(loss=loss, logits=logits if key == "net1" else None, terms=terms)

    def _unlabeled_pool(self, labeled_indices: torch.Tensor) -> torch.Tensor:
        """The dataset indices a phase with labeled set ``labeled_indices`` draws unlabeled
        batches from: the rest (of the epoch's sample, when the data set draws one), ascending."""
        labeled = torch.zeros(self.ctx.num_train, dtype=torch.bool, device=self.ctx.device)
        labeled[labeled_indices] = True
        epoch_pool = self.ctx.epoch_pool()
        if epoch_pool is not None:  # only the epoch's sample is unlabeled data
            outside = torch.ones_like(labeled)
            outside[epoch_pool] = False
            labeled |= outside
        return torch.nonzero(~labeled).squeeze(1)

    def _stream(self, name: str, labeled: torch.Tensor, size: int) -> BatchStream:
        """The phase's unlabeled batches: the official unlabeled loader (shuffled, partial batches
        kept, a fresh pass when exhausted; :mod:`methods.streams`), one batch per labeled batch."""
        count = -(-len(labeled) // size)
        return BatchStream(self.ctx, name, self._unlabeled_pool(labeled), size, ("weak", "weak2"), "partial", count)

    def _next_unlabeled(self, phase: Phase) -> dict[str, torch.Tensor] | None:
        """This step's unlabeled batch, of the labeled loader's size (the official loader's)."""
        if phase.name not in self._unlabeled:  # a phase made by hand, not by phases()
            stream = self._stream(phase.name, phase.indices, phase.batch_size or self.ctx.batch_size)
            stream.count = None
            self._unlabeled[phase.name] = stream
        return self._unlabeled[phase.name].next()

    def _mix_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        key, peer = ("net1", "net2") if phase.name == "net1" else ("net2", "net1")
        net, other = self.models[key], self.models[peer]
        net.train()
        other.eval()
        prob = self.state["prob2" if key == "net1" else "prob1"]  # co-divide: the peer's division
        idx, n_l = batch["index"], batch["index"].shape[0]
        step = self._steps.get(phase.name, 0)
        self._steps[phase.name] = step + 1
        num_iter = len(phase.indices) // phase.batch_size + 1  # (len(labeled) // batch_size) + 1, official
        lam_u = linear_rampup(epoch + step / num_iter, self.warmup, self.lambda_u)
        # the official unlabeled loader's batch: the labeled loader's size, also beside an epoch's
        # last, partial labeled batch, and partial at the end of each pass (Train_cifar.py:46-52)
        ub = self._next_unlabeled(phase)
        with torch.no_grad():  # co-guessing, then refinement: the official order of the forwards,
            # which decides the BatchNorm running statistics the division pass and the test use
            targets_u = self._co_guess(net, other, ub) if ub is not None else None  # Train_cifar.py:60-71
            targets_x, weak_logits = self._refine(net, batch, prob[idx])  # Train_cifar.py:73-82
        inputs = [batch["weak"], batch["weak2"]] + ([ub["weak"], ub["weak2"]] if ub is not None else [])
        targets = [targets_x, targets_x] + ([targets_u, targets_u] if ub is not None else [])
        all_in, all_t = torch.cat(inputs), torch.cat(targets)
        # the run's generators, not the global RNG (Train_cifar.py: np.random, torch.randperm).
        # mix_rows=labeled: a permutation of all 4B rows, only the first 2B mixed and forwarded,
        # loss Lx + penalty over them (Train_clothing1M.py:91-109); all: all 4B (Train_cifar.py:93-113)
        rows = 2 * n_l if self.mix_rows == "labeled" else None
        mixed_in, mixed_t = mixup(all_in, all_t, self.alpha, self.ctx.generators(), rows=rows)
        logits = net(mixed_in)
        loss, terms = mixmatch_loss(logits.float(), mixed_t, 2 * n_l, lam_u)  # 2B rows: no loss_u (0)
        terms["lambda_u_ramped"] = torch.full((), lam_u, device=logits.device)  # on the device, as the other terms
        # train_acc: net 1's training-mode prediction of the labeled samples' weak view, against
        # their given labels (the warm-up reports net 1's too)
        return StepOutput(loss=loss, logits=weak_logits if key == "net1" else None, terms=terms)

    def _refine(self, net: torch.nn.Module, batch: dict[str, torch.Tensor],
                w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label refinement: w * onehot(y) + (1 - w) * mean of the net's two predictions,
        sharpened; also the logits of the first view (for train_acc)."""
        weak = net(batch["weak"])
        px = (F.softmax(weak, dim=1) + F.softmax(net(batch["weak2"]), dim=1)) / 2
        w = w[:, None]
        px = w * self.onehot_eye[batch["label"]] + (1 - w) * px.float()
        return sharpen(px, self.opts.temperature), weak

    def _co_guess(self, net: torch.nn.Module, other: torch.nn.Module, ub: dict[str, torch.Tensor]) -> torch.Tensor:
        """Co-guessing: both nets' softmax on both views of the unlabeled batch, averaged, sharpened."""
        pu = sum(F.softmax(m(ub[v]), dim=1).float() for m in (net, other) for v in ("weak", "weak2")) / 4
        return sharpen(pu, self.opts.temperature)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self._unlabeled = {}
        return {}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net1"](x) + self.models["net2"](x)  # Train_cifar.py test()
