"""M-Correction (Arazo, Ortego, Albert, O'Connor, McGuinness, "Unsupervised Label Noise Modeling
and Loss Correction", ICML 2019; official github.com/PaulAlbert31/LabelNoiseCorrection
@5e9a73e, ``train.py``, ``utils.py``, ``RunScripts.sh``).

One network. Every epoch ends with a tracking pass (eval mode, the training augmentation) that
gives each sample's CE loss; losses inside their [5th, 95th] percentiles, normalised to
(0, 1), are fitted by a two-component Beta mixture (10 EM steps from alpha (1, 2), beta
(2, 1)), and a 100-bin lookup of the posterior of the high-loss ("noisy") component, made
non-decreasing after its maximum, turns a loss into B = P(noisy | loss)
(``track_training_loss``, ``BetaMixture1D.create_lookup``). Training:

- before ``bootstrap_epoch``: mixup, lambda ~ Beta(alpha, alpha), loss
  lambda CE(x~, y) + (1 - lambda) CE(x~, y_perm) (``train_mixUp``);
- ``hard`` (M-DYR-H) / ``soft`` (M-DYR-S) from then on: B of each sample from the lookup of its
  loss under an eval-mode forward of the batch, clipped to [1e-4, 1 - 1e-4]; the bootstrapped
  mixup loss lambda [(1 - B) CE(x~, y) + B CE(x~, z)] + (1 - lambda) [the same for the permuted
  partner], z the argmax (hard) or softmax (soft) of a train-mode forward of the unmixed batch,
  plus ``reg_term`` sum_c (1/C) log((1/C) / mean p_c) (``train_mixUp_HardBootBeta``,
  ``train_mixUp_SoftBootBeta``);
- ``dynamic`` (MD-DYR-SH): from ``bootstrap_epoch`` the inputs are mixed per sample with weights
  (1 - B) and (1 - B_perm) (``mixup_data_beta``) and, for the first 5 / 300 of the epochs, the
  loss mixes the two labels with a fresh lambda ~ Beta(32, 32) (``train_mixUp_Beta``; the
  official lambda has nothing to do with the input weights, kept); then soft-to-hard
  bootstrapping with 0.5 / 0.5 weights, targets softmax(z / T), T falling linearly from 1 to
  0.001 over 89 / 300 of the epochs, plus the regulariser (``train_mixUp_SoftHardBetaDouble``).

Defaults: the variant is M-DYR-H below 90% noise and MD-DYR-SH from 90% (the README's table and
``RunScripts.sh``); alpha 32 (``train.py --alpha``), reg_term 1 (``RunScripts.sh``). The official
schedule is written for 300 epochs (bootstrapping from epoch 106 = first lr milestone 100 + 6,
1-based); it is scaled to ``--epochs`` here (epoch round(105 E / 300), 0-based; exact at 300),
and the optimiser and lr schedule are the run's. The noise is the harness's for every method
(the official CIFAR-100 noise draws from 10 classes only, ``utils.py:64``).

Departures, each an option: the Beta-mixture posteriors are exact (``posterior=official``
gives ``BetaMixture1D``'s guards: each weighted density floored at 1e-12 in the E-step,
``utils.py:696-701``, and 1e-12 added to the look-up's denominator, ``:693-694``); the soft
variant's regulariser uses the run's class count (``soft_prior=official``: the official 1/10
prior, ``utils.py:383``, which differs only when C != 10).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, RunSetting, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, StepOutput
from methods.mixtures import EPS_NAN, MCORRECTION_GUARDS, BetaMixture, Guards

OFFICIAL_EPOCHS = 300  # RunScripts.sh --epochs 300
OFFICIAL_BOOTSTRAP = 105  # bootstrap_ep_mixup = M[0] + 5 + 1 = 106, 1-based (train.py:125-135)
OFFICIAL_GUIDED = 5  # dynamic: guided mixup epochs 106-110, soft-to-hard from 111 (train.py:131-133)
OFFICIAL_TEMPS = 89  # temp_length = 200 - bootstrap_ep_mixup = 200 - 111 (train.py:137)
LOOKUP_BINS = 100  # BetaMixture1D.lookup_resolution
B_CLIP = 1e-4  # B[B <= 1e-4] = 1e-4; B[B >= 1 - 1e-4] = 1 - 1e-4 (utils.py:283-284)
X_CLIP = 1e-3  # normalised losses clipped to [10e-4, 1 - 10e-4] (utils.py:113-114, 579-580)
FIT_EPS = 1e-4  # BetaMixture1D.fit: x[x >= 1 - eps] = 1 - eps; x[x <= eps] = eps (utils.py:700-703)
MIN_SHIFT = 1e-5  # bmm_model_minLoss = 5th percentile + 10e-6 (utils.py:108)


VARIANT = PerSetting(
    case("dynamic", "README results table; RunScripts.sh: MD-DYR-SH at 90% noise", rate=">=0.9"),
    case("hard", "README results table; RunScripts.sh: M-DYR-H"))


def scaled_bootstrap(s: RunSetting) -> int:
    """105 of 300 epochs, scaled to --epochs: round(105 * (epochs / 300)), 0-based."""
    return round(OFFICIAL_BOOTSTRAP * (s.epochs / OFFICIAL_EPOCHS))


BOOTSTRAP = PerSetting(case(scaled_bootstrap, "train.py:125-135: M[0] + 5 + 1 = 106 of 300 epochs, 1-based"))


@dataclass
class MCorrectionOptions:
    variant: Literal["hard", "soft", "dynamic"] | None = field(default=None, metadata={
        "help": "hard (M-DYR-H), soft (M-DYR-S) or dynamic (MD-DYR-SH); default hard, dynamic from 90% noise",
        "source": "README results table; RunScripts.sh", "setting": VARIANT})
    alpha: float = field(default=32.0, metadata={"help": "mixup Beta(alpha, alpha)", "source": "train.py --alpha 32"})
    reg_term: float = field(default=1.0, metadata={
        "help": "weight of the uniform-prior regulariser while bootstrapping",
        "source": "RunScripts.sh --reg-term 1.0"})
    bootstrap_epoch: int | None = field(default=None, metadata={
        "help": "first bootstrapping epoch (0-based); default 105/300 of --epochs",
        "source": "train.py:125-135 (M[0] + 5 + 1 = 106 of 300, 1-based)", "setting": BOOTSTRAP})
    bmm_iterations: int = field(default=10, metadata={"help": "EM steps of the Beta mixture",
                                                       "source": "BetaMixture1D(max_iters=10), utils.py:120"})
    posterior: Literal["exact", "official"] = field(default="exact", metadata={
        "help": "exact: mixture posteriors in log space; official: BetaMixture1D's 1e-12 E-step floor and "
                "look-up denominator",
        "source": "utils.py:693-701 (BetaMixture1D.posterior, responsibilities)"})
    soft_prior: Literal["classes", "official"] = field(default="classes", metadata={
        "help": "soft variant's regulariser prior: 1/C, or the official 1/10 whatever C", "source": "utils.py:383"})

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.reg_term < 0:
            raise ValueError("alpha must be > 0 and reg_term >= 0")
        if self.bootstrap_epoch is not None and self.bootstrap_epoch < 0:
            raise ValueError(f"bootstrap_epoch {self.bootstrap_epoch} must be >= 0")
        if self.bmm_iterations < 1:
            raise ValueError(f"bmm_iterations {self.bmm_iterations} must be >= 1")


def normalise_losses(losses: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(l - lo) / (hi - lo + 1e-6), then values >= 1 to 1 - 1e-3 and <= 0 to 1e-3 (utils.py)."""
    x = (np.asarray(losses, dtype=np.float64) - lo) / (hi - lo + 1e-6)
    x[x >= 1] = 1 - X_CLIP
    x[x <= 0] = X_CLIP
    return x


def loss_range(losses: np.ndarray) -> tuple[float, float, np.ndarray]:
    """The 5th percentile + 1e-5, the 95th, and the losses inside [5th, 95th] (track_training_loss)."""
    hi, lo = float(np.percentile(losses, 95)), float(np.percentile(losses, 5))
    kept = losses[(losses <= hi) & (losses >= lo)]
    return lo + MIN_SHIFT, hi, kept


def fit_mixture(kept: np.ndarray, lo: float, hi: float, iterations: int, guards: Guards | None) -> BetaMixture:
    """The Beta mixture of the normalised losses; like ``BetaMixture1D.fit`` it squeezes them into
    [1e-4, 1 - 1e-4] first (values just above 0 survive the normalisation's own clip)."""
    bmm = BetaMixture(clamp=False, guards=guards)
    bmm.fit_normalised(np.clip(normalise_losses(kept, lo, hi), FIT_EPS, 1 - FIT_EPS), iterations)
    return bmm


def make_lookup(bmm: BetaMixture) -> np.ndarray:
    """Posterior of the noisy component at the official 100 points, 1e-12 .. 1 - 1e-12, as they
    are (``BetaMixture1D.create_lookup``, ``utils.py:730-735``), made non-decreasing after its
    maximum. The end points matter: where the noisy component has alpha < 1 its density rises
    without bound towards 0, and bin 0 reads another posterior at 1e-12 than at 1e-6."""
    x = np.linspace(EPS_NAN, 1 - EPS_NAN, LOOKUP_BINS)
    post = bmm.posterior(x)[1].copy()
    post[int(np.argmax(post)):] = post.max()
    return post


def look_up(lookup: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """lookup[int(100 x)], the index clipped to the table (``BetaMixture1D.look_lookup``)."""
    i = (LOOKUP_BINS * x).long().clamp(0, LOOKUP_BINS - 1)
    return lookup[i]


def prior_penalty(probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sum_c (1/C) log((1/C) / mean p_c) over the batch's mean prediction (``reg_loss_class``)."""
    mean = probs.mean(dim=0)
    return ((1.0 / num_classes) * torch.log((1.0 / num_classes) / mean)).sum()


def bootstrap_loss(logp: torch.Tensor, y: torch.Tensor, target: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean((1 - B) CE(y) + B CE(target)), ``target`` a class index (hard) or a distribution (soft)."""
    ce_y = F.nll_loss(logp, y, reduction="none")
    ce_t = F.nll_loss(logp, target, reduction="none") if target.dim() == 1 else -(target * logp).sum(dim=1)
    return ((1 - b) * ce_y + b * ce_t).mean()


@METHODS.register("mcorrection")
class MCorrection(Method):
    """M-Correction (ICML 2019): mixup, then bootstrapping weighted by a Beta mixture on the losses."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Arazo et al., Unsupervised Label Noise Modeling and Loss Correction, ICML 2019"
    code = "github.com/PaulAlbert31/LabelNoiseCorrection"
    Options = MCorrectionOptions
    smoke_options = {"bootstrap_epoch": "1"}
    official_options = {
        # PaulAlbert31/LabelNoiseCorrection @5e9a73e utils.py:693-701 (BetaMixture1D: the 1e-12 E-step
        # floor, utils.py:696-701, and the look-up denominator + 1e-12, utils.py:693-694)
        "posterior": "official",
        "soft_prior": "official",  # utils.py:383: the soft variant's prior 1/10 whatever the class count
    }

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """The mixup alpha and the regulariser weight (the official runs use 32 and 1)."""
        return {"alpha": Param("float", 0.1, 32.0, log=True, grid=(0.5, 4.0, 32.0), source="train.py --alpha 32"),
                "reg_term": Param("float", 0.0, 2.0, grid=(0.0, 0.5, 1.0, 2.0), source="RunScripts.sh 1.0")}

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        self.variant, self.boot = o.variant, o.bootstrap_epoch
        scale = ctx.epochs / OFFICIAL_EPOCHS
        self.soft_hard = self.boot + max(1, round(OFFICIAL_GUIDED * scale))
        self.temps = np.linspace(1, 0.001, max(1, round(OFFICIAL_TEMPS * scale)))
        self.add_network("net", schedule_epochs=ctx.epochs)
        n = ctx.num_train
        self.state["loss"] = torch.zeros(n, device=ctx.device)  # last tracked CE per sample (dataset index)
        self.state["p_noisy"] = torch.full((n,), 0.5, device=ctx.device)  # its B
        self.state["lookup"] = torch.full((LOOKUP_BINS,), 0.5, dtype=torch.float64)  # B = 0.5 before a fit
        self.state["range"] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # loss min, max of the fit
        self._cache: tuple[torch.Tensor, float, float] | None = None  # lookup on the device, lo, hi

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._cache = None

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """The last fit's lookup on the device and its loss range as floats, for the epoch's
        steps: read here, once, not at a step (a resumed run holds them on the device)."""
        lo, hi = (float(v) for v in self.state["range"].cpu())
        self._cache = (self.state["lookup"].to(self.ctx.device, torch.float32), lo, hi)
        return {}

    # --- per step ------------------------------------------------------------------------
    def _batch_b(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """B of the batch: the lookup of its eval-mode loss (``compute_probabilities_batch``),
        clipped to [1e-4, 1 - 1e-4]."""
        lookup, lo, hi = self._cache
        net.eval()
        with torch.no_grad():
            loss = F.cross_entropy(net(x).float(), y, reduction="none")
        net.train()
        z = (loss - lo) / (hi - lo + 1e-6)
        z = torch.where(z >= 1, 1 - X_CLIP, torch.where(z <= 0, X_CLIP, z))
        return look_up(lookup, z).clamp(B_CLIP, 1 - B_CLIP)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Any) -> StepOutput:
        """One step of the epoch's phase; the forwards run in the official order (it decides
        which batches the BatchNorm statistics of B's eval-mode forward have seen)."""
        net, x, y = self.models["net"], batch["train"], batch["label"]
        gens = self.ctx.generators()
        perm = torch.randperm(x.shape[0], generator=gens.torch, device=gens.torch.device).to(x.device)
        if epoch < self.boot:  # train_mixUp
            lam = float(gens.numpy.beta(self.opts.alpha, self.opts.alpha))
            logits = net(lam * x + (1 - lam) * x[perm])
            logp = F.log_softmax(logits.float(), dim=1)
            return StepOutput(loss=lam * F.nll_loss(logp, y) + (1 - lam) * F.nll_loss(logp, y[perm]), logits=logits)
        if self.variant == "dynamic":
            return self._dynamic(net, x, y, perm, epoch, gens)
        with torch.no_grad():
            z = net(x).float()  # train mode, as the official output_x1
        if self.variant == "soft":  # train_mixUp_SoftBootBeta: B before the mixed forward
            b = self._batch_b(net, x, y)
        lam = float(gens.numpy.beta(self.opts.alpha, self.opts.alpha))
        logits = net(lam * x + (1 - lam) * x[perm])
        if self.variant == "hard":  # train_mixUp_HardBootBeta: B after it
            b = self._batch_b(net, x, y)
        logp = F.log_softmax(logits.float(), dim=1)
        target = z.argmax(dim=1) if self.variant == "hard" else F.softmax(z, dim=1)
        boot = (lam * bootstrap_loss(logp, y, target, b)
                + (1 - lam) * bootstrap_loss(logp, y[perm], target[perm], b[perm]))
        c = self.ctx.num_classes if self.variant == "hard" or self.opts.soft_prior == "classes" else 10
        reg = prior_penalty(logp.exp(), c)
        return StepOutput(loss=boot + self.opts.reg_term * reg, logits=logits,
                          terms={"loss_boot": boot.detach(), "loss_reg": reg.detach(), "mean_b": b.mean()})

    def _dynamic(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor,
                 epoch: int, gens: Any) -> StepOutput:
        """MD-DYR-SH: inputs mixed per sample by (1 - B); guided mixup, then soft-to-hard."""
        guided = epoch < self.soft_hard
        if not guided:
            with torch.no_grad():
                z = net(x).float()
        b = self._batch_b(net, x, y)
        w = ((1 - b) / ((1 - b) + (1 - b[perm]))).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        logits = net(w * x + (1 - w) * x[perm])
        logp = F.log_softmax(logits.float(), dim=1)
        if guided:  # train_mixUp_Beta: a lambda unrelated to the input weights (official)
            lam = float(gens.numpy.beta(self.opts.alpha, self.opts.alpha))
            return StepOutput(loss=lam * F.nll_loss(logp, y) + (1 - lam) * F.nll_loss(logp, y[perm]), logits=logits)
        temp = float(self.temps[min(epoch - self.soft_hard, len(self.temps) - 1)])
        target = F.softmax(z / temp, dim=1)
        boot = 0.5 * bootstrap_loss(logp, y, target, b) + 0.5 * bootstrap_loss(logp, y[perm], target[perm], b[perm])
        reg = prior_penalty(logp.exp(), self.ctx.num_classes)
        return StepOutput(loss=boot + self.opts.reg_term * reg, logits=logits,
                          terms={"loss_boot": boot.detach(), "loss_reg": reg.detach(),
                                 "temperature": torch.full((), temp, device=z.device)})

    # --- per epoch -----------------------------------------------------------------------
    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """The tracking pass and the mixture fit whose lookup the next epoch uses."""
        logits = self.ctx.predict_train(self.models["net"], view="train")
        losses = F.cross_entropy(logits.float(), self.ctx.given_labels.to(logits.device), reduction="none")
        raw = losses.double().cpu().numpy()
        lo, hi, kept = loss_range(raw)
        guards = MCORRECTION_GUARDS if self.opts.posterior == "official" else None
        bmm = fit_mixture(kept, lo, hi, self.opts.bmm_iterations, guards)
        lookup = make_lookup(bmm)
        self.state["lookup"] = torch.from_numpy(lookup)
        self.state["range"] = torch.tensor([lo, hi], dtype=torch.float64)
        self._cache = None
        p_noisy = look_up(self.state["lookup"], torch.from_numpy(normalise_losses(raw, lo, hi)))
        self.state["loss"] = losses.to(self.ctx.device)
        self.state["p_noisy"] = p_noisy.float().to(self.ctx.device)
        return {f"bmm_{k}": float(v) for k, v in bmm.params().items()}

    def detections(self, epoch: int) -> list[Detection]:
        """1 - B of the tracked losses; the clean set: B < 0.5."""
        p = self.state["p_noisy"]
        return [Detection(1 - p, selected=p < 0.5)]
