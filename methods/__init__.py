"""Methods, registered by name in :data:`methods.base.METHODS`.

Add a method by adding one module (see :mod:`methods.base` for the interface) and its name to
:data:`MODULES`. Modules are imported on demand: a run imports its own method only
(:func:`bench.training.catalogue.method_class`), so a CE run never pays for scipy or scikit-learn;
:func:`load_all` registers every method.
"""
from __future__ import annotations

import importlib

MODULES = ("ce", "coteaching", "dividemix", "elr", "disc", "gce", "gjs", "mcorrection", "plc", "turn", "unicon",
           "wrongevent", "sce", "gls", "bootstrap", "mixup", "losscorrection",
           "trevision", "peer", "cores", "coteachingplus", "jocor", "elrplus", "sop", "promix", "pes")


def load_all() -> None:
    """Import (and so register) every method module."""
    for name in MODULES:
        importlib.import_module(f"methods.{name}")
