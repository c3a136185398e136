"""Data sets, registered by name in :data:`datasets.base.DATASETS`, and the noise layer.

Each module registers its data set on import; add a data set by adding a module and its
import line below.
"""
from datasets import fashion_mnist  # noqa: F401
