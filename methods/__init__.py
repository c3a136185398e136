"""Methods, registered by name in :data:`methods.base.METHODS`.

Add a method by adding one module (see :mod:`methods.base` for the interface) and its
import line below.
"""
from methods import ce, coteaching, dividemix, elr, wrongevent  # noqa: F401
