"""A small name -> factory registry, in the manner of timm's ``register_model``.

Methods, data sets and backbones each get one :class:`Registry`. Entries register
themselves with a decorator when their module is imported; the packages ``methods`` and
``datasets`` import their modules explicitly (no import is ever swallowed), so a missing
dependency fails loudly instead of silently hiding an entry.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists close matches and every valid name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to registered objects (factories or classes)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (default: its ``name`` attribute or ``__name__``).

        A registered class gets ``name`` as its ``name`` attribute, so the name is written once, in
        the decorator; a class that spells its own ``name`` must spell the same one, and a subclass
        registered under another name does not inherit its parent's."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            for k in (key, *aliases):
                if k in self._entries or k in self._aliases:
                    raise ValueError(f"{self.kind} {k!r} is registered twice")
            if isinstance(obj, type):
                own = vars(obj).get("name")
                if own is not None and own != key:
                    raise ValueError(f"{self.kind} {key!r}: the class says name = {own!r}; "
                                     f"drop the attribute, the registered name is set on it")
                obj.name = key  # type: ignore[attr-defined]
            self._entries[key] = obj
            for alias in aliases:
                self._aliases[alias] = key
            return obj

        return deco

    def remove(self, name: str) -> None:
        """Unregister ``name`` and its aliases (a test's or a plugin's temporary entry)."""
        key = self.canonical(name)
        del self._entries[key]
        for alias in self.aliases_of(key):
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` (resolving aliases); raises :class:`UnknownNameError`."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        close = difflib.get_close_matches(name, list(self._entries) + list(self._aliases), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, k in self._aliases.items() if k == name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def describe(obj: object) -> str:
    """First line of an entry's docstring: its one-line description in ``bench list``."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
