"""IDO, the wrong-event two-stage method (Zhang et al., "Handling Label Noise via Instance-Level
Difficulty Modeling and Dynamic Optimization", NeurIPS 2025, arXiv 2505.00812; official code
github.com/iTheresaApocalypse/IDO: ``stage_1.py``, ``stage_2.py``, ``stage_2_class.py``,
``utils/bmm.py``, ``utils/lnl_methods.py`` ``WELoss``).

Stage 1 (epochs [0, E1)): cross-entropy on the given labels; every training step adds one
"wrong event" to each sample whose training-mode prediction differs from its given label; the
base model is chosen by the label wave (the model at the end of the epoch before the first
epoch whose prediction change stops falling).

Stage 2 (epochs [E1, E)): from the base model with a fresh optimiser and a cosine schedule,
two views per sample (weak: crop + flip; strong: crop + flip + RandAugment n=2, m=10), wrong
events keep counting (+1 per view), a two-component mixture on the normalised wrong events
gives per sample p_c, p_n (posteriors) and F_c, F_n (component CDFs), and the loss is

    L_C   = mean p_c (CE(w, y) + CE(s, y))
    L_SIM = mean (p_c F_c + (1 - p_n)(1 - F_n)) * mean_k (w_k - s_k)^2
    L_N   = mean (1 - p_c) conf H(pbar),  pbar = (softmax(w) + softmax(s)) / 2 clamped

Deviations from the official code, each with the official behaviour as an option:
- the base model's weights are copied (``base_weights=previous``); the official code keeps a
  reference to the live state dict, so its "previous" model is the current one
  (``base_weights=official``);
- L_N is per sample (``entropy=per_sample``, the paper's formula); the official code
  broadcasts (B, 1) x (B,) to (B, B), which makes it mean(conf) * mean((1 - p_c) H)
  (``entropy=official``).
- the Beta-mixture posteriors are exact (log space, ``posterior=exact``); the official
  ``utils/bmm.py`` guards every step with 1e-6 (E-step floor and denominator, moments,
  look-up denominator) and looks a count past the last fit's maximum up outside (0, 1), where
  both densities are 0: p_c = p_n = 0 and F_c = F_n = 1 (``posterior=official``, exact to it).
  The exact form clips such a count to the fitted maximum.

As the official step (``stage_2.py:69-79``, ``stage_2_class.py:69-91``), a step first adds its
wrong events (0-2 a sample), then looks p_c, p_n, F_c, F_n up at each sample's *new* count, in
the mixture of the last fit (its given class's, class-wise). The look-up is a table over
(given class, count), made at the start of each stage-2 epoch up to the count past which the
weights no longer change, so the step reads it on the device. The
loss-based ablation scores (``metric=loss``, ``accumulated_loss``) are real numbers with no such
table: their weights are those of each sample's score at the start of the epoch (the ablation's
code is not published).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, RunSetting, case
from bench.common.errors import UsageError
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.mixtures import IDO_GUARDS, BetaMixture, ClasswiseMixture, GaussianMixture2, Normaliser

# EM iterations: 20 before stage 2; then 1 per epoch for the global mixture (stage_2.py),
# 2 per epoch for the class-wise one (stage_2_class.py).
FIT_ITERS_START = 20
FIT_ITERS_EPOCH = {"global": 1, "classwise": 2}
ETA_MIN = 1e-4  # stage-2 cosine floor (official stage_2.py)
PROB_CLAMP = 1e-4  # softmax clamp in WELoss
WEIGHTS = ("p_c", "p_n", "f_c", "f_n")  # BetaMixtureModel.predict's prob1, prob2, cdf1, cdf2


def _stage1_share(s: RunSetting) -> int:
    """1/3 of --epochs with a pretrained backbone, 30% from scratch, rounded half up, in [1, epochs - 1]."""
    share = 1 / 3 if s.pretrained else 0.3  # 5 of 15 (paper); 30 of 100 (author response)
    e1 = int(share * s.epochs + 0.5)  # half up: 15 epochs from scratch -> 5 + 10
    return max(1, min(max(e1, 1), s.epochs - 1))  # --epochs 1: 1, refused at setup


STAGE1_EPOCHS = PerSetting(case(_stage1_share, "paper Sec. 4 (5 + 10 epochs, pretrained); author response "
                                "(30 of 100, scratch)"))


@dataclass
class WrongEventOptions:
    stage1_epochs: int | None = field(default=None, metadata={
        "help": "stage-1 epochs; default 1/3 of --epochs with a pretrained backbone, 30% from scratch",
        "source": "paper Sec. 4 (5 + 10 epochs, pretrained); author response (30 of 100, scratch)",
        "setting": STAGE1_EPOCHS})
    metric: Literal["wrong_event", "loss", "accumulated_loss"] = field(default="wrong_event", metadata={
        "help": "per-sample noise score the mixture models", "source": "author response, ablation Table 2"})
    mixture: Literal["bmm", "gmm"] = field(default="bmm", metadata={
        "help": "Beta or Gaussian mixture", "source": "paper Sec. 3.2; author response Table 2"})
    bmm_scope: Literal["global", "classwise"] = field(default="classwise", metadata={
        "help": "one mixture, or one per given class",
        "source": "stage_2_class.py; author response Table 5 = Table 2 rows, i.e. the class-wise BMM"})
    start: Literal["base", "initial"] = field(default="base", metadata={
        "help": "stage 2 starts from the label-wave base model or the initial weights",
        "source": "author response Table 3"})
    sim_weight: Literal["dynamic", "0", "1"] = field(default="dynamic", metadata={
        "help": "weight of L_SIM: p_c F_c + (1 - p_n)(1 - F_n), or a constant",
        "source": "paper Eq. for eps(w); author response Table 4"})
    entropy: Literal["per_sample", "official"] = field(default="per_sample", metadata={
        "help": "L_N per sample (paper) or the official code's (B, B) broadcast",
        "source": "utils/lnl_methods.py WELoss"})
    posterior: Literal["exact", "official"] = field(default="exact", metadata={
        "help": "BMM in exact arithmetic, or with the official utils/bmm.py's 1e-6 guards (E-step floor "
                "and denominator, moments, look-up denominator; a count past the fit's maximum gets "
                "p_c = p_n = 0, F = 1)",
        "source": "utils/bmm.py:12, 32-51, 67-75"})
    base_weights: Literal["previous", "official"] = field(default="previous", metadata={
        "help": "copy the weights of epoch e-1 (paper) or keep the official code's live reference (epoch e)",
        "source": "stage_1.py (its saved state_dict is a live reference)"})

    def __post_init__(self) -> None:
        if self.stage1_epochs is not None and self.stage1_epochs < 1:
            raise ValueError(f"stage1_epochs {self.stage1_epochs} must be at least 1")


def wrong_event_loss(w: torch.Tensor, s: torch.Tensor, y: torch.Tensor, p_c: torch.Tensor, p_n: torch.Tensor,
                     f_c: torch.Tensor, f_n: torch.Tensor, sim_weight: str = "dynamic",
                     entropy: str = "per_sample") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stage-2 loss L_C + L_SIM + L_N for weak logits ``w``, strong logits ``s``."""
    l_c = (p_c * (F.cross_entropy(w, y, reduction="none") + F.cross_entropy(s, y, reduction="none"))).mean()
    if sim_weight == "dynamic":
        eps_w = p_c * f_c + (1 - p_n) * (1 - f_n)
    else:
        eps_w = torch.full_like(p_c, float(sim_weight))
    l_sim = (eps_w * (s - w).pow(2).mean(dim=1)).mean()
    pw = F.softmax(w, dim=1).clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    ps = F.softmax(s, dim=1).clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    pbar = (pw + ps) / 2
    conf = pbar.max(dim=1).values
    ent = -(pbar * pbar.log()).sum(dim=1)
    if entropy == "per_sample":
        l_n = ((1 - p_c) * conf * ent).mean()
    else:  # official: conf (B, 1) * ent (B,) -> (B, B); times (1 - p_c) (B,) broadcast on the last axis
        l_n = ((1 - p_c)[None, :] * (conf[:, None] * ent[None, :])).mean()
    total = l_c + l_sim + l_n
    return total, {"loss_c": l_c.detach(), "loss_sim": l_sim.detach(), "loss_n": l_n.detach()}


def label_wave_base(changes: list[float]) -> int | None:
    """1-based epoch of the base model from prediction changes, or None while still falling.

    ``changes[i]`` is the prediction change of epoch i + 2 (epoch 1 has no predecessor). At
    the first epoch e with change(e) >= change(e - 1), the model of epoch e - 1 is the base.
    """
    for i in range(1, len(changes)):
        if changes[i] >= changes[i - 1]:
            return i + 1  # changes[i] is epoch i + 2, so the base is epoch i + 1
    return None


@METHODS.register("wrongevent", aliases=("ido",))
class WrongEvent(Method):
    """IDO (NeurIPS 2025): wrong-event counts, label-wave base model, BMM-weighted 3-term loss."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = ("Zhang et al., "
             "Handling Label Noise via Instance-Level Difficulty Modeling and Dynamic Optimization (IDO), NeurIPS 2025")
    code = "github.com/iTheresaApocalypse/IDO"
    score_artifacts = {"wrong_events.npy": "wrong events at the end of training (count)"}
    smoke_options = {"stage1_epochs": "1"}  # stage 1, then stage 2
    official_options = {
        # iTheresaApocalypse/IDO @20feb7c utils/lnl_methods.py:82-90 (WELoss: conf.unsqueeze(1) makes the
        # entropy term a (B, B) broadcast before its mean)
        "entropy": "official",
        "posterior": "official",  # utils/bmm.py:12, 32-51, 67-75 (BetaMixtureModel's 1e-6 guards)
        # stage_1.py:101, 104, 116 (prev_model = model.state_dict(): a live reference, no copy)
        "base_weights": "official",
    }
    perf_figures = ("methods", "strong")  # `bench perf`: the suites, and the strong view's share of a step
    perf_step_epoch = 1  # that step: stage 2's (epoch 1 under smoke_options)
    # stage 1 on the shared view; stage 2 weak and strong (stage_2.py, dataloader/randaugment.py)
    view_sets = {"stage1": ("train",), "stage2": ("weak", "strong")}
    Options = WrongEventOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """IDO has no method hyperparameter (paper Sec. 1, 3): its one knob is the training
        protocol's split of the epochs into stage 1 and stage 2 (default 30% from scratch, 1/3
        pretrained). Its other options select ablation variants (metric, mixture, ...), which
        are comparisons, not tuning; the run's lr, weight decay and batch size are studied
        with --params like any method's."""
        if setting.epochs < 2:
            return {}
        e = setting.epochs
        return {"stage1_epochs": Param("int", 1, e - 1, grid=tuple(sorted({1, max(1, round(0.3 * e)), e // 2, e - 1})),
                                       source="paper Sec. 4 (5 of 15), author response (30 of 100)")}

    # --- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        ctx, n = self.ctx, self.ctx.num_train
        self.e1 = self._stage1_epochs()
        self.add_network("net", schedule_epochs=self.e1)  # stage 1's schedule; stage 2 gets its own
        dev = ctx.device
        self.state.update(
            wrong_events=torch.zeros(n, dtype=torch.int32, device=dev),
            pred_prev=torch.full((n,), -1, dtype=torch.int64, device=dev),
            pred_cur=torch.full((n,), -1, dtype=torch.int64, device=dev),
            loss_last=torch.zeros(n, device=dev),
            loss_accum=torch.zeros(n, device=dev),
            # samples trained on so far: with sampled epochs (Clothing1M) many are not yet
            seen=torch.zeros(n, dtype=torch.bool, device=dev),
        )
        self.stage = 1
        self.changes: list[float] = []
        self.base_epoch: int | None = None
        self.candidate = self._snapshot()  # weights at the end of the previous epoch (initial: before epoch 1)
        self.base: dict[str, torch.Tensor] | None = None
        self.initial = self._snapshot() if self.opts.start == "initial" else None
        self.mixture: Any = None
        self.stage_time = {1: 0.0, 2: 0.0}
        self._weights: dict[str, torch.Tensor] = {}
        self._t0 = 0.0

    def _stage1_epochs(self) -> int:
        total = self.ctx.epochs
        if total < 2:
            raise UsageError("wrongevent needs --epochs of at least 2 (stage 1 and stage 2)")
        e1 = self.opts.stage1_epochs  # the per-setting default filled in by Method.__init__
        if e1 >= total:
            raise UsageError(f"--set stage1_epochs={e1} leaves no stage-2 epoch of --epochs {total}")
        return e1

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.models["net"].state_dict())

    def _new_mixture(self) -> Any:
        if self.opts.mixture == "gmm":
            make: Any = GaussianMixture2
        else:
            make = self._new_bmm
        if self.opts.bmm_scope == "global":
            return make()
        labels = self.ctx.given_labels.cpu().numpy()
        return ClasswiseMixture(labels, self.ctx.num_classes, make)

    def _new_bmm(self) -> BetaMixture:
        """IDO's BMM: scores squeezed affinely into [eps, 1 - eps] (``bmm.py:29, 69``); exact, or
        with the official guards and no clip of a count past the fitted maximum."""
        official = self.opts.posterior == "official"
        return BetaMixture(guards=IDO_GUARDS if official else None, norm=Normaliser(affine=True, clip=not official))

    # --- per-epoch hooks ------------------------------------------------------------------
    def views(self, epoch: int) -> tuple[str, ...]:
        return self.view_sets["stage1" if epoch < self.e1 else "stage2"]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self._t0 = time.perf_counter()
        if epoch < self.e1:
            return {"stage": 1.0}
        metrics: dict[str, float] = {"stage": 2.0}
        if self.stage == 1:
            metrics.update(self._enter_stage2())
        self._weights = self._sample_weights()
        return metrics

    def _enter_stage2(self) -> dict[str, float]:
        """Base (or initial) weights, fresh optimiser and cosine schedule, first mixture fit."""
        self.stage = 2
        start = self.base if self.opts.start == "base" else self.initial
        self.models["net"].load_state_dict(start)
        self._stage2_optim()
        t = time.perf_counter()
        self.mixture = self._new_mixture()
        self._fit(FIT_ITERS_START)
        return {"mixture_fit_s": time.perf_counter() - t}

    def _fit(self, iterations: int) -> None:
        """Fit the mixture on the samples trained on so far: with sampled epochs the others have
        no wrong events yet and would pile up as a spurious clean mode at 0."""
        scores, seen = self._scores(), self.state["seen"].cpu().numpy()
        mask = None if seen.all() else seen
        if isinstance(self.mixture, ClasswiseMixture):
            self.mixture.fit(scores, iterations, mask=mask)
        else:
            self.mixture.fit(scores if mask is None else scores[mask], iterations)

    def _stage2_optim(self) -> None:
        opt = self.ctx.make_optimizer(self.models["net"].parameters())
        self.optimizers["net"] = opt
        lr = opt.param_groups[0]["lr"]
        self.schedulers["net"] = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self.ctx.epochs - self.e1, eta_min=min(ETA_MIN, lr))

    def _scores(self) -> np.ndarray:
        key = {"wrong_event": "wrong_events", "loss": "loss_last", "accumulated_loss": "loss_accum"}
        return self.state[key[self.opts.metric]].double().cpu().numpy()

    def _sample_weights(self) -> dict[str, torch.Tensor]:
        """The epoch's look-up of p_c, p_n, F_c, F_n, on the device. Wrong events: a table with a
        row per given class and a column per count 0 .. the last fit's maximum + 2, read at the
        step with the sample's new count. Past the fitted range the weights stop changing (a
        count is clipped to the maximum, or, official, maps beyond 1 where the densities are 0:
        from the maximum + 1 on, + 2 for a range of one value), so a higher count reads the last
        column exactly. Loss scores: each sample's weights at its score now, by dataset index."""
        dev = self.ctx.device
        if self.opts.metric != "wrong_event":
            scores = self._scores()
            values = (*self.mixture.posterior(scores), *self.mixture.cdf(scores))
        else:
            mix = self.mixture
            parts = ([mix.part_for(c) for c in range(self.ctx.num_classes)] if isinstance(mix, ClasswiseMixture)
                     else [mix] * self.ctx.num_classes)
            top = int(np.ceil(max(part.norm.hi for part in parts))) + 2
            counts = np.arange(top + 1, dtype=np.float64)
            once = {id(part): (*part.posterior(counts), *part.cdf(counts)) for part in parts}  # a shared part once
            rows = [once[id(part)] for part in parts]
            values = tuple(np.stack([r[i] for r in rows]) for i in range(len(WEIGHTS)))
        return {k: torch.as_tensor(v, dtype=torch.float32, device=dev) for k, v in zip(WEIGHTS, values, strict=True)}

    def _weights_at(self, idx: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """p_c, p_n, F_c, F_n of the batch's samples: by (given class, count now) from the table,
        or by dataset index for the loss scores."""
        if self.opts.metric != "wrong_event":
            return {k: v[idx] for k, v in self._weights.items()}
        top = next(iter(self._weights.values())).shape[1] - 1
        counts = self.state["wrong_events"][idx].long().clamp_max(top)  # constant past the fitted range
        return {k: v[y, counts] for k, v in self._weights.items()}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        metrics = self._end_stage1(epoch) if epoch < self.e1 else self._end_stage2_epoch()
        self.stage_time[1 if epoch < self.e1 else 2] += time.perf_counter() - self._t0
        if epoch == self.e1 - 1:
            metrics["stage1_time_s"] = self.stage_time[1]
        if epoch == self.ctx.epochs - 1:
            metrics["stage2_time_s"] = self.stage_time[2]
            self._write_artifacts()
        return metrics

    def _end_stage1(self, epoch: int) -> dict[str, float]:
        st = self.state
        metrics: dict[str, float] = {}
        both = (st["pred_cur"] >= 0) & (st["pred_prev"] >= 0)  # predicted in this and the last epoch
        if epoch > 0 and bool(both.any()):
            changed = float((st["pred_cur"][both] != st["pred_prev"][both]).sum())
            # with sampled epochs, scaled to the whole set (a count of all N otherwise)
            self.changes.append(changed * len(both) / float(both.sum()))
            metrics["prediction_change"] = self.changes[-1]
        st["pred_prev"].copy_(st["pred_cur"])
        st["pred_cur"].fill_(-1)
        if self.base is None:
            found = label_wave_base(self.changes)
            if found is not None:
                self.base_epoch = found
                # paper: the weights of epoch e-1 (copied); official: the live, current ones
                self.base = self.candidate if self.opts.base_weights == "previous" else self._snapshot()
            elif epoch == self.e1 - 1:  # still falling at the end of stage 1: the last model
                self.base_epoch, self.base = epoch + 1, self._snapshot()
        self.candidate = self._snapshot() if self.base is None else None
        if epoch == self.e1 - 1:
            metrics["base_epoch"] = float(self.base_epoch)
        return metrics

    def _end_stage2_epoch(self) -> dict[str, float]:
        t = time.perf_counter()
        self._fit(FIT_ITERS_EPOCH[self.opts.bmm_scope])
        metrics = {"mixture_fit_s": time.perf_counter() - t}
        metrics.update({f"mix_{k}": float(v) for k, v in self.mixture.params().items()})
        return metrics

    # --- diagnostics ------------------------------------------------------------------------
    def detections(self, epoch: int) -> list[Detection]:
        """Stage 1: minus the score (no mixture yet), and after the last stage-1 epoch detection
        by wrong events, the last loss and the accumulated loss side by side; stage 2: the
        mixture's p_c, with p_c > 0.5 as the clean set."""
        scores = torch.as_tensor(self._scores())
        if epoch >= self.e1:
            p_c = torch.as_tensor(self.mixture.posterior(scores.numpy())[0])
            return [Detection(p_c, selected=p_c > 0.5)]
        out = [Detection(-scores)]
        if epoch == self.e1 - 1:
            st = self.state
            out += [Detection(-st[key].double(), auc=f"stage1_auc_{name}")
                    for key, name in (("wrong_events", "wrong_event"), ("loss_last", "loss"),
                                      ("loss_accum", "accumulated_loss"))]
        return out

    def _write_artifacts(self) -> None:
        from bench.common.plotting import prediction_change_curve, score_histogram

        out = self.ctx.artifact_dir
        we = self.state["wrong_events"].cpu().numpy()
        np.save(out / "wrong_events.npy", we)
        mix = self.mixture if self.opts.metric == "wrong_event" else None  # fitted on another score otherwise
        # all samples, as the method sees them (`bench plot --kind scores` splits them by the truth)
        score_histogram(we, None, out / "wrong_events_hist.png", xlabel="wrong events", mixture=mix,
                        title=f"wrong events after {self.ctx.epochs} epochs")
        prediction_change_curve(self.changes, self.base_epoch, out / "prediction_change.png")

    # --- the step --------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        if epoch < self.e1:
            return self._stage1_step(batch)
        return self._stage2_step(batch)

    def _record(self, idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
        pred = logits.detach().argmax(dim=1)
        self.state["seen"][idx] = True
        self.state["wrong_events"].index_add_(0, idx, (pred != y).int())
        self.state["loss_accum"].index_add_(0, idx, ce.detach().float())
        return pred

    def _stage1_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        idx, y = batch["index"], batch["label"]
        logits = self.models["net"](batch["train"])
        ce = F.cross_entropy(logits, y, reduction="none")
        self.state["pred_cur"][idx] = self._record(idx, logits, y, ce)
        self.state["loss_last"][idx] = ce.detach().float()
        return StepOutput(loss=ce.mean(), logits=logits)

    def _stage2_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        idx, y = batch["index"], batch["label"]
        net = self.models["net"]
        w, s = net(batch["weak"]), net(batch["strong"])  # two forwards, as the official code
        # this step's wrong events first, then the weights at the new counts (stage_2.py:69-76)
        ce_w = F.cross_entropy(w.detach(), y, reduction="none")
        self._record(idx, w, y, ce_w)
        self._record(idx, s, y, F.cross_entropy(s.detach(), y, reduction="none"))
        self.state["loss_last"][idx] = ce_w.float()
        wt = self._weights_at(idx, y)
        loss, terms = wrong_event_loss(w.float(), s.float(), y, wt["p_c"], wt["p_n"], wt["f_c"], wt["f_n"],
                                       self.opts.sim_weight, self.opts.entropy)
        return StepOutput(loss=loss, logits=w, terms=terms)

    # --- checkpoint ----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"stage": self.stage, "changes": list(self.changes), "base_epoch": self.base_epoch,
                "candidate": self.candidate, "base": self.base, "initial": self.initial,
                "mixture": None if self.mixture is None else self.mixture.state_dict(),
                "stage_time": dict(self.stage_time)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["extra"]["stage"] == 2:
            self._stage2_optim()  # the checkpoint holds the stage-2 optimiser and schedule
        super().load_state_dict(sd)

    def load_extra_state(self, s: dict[str, Any]) -> None:
        self.stage, self.changes, self.base_epoch = s["stage"], list(s["changes"]), s["base_epoch"]
        self.candidate, self.base, self.initial = s["candidate"], s["base"], s["initial"]
        self.stage_time = dict(s["stage_time"])
        if s["mixture"] is not None:
            self.mixture = self._new_mixture()
            self.mixture.load_state_dict(s["mixture"])
