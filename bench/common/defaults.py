"""Per-setting defaults: an option whose published value depends on the data set, the noise or
its rate (DivideMix's lambda_u, DISC's warm-up, ...) declares a table of cases once, in its
field's metadata (``"setting": PerSetting(...)``), and the method's base class fills it in when
the option is left at None (:meth:`methods.base.Method.__init__`), so a method reads
``self.opts.X`` and logs what it used without code of its own; ``bench list methods --verbose``
prints the table with the sources.

A table is an ordered list of :class:`Case`, the first that matches the run's
:class:`RunSetting` giving the value: a constant, :class:`ByRate` (the value of the nearest
published noise rate), :class:`Scaled` (an official epoch count scaled to the run's epochs) or a
function of the setting (for the rare rule no table states; its docstring says it), or
:class:`FromOptions`, a function of the setting and the options (the per-setting ones declared
above it already filled: GJS's label weight depends on its number of views; ProMix's starting rho
is its rho).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_CMP = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


@dataclass(frozen=True)
class RunSetting:
    """What a per-setting default may depend on; the rate is None for real noise."""

    dataset: str
    noise: str
    noise_rate: float | None
    num_classes: int
    epochs: int
    pretrained: bool = False  # the backbone starts from pretrained weights


def nearest(rate: float, table: dict[float, Any]) -> Any:
    """The value of the published rate nearest ``rate`` (ties: the lower rate)."""
    return table[min(table, key=lambda r: (abs(r - rate), r))]


@dataclass(frozen=True)
class ByRate:
    """The value of the nearest published noise rate (ties: the lower); ``real``: the value
    under real noise (rate None), by default that of rate 0."""

    table: dict[float, Any]
    real: Any = None

    def __call__(self, s: RunSetting) -> Any:
        if s.noise_rate is None and self.real is not None:
            return self.real
        return nearest(s.noise_rate or 0.0, self.table)

    def __str__(self) -> str:
        text = ", ".join(f"{r:g}: {v!r}" for r, v in sorted(self.table.items()))
        return f"by nearest rate {{{text}}}" + (f", real noise {self.real!r}" if self.real is not None else "")


@dataclass(frozen=True)
class Scaled:
    """``count`` of ``official`` epochs, scaled to the run's epochs and rounded, at least ``least``."""

    count: float
    official: float
    least: int = 1

    def __call__(self, s: RunSetting) -> int:
        return max(self.least, round(self.count * s.epochs / self.official))

    def __str__(self) -> str:
        return f"{self.count:g} of {self.official:g} epochs, scaled to --epochs (at least {self.least})"


@dataclass(frozen=True)
class FromOptions:
    """A value from the setting and the options (per-setting ones declared above already filled)."""

    fn: Callable[[RunSetting, Any], Any]
    text: str  # what it is, for `bench list`

    def __str__(self) -> str:
        return self.text


def _as_tuple(v: str | tuple[str, ...]) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def _bound(text: str) -> tuple[Callable[[float, float], bool], float]:
    for op in (">=", "<=", ">", "<"):
        if text.startswith(op):
            return _CMP[op], float(text[len(op):])
    raise ValueError(f"bound {text!r}: expected e.g. '>=0.6', '<10'")


@dataclass(frozen=True)
class Case:
    """Where a value applies (every condition given must hold; none given: always) and its source.

    ``dataset``/``noise``: names (any of them); ``classes``/``rate``: bounds such as ``"<=10"`` or
    ``">=0.6"`` (a rate bound never matches real noise; ``rate="real"`` matches only it)."""

    value: Any
    source: str
    dataset: tuple[str, ...] = ()
    noise: tuple[str, ...] = ()
    classes: str = ""
    rate: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", _as_tuple(self.dataset))
        object.__setattr__(self, "noise", _as_tuple(self.noise))
        for bound in (self.classes, self.rate):
            if bound and bound != "real":
                _bound(bound)

    def matches(self, s: RunSetting) -> bool:
        if self.dataset and s.dataset not in self.dataset:
            return False
        if self.noise and s.noise not in self.noise:
            return False
        if self.classes:
            op, n = _bound(self.classes)
            if not op(s.num_classes, n):
                return False
        if self.rate == "real":
            return s.noise_rate is None
        if self.rate:
            op, r = _bound(self.rate)
            return s.noise_rate is not None and op(s.noise_rate, r)
        return True

    def value_for(self, s: RunSetting, options: Any = None) -> Any:
        if isinstance(self.value, FromOptions):
            return self.value.fn(s, options)
        return self.value(s) if callable(self.value) else self.value

    def when(self) -> str:
        parts = ["/".join(self.dataset)] if self.dataset else []
        parts += ["/".join(self.noise) + " noise"] if self.noise else []
        parts += [f"classes {self.classes}"] if self.classes else []
        parts += ["real noise" if self.rate == "real" else f"rate {self.rate}"] if self.rate else []
        return ", ".join(parts) or "otherwise"


def case(value: Any, source: str, **where: Any) -> Case:
    """A :class:`Case` (``where``: dataset, noise, classes, rate)."""
    return Case(value, source, **where)


@dataclass(frozen=True)
class PerSetting:
    """An option's published values by setting: the first matching case wins; the last must
    match every setting (no conditions)."""

    cases: tuple[Case, ...] = field(default_factory=tuple)

    def __init__(self, *cases: Case) -> None:
        if not cases or cases[-1].when() != "otherwise":
            raise ValueError("a per-setting default ends with a case for every other setting (no conditions)")
        object.__setattr__(self, "cases", tuple(cases))

    def __call__(self, s: RunSetting, options: Any = None) -> Any:
        """The value for ``s``; ``options``: the options object, for a :class:`FromOptions` value."""
        return next(c for c in self.cases if c.matches(s)).value_for(s, options)

    def describe(self) -> list[str]:
        """One line per case: where it applies, the value, the source."""
        return [f"{c.when()}: {_text(c.value)} [{c.source}]" for c in self.cases]


def _text(value: Any) -> str:
    if isinstance(value, FromOptions) or (callable(value) and type(value).__str__ is not object.__str__):
        return str(value)
    if callable(value):
        doc = (value.__doc__ or value.__name__).strip().splitlines()[0]
        return doc.rstrip(".")
    return repr(value)


def per_setting(options_cls: type) -> dict[str, PerSetting]:
    """The per-setting tables of an options dataclass, by option name."""
    return {f.name: f.metadata["setting"] for f in dataclasses.fields(options_cls) if "setting" in f.metadata}


def fill_defaults(options: Any, s: RunSetting) -> Any:
    """``options`` with every per-setting option left at None set to its table's value for ``s``
    (a new object, validated again by its ``__post_init__``), in declaration order: a
    :class:`FromOptions` value sees the options above it filled."""
    filled = options
    for name, table in per_setting(type(options)).items():
        if getattr(options, name) is None:
            filled = dataclasses.replace(filled, **{name: table(s, filled)})
    return filled
