"""Methods, registered by name in :data:`methods.base.METHODS`.

Add a method by adding one module (see :mod:`methods.base` for the interface): every module of
this package is a method module except the shared pieces named in :data:`SHARED`, so the list of
methods cannot fall behind the files. Modules are imported on demand: a run imports its own
method only (:func:`bench.training.catalogue.method_class`, through the catalogue's map of names
to modules), so a CE run never pays for scipy or scikit-learn; :func:`load_all` registers every
method.
"""
from __future__ import annotations

import importlib
import pkgutil

# the modules that register no method: pieces several methods share (a new one is added here and
# to the ignored imports of the "No method imports another" contract in pyproject.toml)
SHARED = ("base", "cotraining", "ema", "lr", "mixmatch", "mixtures", "shared", "streams")


def method_modules() -> tuple[str, ...]:
    """The method modules, found in the package folder without importing them (a directory
    listing: cheap enough for every start)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and m.name not in SHARED))


MODULES = method_modules()


def load_all() -> None:
    """Import (and so register) every method module."""
    for name in MODULES:
        importlib.import_module(f"methods.{name}")
