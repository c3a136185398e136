"""Image views, registered by name: the trainer's own (``plain``, ``train``) and the shared views
methods ask for (``weak``, ``weak2``, ``strong``) here; a method's published views in the method's
own module (GJS's ``ra-cutout``, DISC's ``strong-mc``, UNICON's ``autoaug``, SOP+'s
``autoaug-cutout``, ProMix's ``ra-promix``), so that a new view is one ``register_view`` call beside
the method that publishes it, and the loaders, ``--views`` and ``bench list`` read it from here.

A view is a recipe on a uint8 batch (B, C, H, W), in this order:

1. ``before``: an op before the base augmentation (GJS's RandAugment(1, 3) before crop + flip);
2. the base augmentation: none (``base="none"``, the evaluation view), the run's ``--augment``
   (``"run"``, the ``train`` view every method's plain steps use), or, for the views methods ask
   for (``"method"``), the run's ``--augment`` under ``--views shared`` (the default: every method
   on the same augmentation) and the methods' published crop (padding 4) + flip under
   ``official``;
3. ``after``: an op after it, on the device (RandAugment, AutoAugment, grey Cutout);
4. normalisation (and the resize to the backbone's size);
5. ``normalised``: an op on the normalised batch (Cutout of the mean colour).

Ops are ``op(x, gen) -> x``, batched, drawing only from ``gen`` (per sample, no Python loop per
sample). Image files decoded by the loader's workers (``--decode cpu``) get the PIL forms
``before_pil`` (required with ``before``: the workers crop before the batch reaches the device)
and ``after_pil`` (optional: without it ``after`` runs on the device, after the workers' crop).

Registering needs no torch: ops import their kernels when called.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Op = Callable[[Any, Any], Any]  # (uint8 or float batch, torch.Generator) -> batch
BASES = ("none", "run", "method")


@dataclass(frozen=True)
class View:
    """One registered view: see the module docstring for the order of its stages."""

    name: str
    text: str  # what it is, one line, ``{base}`` standing for the base augmentation
    source: str  # the paper or official file it follows ("" for the trainer's own, plain and train)
    owner: str = "bench"  # the module that registered it ("bench": the shared views)
    base: str = "method"
    before: Op | None = None
    before_pil: Callable[[], Callable] | None = None  # makes the PIL transform of ``before``
    after: Op | None = None
    after_pil: Callable[[], Callable] | None = None  # makes the PIL transform of ``after``
    normalised: Op | None = None

    def base_augment(self, augment: str, policy: str) -> str:
        """The base augmentation under the run's ``--augment`` and view ``policy``."""
        if self.base == "none":
            return "none"
        if self.base == "run" or policy == "shared":
            return augment
        return "crop-flip"

    def describe(self, policy: str) -> str:
        """The view under a policy, in words: ``{base}`` filled in."""
        base = {"none": "no augmentation", "run": "--augment"}.get(
            self.base, "--augment" if policy == "shared" else "crop + flip")
        return self.text.format(base=base)


_VIEWS: dict[str, View] = {}


def register_view(view: View) -> View:
    """Add ``view``; a name registered by another owner is an error (the same owner registering
    it again, a module reloaded, replaces its recipe)."""
    if not view.name or not view.text or (view.base == "method" and not view.source):
        raise ValueError(f"view {view.name!r}: a name, a text and (for a view methods ask for) a source are required")
    if view.base not in BASES:
        raise ValueError(f"view {view.name!r}: base {view.base!r}; valid: {', '.join(BASES)}")
    if view.before is not None and view.before_pil is None:
        raise ValueError(f"view {view.name!r}: an op before the base augmentation needs its PIL form "
                         "(before_pil), which the loader's workers apply before their crop")
    old = _VIEWS.get(view.name)
    if old is not None and old.owner != view.owner:
        raise ValueError(f"view {view.name!r} is registered by {old.owner} already")
    _VIEWS[view.name] = view
    return view


def get_view(name: str) -> View:
    try:
        return _VIEWS[name]
    except KeyError:
        raise ValueError(f"unknown view {name!r}; valid: {', '.join(_VIEWS)} (a method's own views are "
                         "registered when its module is imported)") from None


def view_names() -> tuple[str, ...]:
    return tuple(_VIEWS)


def unregister_view(name: str) -> None:
    """Remove ``name`` (a test's temporary view)."""
    del _VIEWS[name]


# --- the trainer's own views and the shared ones methods ask for ------------------------------------
def _strong(x: Any, gen: Any) -> Any:
    from bench.common.augment import rand_augment

    return rand_augment(x, gen)  # n=2, m=10


def _strong_pil() -> Callable:
    from torchvision import transforms as T

    return T.RandAugment(num_ops=2, magnitude=10)


register_view(View("plain", "normalised only (evaluation passes)", "", base="none"))
register_view(View("train", "{base}: the run's shared augmentation, every method's plain steps", "", base="run"))
register_view(View("weak", "{base}", "DivideMix Train_cifar.py transform_train: crop (padding 4) + flip"))
register_view(View("weak2", "{base}, a second draw", "DivideMix Train_cifar.py: two augmentations"))
register_view(View("strong", "{base} + RandAugment n=2 m=10", "IDO stage_2.py, dataloader/randaugment.py "
                   "(torchvision RandAugment(2, 10) semantics)", after=_strong, after_pil=_strong_pil))
