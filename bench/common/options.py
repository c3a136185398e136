"""Typed, validated, documented options for methods and data sets (``--set KEY=VALUE``).

An owner class (a :class:`methods.base.Method` or a :class:`datasets.base.Dataset`) declares
``Options``, a dataclass whose fields carry ``metadata={"help": ..., "source": ...}``. The
strings of ``--set`` become typed values here, each checked, with one-line errors.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

from bench.common.errors import UsageError


def coerce(key: str, raw: str, tp: Any) -> Any:
    """Turn the string ``raw`` into type ``tp`` or raise a one-line :class:`UsageError`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if str(c) == raw:
                return c
        raise UsageError(f"--set {key}={raw}: valid values are {', '.join(map(str, choices))}")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        return coerce(key, raw, args[0])
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--set {key}={raw}: expected a boolean (true or false)")
    try:
        value = tp(raw)
    except (TypeError, ValueError):
        raise UsageError(f"--set {key}={raw}: expected {getattr(tp, '__name__', tp)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"--set {key}={raw}: expected a finite number")
    return value


def option_names(owner: type) -> set[str]:
    return {f.name for f in dataclasses.fields(owner.Options)}


def typed_values(owner: str, hints: dict[str, Any], raw: dict[str, str], kind: str = "method") -> dict[str, Any]:
    """``--set`` strings as typed values by the option types ``hints`` ({name: type}) of the
    ``kind`` named ``owner``: an unknown key or a value of the wrong type fails in one line.
    (What the owner's ``__post_init__`` checks beyond the type is not checked here.)"""
    for key in raw:
        if key not in hints:
            valid = ", ".join(sorted(hints)) or f"(none: this {kind} has no options)"
            raise UsageError(f"--set {key}: {kind} {owner!r} has no option {key!r}; valid: {valid}")
    return {k: coerce(k, v, hints[k]) for k, v in raw.items()}


def build_options(owner: type, raw: dict[str, str], kind: str = "method") -> Any:
    """``owner.Options`` from ``--set`` strings, every key and value checked."""
    values = typed_values(owner.name, typing.get_type_hints(owner.Options), raw, kind)
    try:
        return owner.Options(**values)
    except ValueError as exc:
        raise UsageError(f"--set: {exc}") from None


def describe_options(owner: type) -> list[str]:
    """One line per option: name, type, default, help and source (for ``bench list --verbose``)."""
    hints = typing.get_type_hints(owner.Options)
    lines = []
    for f in dataclasses.fields(owner.Options):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        tp = hints[f.name]
        if typing.get_origin(tp) is Literal:
            tname = "|".join(map(str, typing.get_args(tp)))
        else:
            tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        help_ = f.metadata.get("help", "")
        src = f.metadata.get("source", "")
        line = f"{f.name} ({tname}, default {default!r}): {help_}" + (f" [{src}]" if src else "")
        if "setting" in f.metadata:  # a per-setting default (bench.common.defaults): its table, a line a case
            cases = ["when None, by setting:", *f.metadata["setting"].describe()]
            line += "".join(f"\n          {case}" for case in cases)
        lines.append(line)
    return lines
