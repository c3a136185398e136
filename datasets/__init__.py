"""Data sets, registered by name in :data:`datasets.base.DATASETS`, and the noise layer.

Each module registers its data set on import; add a data set by adding a module and its
import line below.
"""
from datasets import (  # noqa: F401
    animal10n,
    cifar,
    cifar_n,
    clothing1m,
    fashion_mnist,
    folder,
    food101n,
    synthetic,
    tiny_imagenet,
    webvision,
)
