"""The names of the noise models and what each does: vocabulary shared by the data layer (which
draws the noise, datasets/noise.py) and the methods (whose published settings differ for
class-dependent noise), neither of which may import the other."""
from __future__ import annotations

NOISE_MODELS: tuple[str, ...] = ("none", "sym", "sym-biased", "pairflip", "asym", "instance")
# Class-dependent ("asymmetric") models: methods whose published settings differ for asymmetric
# noise (DivideMix's penalty and lambda_u, ELR's beta and lambda) treat both alike; IDO's
# CIFAR-10 "asym" is pair-flip (its dataloader_cifar.py).
CLASS_DEPENDENT: tuple[str, ...] = ("asym", "pairflip")
_DESCRIPTIONS = {
    "none": "labels as the data set ships them",
    "sym": "exactly round(rN) samples get one of the other C-1 classes (Co-teaching)",
    "sym-biased": "exactly int(rN) samples get one of all C classes; realised rate r(1-1/C) (DivideMix)",
    "pairflip": "exactly round(rN) samples go from class i to (i+1) mod C (Co-teaching)",
    "asym": "exactly int(rN) samples go through the data set's semantic class map (DivideMix)",
    "instance": "part-dependent noise of Xia et al. 2020 (features: mean-centred pixels)",
}


def describe_noise(model: str) -> str:
    """One line on what noise model ``model`` does (``bench list noise``)."""
    return _DESCRIPTIONS[model]
