"""Run health: a run that diverges (a non-finite loss or non-finite logits) stops and says so; a
run whose predictions collapse into one class is tagged.

- Divergence (``--on-nonfinite stop``, the default): every training step's loss is checked on
  the device, without a host sync (:class:`NonFiniteWatch`: a flag and the first bad step's
  number, read once per epoch with the epoch's sums). An epoch with a non-finite loss ends the
  run before its checkpoint: the last good epoch's checkpoint stands, the run's status is
  ``diverged`` (summary JSON; MLflow: FAILED with the tag ``health=diverged`` and where), and
  ``bench run`` exits with 3. A method that raises on the NaNs before the epoch ends (a mixture
  fit, a sampler) is diverged too, not a crash, once the watch has seen a non-finite loss.
  Non-finite logits in evaluation are the same. ``--on-nonfinite skip-step`` checks each loss
  on the host instead (one sync per step, as AMP's loss scaler does) and skips that step's
  backward and optimiser step, counting them (``skipped_steps`` per epoch).
- Collapse: each evaluation logs ``pred_top_share`` (the share of test predictions in the most
  predicted class) and ``pred_entropy`` (the entropy of the predicted-class histogram, in nats;
  ``ln C`` when uniform). A run is collapsed when ``pred_top_share`` reaches
  :func:`collapse_share` in two evaluations in a row; it is tagged ``health=collapsed`` (with
  the epoch) and goes on, and at its end the tag says whether it recovered
  (``health=collapsed-recovered``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tags are read by tables and sweeps, which need no torch (seconds to import)
    import torch

TAG_HEALTH = "health"  # diverged | collapsed | collapsed-recovered (absent: healthy)
TAG_DETAIL = "health.detail"
DIVERGED, COLLAPSED, RECOVERED = "diverged", "collapsed", "collapsed-recovered"
STREAK = 2  # evaluations in a row at or over the share


class Diverged(Exception):
    """A non-finite loss (``where='training loss'``) or non-finite logits (``'evaluation'``) in
    ``epoch`` (from 1), at ``step`` of the epoch (from 1; None for evaluation)."""

    def __init__(self, method: str, epoch: int, step: int | None, where: str) -> None:
        self.method, self.epoch, self.step, self.where = method, epoch, step, where
        at = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        super().__init__(f"{method}: non-finite {where} at {at}")


class NonFiniteWatch:
    """The first training step of an epoch whose loss is not finite, kept on the device: three
    small kernels a step and no host sync (the trainer reads it once, at the epoch's end)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        import torch

        self.count = torch.zeros((), dtype=torch.long, device=self.device)
        self.first = torch.full((), -1, dtype=torch.long, device=self.device)

    def update(self, loss: torch.Tensor) -> None:
        self.count += 1
        bad = ~loss.detach().isfinite().all()
        self.first = self.count.where(bad & (self.first < 0), self.first)

    def first_bad(self) -> int | None:
        """The step (from 1) of the epoch's first non-finite loss, or None (a host sync)."""
        k = int(self.first.item())
        return k if k > 0 else None


def collapse_share(test_labels: torch.Tensor, num_classes: int) -> float:
    """The share of test predictions in one class that counts as collapse: halfway between the
    test set's own largest class share (what a perfect model predicts most) and 1 (every image
    in one class). Balanced 10 classes: 0.55; 100 classes: 0.505; 2 balanced classes: 0.75. A
    model at or above it gives one class more than half of what all the others should get."""
    counts = test_labels.long().flatten().cpu().bincount(minlength=num_classes).float()
    p_max = float(counts.max() / counts.sum().clamp(min=1))
    return p_max + (1.0 - p_max) / 2


def prediction_stats(pred: torch.Tensor, num_classes: int) -> tuple[float, float, int]:
    """(share of the most predicted class, entropy of the predicted-class histogram in nats, that class)."""
    counts = pred.long().flatten().cpu().bincount(minlength=num_classes).float()
    p = counts / counts.sum().clamp(min=1)
    nz = p[p > 0]
    return float(p.max()), float(-(nz * nz.log()).sum()), int(p.argmax())


@dataclass
class CollapseState:
    """Kept in the checkpoint (a resumed run continues its streak)."""

    streak: int = 0  # evaluations in a row at or over the share
    collapsed_epoch: int | None = None  # the first epoch of the first collapse (from 1)
    collapsed_now: bool = False

    def update(self, epoch: int, share: float, threshold: float) -> bool:
        """After evaluation ``epoch`` (from 1): True when the run has just collapsed."""
        self.streak = self.streak + 1 if share >= threshold else 0
        newly = self.streak >= STREAK and not self.collapsed_now
        self.collapsed_now = self.streak >= STREAK  # until an evaluation under the share: recovered
        if newly and self.collapsed_epoch is None:
            self.collapsed_epoch = epoch - STREAK + 1
        return newly

    def tag(self) -> str | None:
        if self.collapsed_epoch is None:
            return None
        return COLLAPSED if self.collapsed_now else RECOVERED
