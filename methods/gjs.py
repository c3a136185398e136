"""GJS, the generalized Jensen-Shannon loss (Englesson & Azizpour, "Generalized Jensen-Shannon
Divergence Loss for Learning with Noisy Labels", NeurIPS 2021; official
github.com/ErikEnglesson/GJS @1a3c9e0, ``losses.py``, ``train.py``, ``scripts/*/*.yaml``,
``datasets/transforms.py``).

One network, a drop-in loss. With d_1 = onehot(y), d_{j+1} = softmax of the network on the
j-th augmented view of the image, weights pi (pi_1 for the label, the rest split evenly over
the views) and the mixture m = sum_i pi_i d_i,

    GJS = (1 / Z) mean_batch sum_i pi_i KL(d_i || m),    Z = -(1 - pi_1) ln(1 - pi_1)

(``JensenShannonDivergenceWeightedScaled``, losses.py:133-158): log m clamped to [1e-7, 1], each
KL summed over d_i > 0 with log(clamp(d_i, 1e-7)), gradients through every view, one forward
per view (the official default, train.py:266-278). Two views make GJS (M = 3), one makes JS
(M = 2). It keeps no per-sample state and selects nothing, so it has no noise-detection metric.

Views: the official CIFAR views are two "strong" ones, RandAugment(N=1, M=3) then crop + flip,
then Cutout(16) (``augs: ss``; JS: one, ``augs: s``): ``ra-cutout`` / ``ra-cutout2``, registered
below (under ``--views shared`` built on the run's ``--augment``). WebVision's ``ww`` (two weak
views; JS ``w``) are ``weak`` / ``weak2`` here, without the official ColorJitter.

Defaults: pi_1 per variant (GJS from the ``gjs-*.yaml`` configs, JS, ``views=1``, from the
``js-*.yaml`` ones), data set, noise type and rate (nearest published rate, ties the lower; 0%
is a published rate; instance noise takes the symmetric values, it has no config; data sets
the paper does not cover take the CIFAR values of the same class count, and real label noise
of unknown rate, other than WebVision's, the 20% values). The official lr and weight decay per
setting (0.01-0.4, 5e-5-1e-3) are trainer settings here, the same for every method.
WebVision's official loss is the unscaled one (``JSWC``); the default here is the paper's scaled
loss everywhere, ``scaling=official`` gives the unscaled loss on WebVision (1/Z = 10.55 times
smaller at pi_1 = 0.1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from bench.common.augment import cutout, rand_augment
from bench.common.defaults import FromOptions, PerSetting, RunSetting, case, nearest
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from bench.common.views import View, register_view
from methods.base import METHODS, Method, StepOutput

LOG_CLAMP = 1e-7  # mean_distrib.clamp(1e-7, 1.0).log(); target.clamp(min=1e-7).log() (losses.py:45,155)

# pi_1 (the label's weight, the first of ``js_weights``) per class count (C10: scripts/C10,
# C100: scripts/C100), noise kind and rate of the official configs; WebVision: scripts/WebVision
PI_LABEL_GJS = {  # GJS (views=2, augs: ss)
    (10, "sym"): {0.0: 0.5, 0.2: 0.3, 0.4: 0.9, 0.6: 0.1, 0.8: 0.1},  # scripts/C10/sym/gjs-{0,20,40,60,80}.yaml
    (10, "asym"): {0.2: 0.3, 0.4: 0.3},  # scripts/C10/asym/gjs-{20,40}.yaml
    (100, "sym"): {0.0: 0.3, 0.2: 0.3, 0.4: 0.5, 0.6: 0.9, 0.8: 0.1},  # scripts/C100/sym/gjs-{0,20,40,60,80}.yaml
    (100, "asym"): {0.2: 0.5, 0.4: 0.1},  # scripts/C100/asym/gjs-{20,40}.yaml
    "webvision": 0.1,  # scripts/WebVision/gjs.yaml: js_weights 0.1 0.45 0.45
}
PI_LABEL_JS = {  # JS (views=1, augs: s)
    (10, "sym"): {0.0: 0.1, 0.2: 0.7, 0.4: 0.7, 0.6: 0.9, 0.8: 0.9},  # scripts/C10/sym/js-{0,20,40,60,80}.yaml
    (10, "asym"): {0.2: 0.3, 0.4: 0.3},  # scripts/C10/asym/js-{20,40}.yaml
    (100, "sym"): {0.0: 0.1, 0.2: 0.1, 0.4: 0.3, 0.6: 0.5, 0.8: 0.3},  # scripts/C100/sym/js-{0,20,40,60,80}.yaml
    (100, "asym"): {0.2: 0.5, 0.4: 0.5},  # scripts/C100/asym/js-{20,40}.yaml
    "webvision": 0.1,  # scripts/WebVision/js.yaml: js_weights 0.1 0.9
}
PI_LABEL = {2: PI_LABEL_GJS, 1: PI_LABEL_JS}  # by the number of views
REAL_NOISE_RATE = 0.2  # rate None (real noise, rate unknown): the lowest published noisy rate


# GJS's CIFAR views (datasets/transforms.py): RandAugment(N=1, M=3) inserted before crop + flip,
# CutoutDefault(16) (half the 32-px side) after normalisation. The op set is torchvision's, batched
# (bench.common.augment); the official code uses the RandAugment package, whose op list differs a little.
def _light_rand_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return rand_augment(x, gen, 1, 3)


def _light_rand_augment_pil() -> Any:
    from torchvision import transforms as T

    return T.RandAugment(1, 3)


for _name, _draw in (("ra-cutout", ""), ("ra-cutout2", ", a second draw")):
    register_view(View(_name, "RandAugment n=1 m=3, {base}, Cutout (half the side)" + _draw,
                       "GJS datasets/transforms.py: RandAugment(1, 3) before crop + flip, CutoutDefault(16)",
                       owner=__name__, before=_light_rand_augment, before_pil=_light_rand_augment_pil,
                       normalised=cutout))


def _pi_label(s: RunSetting, o: Any) -> float:
    """pi_1 of the official config of the nearest setting: the GJS configs for two views, the JS
    ones for one; real noise as the lowest published noisy rate."""
    table = PI_LABEL[o.views]
    if s.dataset == "webvision":
        return table["webvision"]
    kind = "asym" if s.noise in CLASS_DEPENDENT else "sym"
    rate = REAL_NOISE_RATE if s.noise_rate is None else s.noise_rate
    return nearest(rate, table[(10 if s.num_classes <= 10 else 100, kind)])


PI_LABEL_DEFAULT = PerSetting(case(FromOptions(_pi_label, "pi_1 of the official config of the nearest setting, GJS's "
                                               "for views=2, JS's for views=1 (real noise: the 20% values)"),
                                   "scripts/C10, scripts/C100, scripts/WebVision *.yaml js_weights"))


@dataclass
class GJSOptions:
    pi_label: float | None = field(default=None, metadata={
        "help": "weight pi_1 of the label in the mixture; default per variant (GJS, JS), data set, noise and rate",
        "source": "scripts/C10, C100, WebVision gjs-*.yaml / js-*.yaml (js_weights)", "setting": PI_LABEL_DEFAULT})
    views: int = field(default=2, metadata={
        "help": "augmented views besides the label: 2 = GJS (M = 3), 1 = JS (M = 2)",
        "source": "paper Sec. 3; configs augs: ss (gjs-*.yaml) / s (js-*.yaml)"})
    scaling: Literal["paper", "official"] = field(default="paper", metadata={
        "help": "paper: the loss scaled by 1/Z everywhere; official: unscaled on WebVision (JSWC)",
        "source": "losses.py:133-158; scripts/WebVision"})

    def __post_init__(self) -> None:
        if self.pi_label is not None and not 0 < self.pi_label < 1:
            raise ValueError(f"pi_label {self.pi_label} must lie in (0, 1)")
        if self.views not in (1, 2):
            raise ValueError(f"views {self.views} must be 1 (JS) or 2 (GJS)")


def gjs_loss(logits: list[torch.Tensor], labels: torch.Tensor, pi_label: float, scaled: bool = True) -> torch.Tensor:
    """The (scaled) generalized JS divergence between the one-hot labels and the views' predictions."""
    pis = [pi_label] + [(1 - pi_label) / len(logits)] * len(logits)
    dists = [F.one_hot(labels, logits[0].shape[1]).to(logits[0].dtype)] + [F.softmax(z, dim=1) for z in logits]
    log_m = sum(w * d for w, d in zip(pis, dists, strict=True)).clamp(LOG_CLAMP, 1.0).log()
    total = logits[0].new_zeros(())
    for w, d in zip(pis, dists, strict=True):
        kl = torch.where(d > 0, d * (d.clamp(min=LOG_CLAMP).log() - log_m), torch.zeros_like(d))
        total = total + w * kl.sum(dim=1).mean()
    return total / (-(1 - pi_label) * math.log(1 - pi_label)) if scaled else total


@METHODS.register("gjs")
class GJS(Method):
    """GJS (NeurIPS 2021): the Jensen-Shannon divergence of the label and the predictions on two views."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = ("Englesson & Azizpour, "
             "Generalized Jensen-Shannon Divergence Loss for Learning with Noisy Labels, NeurIPS 2021")
    code = "github.com/ErikEnglesson/GJS"
    Options = GJSOptions
    # the CIFAR views, and WebVision's (the official WebVision loader has no RandAugment or Cutout)
    view_sets = {"cifar": ("ra-cutout", "ra-cutout2"), "webvision": ("weak", "weak2")}
    official_options = {
        # ErikEnglesson/GJS @1a3c9e0 losses.py:133-158 (the scaled loss) against the unscaled JSWC of the
        # WebVision configs (scripts/WebVision/*.yaml); on other data sets both are the scaled loss
        "scaling": "official",
    }

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """pi_1 over (0, 1): the official configs use 0.1 to 0.9."""
        return {"pi_label": Param("float", 0.1, 0.9, grid=(0.1, 0.3, 0.5, 0.7, 0.9),
                                  source="scripts/*.yaml js_weights 0.1-0.9")}

    def setup(self) -> None:
        ctx, o = self.ctx, self.opts
        self.pi_label = o.pi_label  # filled per setting and --set views (Method.__init__)
        self.scaled = not (o.scaling == "official" and ctx.dataset == "webvision")
        self.train_views = self.view_sets["webvision" if ctx.dataset == "webvision" else "cifar"][:o.views]
        self.add_network("net", schedule_epochs=ctx.epochs)

    def views(self, epoch: int) -> tuple[str, ...]:
        return self.train_views

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Any) -> StepOutput:
        net = self.models["net"]
        logits = [net(batch[v]) for v in self.train_views]  # one forward per view (official default)
        loss = gjs_loss([z.float() for z in logits], batch["label"], self.pi_label, self.scaled)
        return StepOutput(loss=loss, logits=logits[0])
