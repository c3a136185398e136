"""ProMix (Xiao, Dong, Wang, Feng, Wu, Chen, Zhao, IJCAI 2023; official
github.com/Justherozen/ProMix @40d8378, ``Train_promix.py``, ``utils/utils.py``, ``utils/fmix.py``,
``dataloader_cifarn.py``, ``model.py``).

Two networks (the run's backbone), each with its primary head (the backbone's classifier) and a
pseudo head h_AP (a new Linear on the penultimate features, ``model.py:158``); one optimiser over
both (``Train_promix.py:486-488``). Every epoch both networks train together, one loss per step:

1. Warm-up (``pretrain_ep`` epochs): CE on the weak view for both networks, plus the negative
   entropy penalty under class-dependent noise (the official ``noise_mode == 'asym'``, :339-357).
2. After warm-up, at each epoch start, *class-wise small-loss selection* (CSS, ``eval_train``,
   :419-456) per network: per-sample CE of the plain view, min-max normalised; per given class j
   the ``max(min(ceil(rho N / C), n_j), 1)`` smallest are selected. Each network trains on its
   OWN selection (w1 -> net 1, w2 -> net 2).
3. Per batch (``train``, :110-336), per network: *MHCS* adds the samples whose primary-head
   probability of the given label on the weak view exceeds tau; the targets are the given label
   there and the one-hot argmax of the debiased prediction elsewhere; after 350 of 600 epochs
   *LGA* (``label_guessing``, :88-107) tops a batch selected below 90% up to 90% with samples both
   networks predict alike with confidence > tau (highest mean confidence first), with their
   predicted label. Debiasing (``utils.py:8-29``): ``debias_output(z) = z + tau_o log pi``
   (the margin loss), ``debias_pl(z) = softmax(z - tau_p log pi)`` (pseudo-labels), with class
   priors pi per network for the selected set and pi_unrel for the rest, EMAs (m 0.9999) of the
   mean primary-head softmax of the weak view (:322-325). Primary head: CE-soft on the debiased
   weak logits of the selected + w (CE-soft on the strong view ``ra-promix`` + mixup Beta(4, 4) +
   FMix (decay 3, alpha 1) of the selected weak inputs); pseudo head: the same terms + beta
   (CE-soft of its pi_unrel-debiased logits on the unselected, weak + w strong, against the
   sharpened (T 0.5) ``debias_pl`` of the primary head with pi_unrel). The four losses are summed.

Epoch constants of the official 600-epoch run, scaled to the run's E epochs as fractions of 600
(an epoch e counts as e * 600 / E official epochs): warm-up ``pretrain_ep`` 10 (<= 10 classes) /
30 (run.sh), as ``max(1, round(pretrain_ep E / 600))``; w = min(e / 50, 1) and the rho ramp over
50 (``warmup_ep``, :42, :115-117); beta = 0.1 min(e / 100, 1) (:120); LGA from e > 600 - 250
(``start_expand``, :46, :191). Learning rate (``lr_schedule=official``): the official cosine from
lr to lr 0.1^3 over the run's epochs (``utils.py:79-90``, ``--cosine`` in every run.sh line),
set per epoch, the run's scheduler unused; ``trainer`` keeps the run's scheduler. (The official
loop also trains an epoch e = 600 at lr 5e-5, one past the cosine's length; here the E epochs are
0 .. E-1.)

Quirks, named, and how they are handled:

- **beta reset** (``beta = 0 if (epoch >= 2*warmup_ep and beta < 1)``, :254): the official code
  switches the pseudo head's unlabeled term off for good at epoch 100 of 600, so it is active only
  between warm-up and epoch 100, a sixth of the run. The paper's abstract describes a semi-
  supervised framework that trains the classifiers on *both* the separated clean and noisy
  samples, the auxiliary pseudo head being the part trained on the noisy set D_u with debiased
  pseudo-labels; a switch-off is not in what could be read of the paper here (its abstract and
  introduction; the method section's equations could not be re-checked) nor in the fact sheet's
  summary of it. So ``beta_reset=paper`` (default) keeps beta at 0.1 once ramped, and
  ``official`` resets it. Without pseudo-label debiasing (``debias_pl = 0``) the official beta is
  1 and never reset (:120, :254); both values keep that.
- **warm-up penalty** (``NegEntropy``, :458-462) clamps the *logits* at 1e-12 before the softmax
  (a clamp meant for probabilities), so negative logits count as 0: ``warmup_penalty=plain``
  (default) is DivideMix's sum p log p on the logits (``methods.mixmatch.negative_entropy``),
  ``official`` the clamped form. It applies only under class-dependent noise.
- **empty selections** (reported in Justherozen/ProMix issues #12 and #18): the official
  ``CEsoft(...)[idx].mean()`` of an empty set is NaN, and ``bias_update`` of an empty set makes pi
  NaN for good; here every selected-set mean is a masked mean (0 when empty), pi keeps its value
  on an empty set, and the mixed terms (mixup, FMix) are skipped for a network with fewer than 2
  selected samples in the batch (BatchNorm cannot train on a batch of one).
- ``eval_train`` reads the global ``epoch`` and appends both networks' losses to ``all_loss[0]``
  (harmless, unused); its unstable ``sort`` is a stable one here.

Test prediction (``eval_head``): the official ``test`` (:389-416) prints three accuracies and
writes network 1's pseudo head's to its log file, but the authors report the mean of both primary
heads' logits, "Acc Mean" ("we merely adopt Acc Mean for evaluation in our experiments",
Justherozen/ProMix issue #14), which noisypy uses too: ``mean_primary`` (default) is that,
``pseudo1`` the log file's head (untrained, near chance, during the warm-up).

Training batches: the official training loader drops its last partial batch (``drop_last=True``,
dataloader_cifarn.py:273-279); here such a batch takes no step (its samples train in other epochs;
the trainer still counts it in the epoch means of the logged terms); the warm-up loader keeps it.

Speed: a network's weak and strong views, and its four mixed batches, go through one forward each
when the backbone has no BatchNorm (smallcnn): every row is then computed independently, so the
concatenation gives the same logits as separate forwards (up to float summation order). With
BatchNorm, the batch statistics of a forward depend on what is in it and the running statistics
advance once per forward, so the official six forwards per network (weak, strong, mixup, FMix,
and mixup and FMix for the pseudo head) are kept; each forward gives both heads, as the official
``use_ph=True`` call. The two networks are different modules and never share a forward. One host
sync per step: the sizes of the two selections, which fix the mixed batches' shapes.

Randomness: mixup and FMix draw their lambdas (numpy), permutations and the FMix spectrum (torch)
from the run's generators, in the official order (net 1 mixup, FMix, pseudo-head mixup, FMix;
then net 2); the FMix mask (``utils/fmix.py`` ``sample_mask``) is written here, one low-frequency
mask per call shared by the batch as in the official code. The official ``make_low_freq_image``
indexes its spectrum so that only x-frequencies 0 and 1 survive (banded masks, the code of the
FMix library itself); the default is the FMix paper's isotropic mask, ``fmix_mask=official``
gives the banded one.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common.augment import promix_augment
from bench.common.defaults import ByRate, FromOptions, PerSetting, Scaled, case
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from bench.common.views import View, register_view
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs
from methods.mixmatch import mixup, negative_entropy, sharpen
from methods.shared import classifier_of

OFFICIAL_EPOCHS = 600  # --num_epochs (Train_promix.py:30)
RAMP_EPOCHS = 50  # --warmup_ep: w and rho ramps, linear_rampup2(epoch, 50) (Train_promix.py:42, 115-117)
BETA_EPOCHS = 100  # beta ramp linear_rampup2(epoch, 2 * warmup_ep) and its reset (Train_promix.py:120, 254)
BETA_MAX = 0.1  # beta = 0.1 * ramp if debias_pl else 1 (Train_promix.py:120)
LGA_START = 350  # label guessing for epoch > num_epochs - start_expand = 600 - 250 (Train_promix.py:46, 191)
ETA_MIN = 0.1 ** 3  # cosine to lr * lr_decay_rate ** 3 (utils.py:82; Train_promix.py:22)
MIXUP_ALPHA = 4.0  # np.random.beta(4, 4) (Train_promix.py:204)
FMIX_DECAY, FMIX_ALPHA = 3.0, 1.0  # FMix() defaults decay_power 3, alpha 1 (fmix.py:77; Train_promix.py:490)
VIEWS = ("weak", "ra-promix")  # transform_train and RandomAugment(3, 5) + it (dataloader_cifarn.py:226-245)
# ProMix's strong view: RandomAugment(3, 5), 3 ops per image at values drawn over their whole range,
# always applied, then a grey Cutout of side uniform(0, 0.5) x width (bench.common.augment.promix_augment;
# dataloader_cifarn.py, utils/randaug.py). Approximations, named: torchvision's op set and ranges in 10
# steps, and the official order (RandomAugment before crop + flip) reversed.
register_view(View("ra-promix", "{base} + ProMix RandomAugment (3 ops, full range) + grey Cutout",
                   "ProMix dataloader_cifarn.py:226-245, utils/randaug.py RandomAugment(3, 5)",
                   owner=__name__, after=promix_augment))
# rho (= rho_start = rho_end) of the run.sh lines by nominal noise rate: sym 20% 0.7, asym 40% and sym 50% 0.5
RHO_BY_RATE = {0.2: 0.7, 0.4: 0.5, 0.5: 0.5}
RHO_REAL_NOISE = 0.5  # run.sh CIFAR-10N (aggre, rand1, worst) and CIFAR-100N

# Per-setting defaults: the run.sh values, CIFAR-10's for <= 10 classes, else CIFAR-100's; rho of the
# nearest published noise rate (ties: the lower; real noise: the CIFAR-N lines' 0.5); the warm-up scaled.
RHO = PerSetting(
    case(ByRate(RHO_BY_RATE, real=RHO_REAL_NOISE),
         "run.sh --rho_range: sym 20% 0.7, asym 40% / sym 50% 0.5; CIFAR-10N / CIFAR-100N 0.5"))
TAU = PerSetting(
    case(0.99, "run.sh --tau 0.99 (CIFAR-10)", classes="<=10"),
    case(0.95, "run.sh --tau 0.95 (CIFAR-100)"))
DEBIAS_OUTPUT = PerSetting(
    case(0.8, "run.sh --debias_output 0.8 (CIFAR-10)", classes="<=10"),
    case(0.5, "run.sh --debias_output 0.5 (CIFAR-100)"))
DEBIAS_PL = PerSetting(
    case(0.8, "run.sh --debias_pl 0.8 (CIFAR-10)", classes="<=10"),
    case(0.5, "run.sh --debias_pl 0.5 (CIFAR-100)"))
WARMUP = PerSetting(
    case(Scaled(10, OFFICIAL_EPOCHS), "run.sh --pretrain_ep 10 (CIFAR-10); Train_promix.py:508", classes="<=10"),
    case(Scaled(30, OFFICIAL_EPOCHS), "run.sh --pretrain_ep 30 (CIFAR-100); Train_promix.py:508"))


@dataclass
class ProMixOptions:
    rho: float | None = field(default=None, metadata={
        "help": "share of each class CSS keeps (rho_end); default by nominal noise rate: 0.7 near 20%, 0.5 near "
                "40-50% and under real noise", "source": "run.sh --rho_range; Train_promix.py:57, 451",
        "setting": RHO})
    rho_start: float | None = field(default=None, metadata={
        "help": "rho of the first epoch, ramped linearly to rho over 50/600 of the epochs; default rho",
        "source": "Train_promix.py:37, 513 (run.sh: start = end)",
        "setting": PerSetting(case(FromOptions(lambda s, o: o.rho, "rho"), "run.sh: --rho_range start = end"))})
    tau: float | None = field(default=None, metadata={
        "help": "MHCS and LGA confidence threshold; default 0.99 (<= 10 classes), 0.95", "source": "run.sh --tau",
        "setting": TAU})
    debias_output: float | None = field(default=None, metadata={
        "help": "tau_o of the debiased margin loss z + tau_o log pi; default 0.8 (<= 10 classes), 0.5",
        "source": "run.sh --debias_output; utils.py:14-17", "setting": DEBIAS_OUTPUT})
    debias_pl: float | None = field(default=None, metadata={
        "help": "tau_p of the debiased pseudo-labels softmax(z - tau_p log pi); default 0.8 (<= 10 classes), 0.5",
        "source": "run.sh --debias_pl; utils.py:8-11", "setting": DEBIAS_PL})
    warmup_epochs: int | None = field(default=None, metadata={
        "help": "CE warm-up epochs; default pretrain_ep 10 (<= 10 classes) / 30 of 600, scaled: "
                "max(1, round(pretrain_ep E / 600))", "source": "run.sh --pretrain_ep; Train_promix.py:508",
        "setting": WARMUP})
    temperature: float = field(default=0.5, metadata={"help": "sharpening T of the unlabeled targets",
                                                      "source": "Train_promix.py:29, 252"})
    threshold: float = field(default=0.9, metadata={"help": "LGA fills a batch selected below this share up to it",
                                                    "source": "Train_promix.py:44, 91"})
    bias_m: float = field(default=0.9999, metadata={"help": "EMA momentum of the class priors pi",
                                                    "source": "Train_promix.py:54; utils.py:23-29"})
    beta_reset: Literal["paper", "official"] = field(default="paper", metadata={
        "help": "paper: the pseudo head's unlabeled weight beta ramps to 0.1 and stays; official: beta = 0 from "
                "100/600 of the epochs on", "source": "Train_promix.py:120, 254"})
    eval_head: Literal["mean_primary", "pseudo1"] = field(default="mean_primary", metadata={
        "help": "test logits: the mean of both primary heads (the authors' reported 'Acc Mean') or network 1's "
                "pseudo head (the official log file)",
        "source": "Train_promix.py:400-416; ProMix issue #14; noisypy pro_mix.py:547-567"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: cosine per epoch from lr to lr * 0.1^3 over the run's epochs; trainer: the run's "
                "scheduler", "source": "utils.py:79-90; run.sh --cosine"})
    fmix_mask: Literal["paper", "official"] = field(default="paper", metadata={
        "help": "paper: FMix's isotropic low-frequency mask (the FMix paper); official: the mask of fmix.py, whose "
                "spectrum indexing keeps x-frequencies 0 and 1 only (sheared bands)",
        "source": "utils/fmix.py:132-151 make_low_freq_image / get_spectrum"})
    warmup_penalty: Literal["plain", "official"] = field(default="plain", metadata={
        "help": "negative entropy of the warm-up under class-dependent noise: plain sum p log p, or official "
                "(logits clamped at 1e-12 first)", "source": "Train_promix.py:351-352, 458-462"})

    def __post_init__(self) -> None:
        for key in ("rho", "rho_start"):
            v = getattr(self, key)
            if v is not None and not 0 < v <= 1:
                raise ValueError(f"{key} {v} must lie in (0, 1]")
        if self.tau is not None and not 0 < self.tau < 1:
            raise ValueError(f"tau {self.tau} must lie in (0, 1)")
        if (self.debias_output or 0) < 0 or (self.debias_pl or 0) < 0:
            raise ValueError("debias_output and debias_pl must be >= 0")
        if (self.warmup_epochs or 0) < 0:
            raise ValueError("warmup_epochs must be >= 0")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold {self.threshold} must lie in (0, 1]")
        if not 0 <= self.bias_m < 1:
            raise ValueError(f"bias_m {self.bias_m} must lie in [0, 1)")


# --- the official pieces, as functions ----------------------------------------------------------
def debias_output(logits: torch.Tensor, prior: torch.Tensor, strength: float) -> torch.Tensor:
    """z + tau log pi: the debiased margin loss's logits (utils.py:14-17)."""
    return logits + strength * prior.log()


def debias_pl(logits: torch.Tensor, prior: torch.Tensor, strength: float) -> torch.Tensor:
    """softmax(z - tau log pi): the debiased pseudo-label distribution (utils.py:8-11)."""
    return F.softmax(logits - strength * prior.log(), dim=1)


def ce_soft(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row -sum t log softmax(z) (``CE_Soft_Label``, utils.py:46-60)."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the rows where ``mask`` is set; 0 for an empty mask (the official mean is NaN)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1)


def ema_prior(prior: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor, momentum: float) -> torch.Tensor:
    """m pi + (1 - m) mean of the masked rows of ``probs`` (``bias_update``, utils.py:23-29); pi
    unchanged when no row is masked (the official update makes it NaN)."""
    m = mask.to(probs.dtype)
    count = m.sum()
    mean = (probs * m[:, None]).sum(dim=0) / count.clamp_min(1)
    return torch.where(count > 0, momentum * prior + (1 - momentum) * mean, prior)


def css_select(loss: torch.Tensor, labels: torch.Tensor, num_classes: int, rho: float) -> torch.Tensor:
    """Class-wise small-loss selection (``eval_train``, Train_promix.py:444-455): per given class j
    the ``max(min(ceil(N / C * rho), n_j), 1)`` lowest losses (stable ties); a boolean mask."""
    quota = math.ceil(len(loss) * (1.0 / num_classes) * rho)  # bs_j * rho with bs_j = N * (1 / C)
    counts = torch.bincount(labels, minlength=num_classes)
    per_class = counts.clamp(max=quota).clamp(min=1)
    order = torch.argsort(loss, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, lowest loss first
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=loss.device) - starts[labels[order]]
    mask = torch.zeros(len(loss), dtype=torch.bool, device=loss.device)
    mask[order[rank < per_class[labels[order]]]] = True
    return mask


def label_guessing(chosen: torch.Tensor, score1: torch.Tensor, score2: torch.Tensor, match: torch.Tensor,
                   tau: float, threshold: float) -> torch.Tensor:
    """LGA (Train_promix.py:88-107): when fewer than ``threshold`` of the batch are chosen, add the
    samples both networks predict alike with max probability > tau, highest mean first, until
    ``int(B threshold)`` are chosen. On the device, without host syncs."""
    b = chosen.shape[0]
    candidate = (score1 > tau) & (score2 > tau) & match & ~chosen
    room = int(b * threshold) - chosen.sum()
    key = torch.where(candidate, (score1 + score2) / 2, torch.full_like(score1, -math.inf))
    order = torch.argsort(key, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(b, device=chosen.device)
    grown = chosen | (candidate & (rank < room))
    return torch.where(chosen.sum() < threshold * b, grown, chosen)


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """``adjust_learning_rate`` with ``--cosine`` (utils.py:79-90): from lr down to lr 0.1^3."""
    eta_min = lr * ETA_MIN
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def ramp(epoch: int, epochs: int, length: int) -> float:
    """``linear_rampup2(e, length)`` = min(e / length, 1) at the official epoch e = epoch 600 / epochs."""
    return min(epoch * OFFICIAL_EPOCHS / (epochs * length), 1.0)


def beta_at(epoch: int, epochs: int, debias_pl_strength: float, reset: str) -> float:
    """The pseudo head's unlabeled weight (Train_promix.py:120, 254): 0.1 min(e / 100, 1) with
    pseudo-label debiasing, else 1; ``official``: 0 from e >= 100 while below 1."""
    beta = BETA_MAX * ramp(epoch, epochs, BETA_EPOCHS) if debias_pl_strength else 1.0
    if reset == "official" and epoch * OFFICIAL_EPOCHS >= BETA_EPOCHS * epochs and beta < 1:
        return 0.0
    return beta


def lga_active(epoch: int, epochs: int) -> bool:
    """Label guessing runs for official epochs e > 600 - 250 (Train_promix.py:191)."""
    return epoch * OFFICIAL_EPOCHS > LGA_START * epochs


def low_freq_images(k: int, size: tuple[int, int], decay: float, gen: torch.Generator, device: torch.device,
                    official: bool = False) -> torch.Tensor:
    """``k`` FMix low-frequency images (k, H, W) (``make_low_freq_image``; see :func:`fmix_masks`)."""
    h, w = size
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.fftfreq(w, device=device)[: w // 2 + 1][None, :]  # irfftn's half spectrum (fftfreqnd)
    scale = 1.0 / (fx * fx + fy * fy).sqrt().clamp_min(1.0 / max(h, w)) ** decay
    if official:
        param = torch.randn(k, h, w // 2 + 1, 2, generator=gen, device=gen.device).to(device)
        spec = scale[None, :, :, None] * param
        spectrum = torch.complex(spec[:, 0], spec[:, 1])  # (k, W/2+1, 2): rows 0 and 1, as fmix.py
    else:
        param = torch.randn(k, 2, h, w // 2 + 1, generator=gen, device=gen.device).to(device)
        spectrum = torch.complex(scale * param[:, 0], scale * param[:, 1])
    return torch.fft.irfftn(spectrum, s=(h, w), dim=(-2, -1))


def fmix_masks(lams: Sequence[float], coins: Sequence[float], size: tuple[int, int], decay: float,
               gen: torch.Generator, device: torch.device, official: bool = False) -> torch.Tensor:
    """Binary FMix masks (``sample_mask``, fmix.py:96-226), one per lambda, as a (k, H, W) float
    tensor: a random spectrum scaled by 1 / max(f, 1 / max(H, W))^decay, its inverse real FFT, and
    the top ``ceil(lam H W)`` pixels (``floor`` when the coin is <= 0.5) set to 1.

    ``official``: the spectrum as fmix.py builds it: parameters of shape (H, W/2+1, 2) (real and
    imaginary last), of which ``spectrum[:, 0] + 1j * spectrum[:, 1]`` takes the first two ROWS,
    a (W/2+1, 2) array that ``irfftn(s=(H, W))`` reads as y-frequencies 0..W/2 by x-frequencies
    0 and 1: banded masks, not the FMix paper's isotropic ones (the default)."""
    h, w = size
    k = len(lams)
    image = low_freq_images(k, size, decay, gen, device, official)
    area = h * w
    nums = [math.ceil(lam * area) if coin > 0.5 else math.floor(lam * area)
            for lam, coin in zip(lams, coins, strict=True)]
    order = torch.argsort(image.reshape(k, -1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=device).expand(k, -1))
    # compared row by row with Python ints: a list copied to the device would sync the host
    return torch.stack([rank[i] < num for i, num in enumerate(nums)]).float().view(k, h, w)


def fmix(x: torch.Tensor, gens: Any, decay: float = FMIX_DECAY, alpha: float = FMIX_ALPHA,
         official: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``FMix.__call__`` (fmix.py:80-91): lam ~ Beta(alpha, alpha), one mask for the batch, a
    random permutation; returns (mask x + (1 - mask) x[perm], perm, lam)."""
    lam = float(gens.numpy.beta(alpha, alpha))
    coin = float(gens.numpy.random())  # random.random() > 0.5: ceil, else floor (fmix.py:189)
    with torch.autocast(x.device.type, enabled=False):
        mask = fmix_masks([lam], [coin], tuple(x.shape[-2:]), decay, gens.torch, x.device, official)[0]
    perm = torch.randperm(x.shape[0], generator=gens.torch, device=gens.torch.device).to(x.device)
    mask = mask.to(x.dtype)
    return mask * x + (1 - mask) * x[perm], perm, lam


def fmix_loss(logits: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam CE(z, y) + (1 - lam) CE(z, y[perm]) with hard labels (``fmix_loss``, fmix.py:34-50)."""
    return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[perm])


def official_negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``NegEntropy`` of Train_promix.py:458-462: the logits clamped at 1e-12, then mean sum p log p."""
    p = F.softmax(logits.clamp(min=1e-12), dim=1)
    return (p * p.log()).sum(dim=1).mean()


class PseudoHeadNet(nn.Module):
    """A backbone with ProMix's pseudo head h_AP, a Linear on the classifier's input (the
    penultimate features; ``pseudo_linear``, model.py:158, 188). ``forward`` gives the primary
    logits; :meth:`heads` gives (primary, pseudo) from one backbone pass."""

    def __init__(self, backbone: nn.Module, seed: int) -> None:
        super().__init__()
        self.backbone = backbone
        classifier = classifier_of(backbone, "promix")
        with torch.random.fork_rng(devices=[]):  # its initialisation from the run's generator, not the global RNG
            torch.random.default_generator.manual_seed(seed)  # the CPU generator only (restored on exit)
            self.pseudo = nn.Linear(classifier.in_features, classifier.out_features)
        self.pseudo.to(classifier.weight.device)
        self._features: torch.Tensor | None = None
        classifier.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._features = inputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.backbone(x)
        self._features = None
        return logits

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.backbone(x)
        features, self._features = self._features, None
        return logits, self.pseudo(features.flatten(1))


@METHODS.register("promix")
class ProMix(Method):
    """ProMix (IJCAI 2023): CSS + MHCS selection per network, debiased primary and pseudo heads."""

    family = "semi-supervised"  # `bench report` and `bench plot` group methods by it

    paper = ("Xiao, Dong, Wang, Feng, Wu, Chen, Zhao, ProMix: Combating Label Noise via Maximizing Clean "
             "Sample Utility, IJCAI 2023")
    code = "github.com/Justherozen/ProMix"
    smoke_options = {"warmup_epochs": "1"}  # warm-up, then CSS, MHCS, debiased heads and (epoch 2 of 3) LGA
    official_options = {
        "beta_reset": "official",  # Justherozen/ProMix @40d8378 Train_promix.py:254 (beta = 0 from 2 * warmup_ep on)
        "fmix_mask": "official",  # utils/fmix.py:132-151 (make_low_freq_image / get_spectrum: x-frequencies 0 and 1)
        "warmup_penalty": "official",  # Train_promix.py:458-462 (NegEntropy clamps the logits), used at :351-352
    }
    view_sets = {"warmup": ("weak",), "train": VIEWS}
    Options = ProMixOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """rho over the published 0.5 and 0.7, tau over 0.95 and 0.99, the debias strengths over 0.5
        and 0.8 (run.sh); range ends beyond the published values are our choice."""
        return {
            "rho": Param("float", 0.3, 0.9, grid=(0.5, 0.7), source="run.sh --rho_range 0.5 / 0.7"),
            "tau": Param("float", 0.9, 0.999, grid=(0.95, 0.99), source="run.sh --tau 0.95 / 0.99"),
            "debias_output": Param("float", 0.2, 1.0, grid=(0.5, 0.8), source="run.sh --debias_output 0.5 / 0.8"),
            "debias_pl": Param("float", 0.2, 1.0, grid=(0.5, 0.8), source="run.sh --debias_pl 0.5 / 0.8"),
        }

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts  # per-setting defaults filled in by Method.__init__
        self.rho, self.tau, self.t_out, self.t_pl = o.rho, o.tau, o.debias_output, o.debias_pl
        self.rho_start = o.rho_start  # default rho (filled after it, Method.__init__)
        self.warmup = int(o.warmup_epochs)
        self.check_warmup(self.warmup)
        gens = ctx.generators()
        seeds = torch.randint(2**62, (2,), generator=gens.torch, device=gens.torch.device).tolist()
        for k, seed in zip(("net1", "net2"), seeds, strict=True):
            self.models[k] = PseudoHeadNet(ctx.make_backbone(), seed)
        # one optimiser (the run's) over both networks, a parameter group each: the official one SGD (:486-488)
        opt = ctx.make_optimizer([{"params": self.models[k].parameters()} for k in ("net1", "net2")])
        self.optimizers["net"] = opt
        if o.lr_schedule == "trainer":
            sched = ctx.make_scheduler(opt, ctx.epochs)
            if sched is not None:
                self.schedulers["net"] = sched
        self.base_lr = base_lrs({"net": opt})
        # one forward for several inputs only where no layer couples the rows of a batch
        self.concat = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.models["net1"].modules())
        n, c = ctx.num_train, ctx.num_classes
        for k in ("1", "2"):  # normalised CSS loss, CSS set, and CSS + MHCS this epoch (detections)
            self.state["loss" + k] = torch.ones(n, device=ctx.device)
            self.state["css" + k] = torch.zeros(n, dtype=torch.bool, device=ctx.device)
            self.state["sel" + k] = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        # pi1, pi2, pi1_unrel, pi2_unrel, uniform at first (bias_initial, utils.py:19-21; Train_promix.py:501-504)
        self.state["pi"] = torch.full((4, c), 1.0 / c, device=ctx.device)
        self.eye = torch.eye(c, device=ctx.device)
        self._pool_size = n

    # --- epoch structure -------------------------------------------------------------------
    def views(self, epoch: int) -> tuple[str, ...]:
        return self.view_sets["warmup" if epoch < self.warmup else "train"]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        ctx = self.ctx
        if self.opts.lr_schedule == "official":
            set_lrs(self.optimizers, self.base_lr, lambda lr: cosine_lr(lr, epoch, ctx.epochs))
        pool = ctx.epoch_pool()
        self._pool_size = ctx.num_train if pool is None else len(pool)
        if epoch < self.warmup:
            return {}
        t0 = time.perf_counter()
        rho = self.rho_start + (self.rho - self.rho_start) * ramp(epoch, ctx.epochs, RAMP_EPOCHS)
        metrics = {"rho": rho, "w": ramp(epoch, ctx.epochs, RAMP_EPOCHS), "lga": float(lga_active(epoch, ctx.epochs)),
                   "beta": beta_at(epoch, ctx.epochs, self.t_pl, self.opts.beta_reset)}
        given = ctx.given_labels if pool is None else ctx.given_labels[pool]
        ids = torch.arange(ctx.num_train, device=ctx.device) if pool is None else pool.to(ctx.device)
        for k in ("1", "2"):
            with torch.no_grad():
                logits = ctx.predict_train(self.models["net" + k], pool)
            loss = F.cross_entropy(logits.float(), given, reduction="none")
            loss = (loss - loss.min()) / (loss.max() - loss.min()).clamp_min(1e-12)
            css = torch.zeros(ctx.num_train, dtype=torch.bool, device=ctx.device)
            css[ids] = css_select(loss, given, ctx.num_classes, rho)
            full = torch.ones(ctx.num_train, device=ctx.device)  # outside the epoch's sample: score 0
            full[ids] = loss
            self.state["loss" + k], self.state["css" + k], self.state["sel" + k] = full, css, css.clone()
            metrics[f"css_frac_net{k}"] = float(css[ids].float().mean())
        metrics["select_s"] = time.perf_counter() - t0
        return metrics

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if epoch < self.warmup:
            return {}
        pi = self.state["pi"].max(dim=1).values.tolist()
        out = {f"pi_max_net{k}": pi[i] for i, k in enumerate("12")}
        out.update({f"pi_unrel_max_net{k}": pi[2 + i] for i, k in enumerate("12")})
        for k in ("1", "2"):
            out[f"selected_frac_net{k}"] = float(self.state["sel" + k].float().mean())
        return out

    def detections(self, epoch: int) -> list[Detection]:
        """1 - normalised CSS loss as the clean score; selected: the samples a network trained on
        with their given label this epoch (its CSS set and what MHCS added); network 2's as
        ``clean_auc_net2``, ``clean_precision_net2``, ``clean_recall_net2``."""
        if epoch < self.warmup:
            return []
        return [Detection(1 - self.state["loss1"], selected=self.state["sel1"]),
                Detection(1 - self.state["loss2"], selected=self.state["sel2"], auc="clean_auc_net2",
                          precision="clean_precision_net2", recall="clean_recall_net2")]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.opts.eval_head == "pseudo1":  # the official log file: net 1's pseudo head (Train_promix.py:400, 415)
            return self.models["net1"].heads(x)[1]
        return (self.models["net1"](x) + self.models["net2"](x)) / 2  # "Acc Mean" (Train_promix.py:405; issue #14)

    # --- steps ----------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if epoch < self.warmup:
            return self._warmup_step(batch)
        return self._promix_step(batch, epoch)

    def _warmup_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """CE of both networks on the weak view, + the penalty under class-dependent noise (:339-357)."""
        x, y = batch["weak"], batch["label"]
        logits = [self.models[k](x).float() for k in ("net1", "net2")]
        ce = [F.cross_entropy(z, y) for z in logits]
        loss = ce[0] + ce[1]
        terms = {"loss_ce_net1": ce[0].detach(), "loss_ce_net2": ce[1].detach()}
        if self.ctx.noise in CLASS_DEPENDENT:
            pen = official_negative_entropy if self.opts.warmup_penalty == "official" else negative_entropy
            penalty = pen(logits[0]) + pen(logits[1])
            loss = loss + penalty
            terms["penalty"] = penalty.detach()
        return StepOutput(loss=loss, logits=logits[0], terms=terms)

    def _views(self, net: PseudoHeadNet, weak: torch.Tensor, strong: torch.Tensor) -> list[torch.Tensor]:
        """[primary weak, pseudo weak, primary strong, pseudo strong] logits, in float."""
        if self.concat:
            z, h = net.heads(torch.cat([weak, strong]))
            b = weak.shape[0]
            return [z[:b].float(), h[:b].float(), z[b:].float(), h[b:].float()]
        zw, hw = net.heads(weak)
        zs, hs = net.heads(strong)
        return [zw.float(), hw.float(), zs.float(), hs.float()]

    def _select(self, batch: dict[str, torch.Tensor], zw: list[torch.Tensor], pi: torch.Tensor,
                lga: bool) -> tuple[list[torch.Tensor], ...]:
        """Per network: CSS + MHCS (``w``), its targets, the chosen set (+ LGA), the unlabeled
        targets and the softmax of the weak view (Train_promix.py:161-200, 252-253)."""
        idx, onehot = batch["index"], self.eye[batch["label"]]
        px = [F.softmax(z.detach(), dim=1) for z in zw]
        w = [self.state["css" + k][idx] | ((p * onehot).sum(dim=1) > self.tau) for k, p in zip("12", px, strict=True)]
        pred = [self.eye[debias_pl(z.detach(), pi[i], self.t_pl).argmax(dim=1)] for i, z in enumerate(zw)]
        targets = [torch.where(w[i][:, None], onehot, pred[i]) for i in range(2)]  # labels w + pred (1 - w)
        chosen = list(w)
        if lga:
            (s1, a1), (s2, a2) = (p.max(dim=1) for p in px)
            chosen = [label_guessing(c, s1, s2, a1 == a2, self.tau, self.opts.threshold) for c in w]
        unlabeled = [sharpen(debias_pl(z.detach(), pi[2 + i], self.t_pl), self.opts.temperature)
                     for i, z in enumerate(zw)]
        for k, wk in zip("12", w, strict=True):
            self.state["sel" + k][idx] = self.state["sel" + k][idx] | wk
        return w, targets, chosen, unlabeled, px

    def _mixed(self, net: PseudoHeadNet, x: torch.Tensor, targets: torch.Tensor,
               prior: torch.Tensor) -> list[torch.Tensor]:
        """[mixup, FMix] of the primary head, then of the pseudo head, on the chosen weak inputs
        ``x`` (Train_promix.py:203-237), all debiased with the chosen set's prior."""
        gens = self.ctx.generators()
        labels = targets.argmax(dim=1)  # fmix.loss(..., pseudo_label.long()): the one-hot's class
        inputs, mixes = [], []
        for _ in range(2):  # primary head, then pseudo head: each its own draws
            xm, tm = mixup(x, targets, MIXUP_ALPHA, gens)
            xf, perm, lam = fmix(x, gens, official=self.opts.fmix_mask == "official")
            inputs += [xm, xf]
            mixes += [tm, (perm, lam)]
        n = x.shape[0]
        if self.concat:
            z, h = net.heads(torch.cat(inputs))
            logits = [z[:n], z[n:2 * n], h[2 * n:3 * n], h[3 * n:]]
        else:
            logits = [net(inputs[0]), net(inputs[1]), net.heads(inputs[2])[1], net.heads(inputs[3])[1]]
        logits = [debias_output(z.float(), prior, self.t_out) for z in logits]
        out = []
        for j in range(4):
            if j % 2 == 0:
                out.append(ce_soft(logits[j], mixes[j]).mean())
            else:
                perm, lam = mixes[j]
                out.append(fmix_loss(logits[j], labels, perm, lam))
        return out

    def _promix_step(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        """Both networks' four losses, summed (Train_promix.py:110-329), and the prior updates."""
        weak, b, epochs = batch["weak"], batch["label"].shape[0], self.ctx.epochs
        if b < self.ctx.batch_size <= self._pool_size:  # the training loader's drop_last
            return StepOutput(loss=weak.new_zeros(()), step=False)
        w_ramp = ramp(epoch, epochs, RAMP_EPOCHS)
        beta = beta_at(epoch, epochs, self.t_pl, self.opts.beta_reset)
        nets = (self.models["net1"], self.models["net2"])
        pi = self.state["pi"]
        out = [self._views(net, weak, batch["ra-promix"]) for net in nets]  # per net: zw, hw, zs, hs
        with torch.no_grad():
            w, targets, chosen, unlabeled, px = self._select(batch, [o[0] for o in out], pi, lga_active(epoch, epochs))
            counts = torch.stack([c.sum() for c in chosen]).tolist()  # the step's one host sync: mixed batch sizes
        loss = weak.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        for i, (net, (zw, hw, zs, hs)) in enumerate(zip(nets, out, strict=True)):
            k, sel, t = str(i + 1), chosen[i], targets[i]
            lab = [masked_mean(ce_soft(debias_output(z, pi[i], self.t_out), t), sel) for z in (zw, zs, hw, hs)]
            mixed = [zw.new_zeros(())] * 4
            if counts[i] >= 2:  # positions of the chosen in batch order (torch.where(w == 1)[0])
                pos = torch.argsort((~sel).to(torch.uint8), stable=True)[:counts[i]]
                mixed = self._mixed(net, weak[pos], t[pos], pi[i])
            unsel = ~sel
            unrel = (masked_mean(ce_soft(debias_output(hw, pi[2 + i], self.t_out), unlabeled[i]), unsel)
                     + w_ramp * masked_mean(ce_soft(debias_output(hs, pi[2 + i], self.t_out), unlabeled[i]), unsel))
            primary = lab[0] + w_ramp * (lab[1] + mixed[0] + mixed[1])
            pseudo = beta * unrel + lab[2] + w_ramp * (lab[3] + mixed[2] + mixed[3])
            loss = loss + primary + pseudo
            css = self.state["css" + k][batch["index"]]
            terms.update({f"loss_net{k}": primary.detach(), f"loss_ph_net{k}": pseudo.detach(),
                          f"loss_unrel_net{k}": unrel.detach(), f"loss_mix_net{k}": mixed[0].detach(),
                          f"loss_fmix_net{k}": mixed[1].detach(), f"chosen_frac_net{k}": sel.float().mean(),
                          f"mhcs_frac_net{k}": (w[i] & ~css).float().mean(),
                          f"lga_frac_net{k}": (sel & ~w[i]).float().mean()})
        with torch.no_grad():  # after the loss, as the official update before backward (:322-325)
            m = self.opts.bias_m
            self.state["pi"] = torch.stack([ema_prior(pi[0], px[0], chosen[0], m),
                                            ema_prior(pi[1], px[1], chosen[1], m),
                                            ema_prior(pi[2], px[0], ~chosen[0], m),  # pi_unrel: the unchosen
                                            ema_prior(pi[3], px[1], ~chosen[1], m)])
        return StepOutput(loss=loss, logits=out[0][0], terms=terms)
