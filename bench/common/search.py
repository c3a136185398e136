"""Search spaces for sensitivity studies (``bench study``): what a method lets a study tune.

A method declares its space beside its ``Options`` with the classmethod
``search_space(setting)`` returning ``{option: Param}`` (:class:`methods.base.Method`'s
default: no tunable options). The ranges come from the methods' papers and official code;
each :class:`Param` names its source. The run-level training protocol (learning rate,
weight decay, batch size) is a space of its own that every method can be studied over with
``--params lr,...``: for a method without hyperparameters (CE; IDO, whose only knob is the
protocol's stage split), that is all there is to tune.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.common.errors import UsageError


@dataclass(frozen=True)
class Setting:
    """What a space may depend on: the requested synthetic noise rate (None for real noise)
    and the run's epochs (e.g. a stage split must leave both stages an epoch)."""

    noise_rate: float | None
    epochs: int


@dataclass(frozen=True)
class Param:
    """One tunable value: a float or int range (``log`` for scale parameters) or categories.

    ``grid`` lists the values ``--sampler grid`` visits (the published values where there
    are some); ``source`` says where the range comes from."""

    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical Param needs choices")
        elif self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"a {self.kind} Param needs low <= high, got {self.low}, {self.high}")
        for v in self.grid:
            if not self.contains(v):
                raise ValueError(f"grid value {v!r} lies outside the range")

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high  # type: ignore[operator]

    def grid_values(self) -> list[Any]:
        if self.grid:
            return list(self.grid)
        if self.kind == "categorical":
            return list(self.choices)
        lo, hi = self.low, self.high
        if self.kind == "int":
            return sorted({round(lo + (hi - lo) * k / 4) for k in range(5)})  # type: ignore[operator]
        if self.log:
            return [lo * (hi / lo) ** (k / 4) for k in range(5)]  # type: ignore[operator]
        return [lo + (hi - lo) * k / 4 for k in range(5)]  # type: ignore[operator]

    def distribution(self) -> Any:
        """The Optuna distribution (for ``enqueue_trial`` checks and reports)."""
        import optuna

        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)  # type: ignore[arg-type]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(name, self.low, self.high, log=self.log)  # type: ignore[arg-type]


def protocol_space(setting: Setting) -> dict[str, Param]:
    """The training protocol every method shares (``bench run`` flags, not method options)."""
    return {
        "lr": Param("float", 1e-4, 1e-1, log=True, grid=(1e-4, 1e-3, 1e-2, 1e-1),
                    source="spans Adam 1e-3 (Co-teaching main.py) to SGD 0.02 (DivideMix, ELR) with margin"),
        "weight_decay": Param("float", 1e-6, 1e-2, log=True, grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
                              source="spans 1e-5 (IDO presets) to 1e-3 (ELR config, DivideMix Clothing1M)"),
        "batch_size": Param("categorical", choices=(32, 64, 128, 256), source="DivideMix 64, the others 128, IDO 256"),
    }


PROTOCOL_NAMES = ("lr", "weight_decay", "batch_size")


def full_space(method_cls: Any, setting: Setting) -> dict[str, Param]:
    """The method's own space followed by the protocol's."""
    return {**method_cls.search_space(setting), **protocol_space(setting)}


def choose_params(method_cls: Any, setting: Setting, names: list[str] | None) -> dict[str, Param]:
    """The parameters a study tunes: ``names`` (``--params``), or the method's own space.

    A method with nothing to tune by default fails in one line that names what it could
    study instead."""
    own = method_cls.search_space(setting)
    every = full_space(method_cls, setting)
    if not names:
        if not own:
            raise UsageError(f"method {method_cls.name!r} has no tunable options of its own; study its training "
                             f"protocol with --params {','.join(PROTOCOL_NAMES)}")
        return own
    unknown = [n for n in names if n not in every]
    if unknown:
        raise UsageError(f"--params {unknown[0]}: method {method_cls.name!r} cannot tune {unknown[0]!r}; "
                         f"valid: {', '.join(every)}")
    return {n: every[n] for n in names}


def trial_overrides(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split sampled values into ``bench run`` protocol fields and method ``--set`` options."""
    protocol = {k: v for k, v in values.items() if k in PROTOCOL_NAMES}
    options = {k: _set_text(v) for k, v in values.items() if k not in PROTOCOL_NAMES}
    return protocol, options


def _set_text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def describe_space(cls: Any) -> str:
    """A method's study space in one line, as it is at 40% synthetic noise and 30 epochs."""
    space = cls.search_space(Setting(0.4, 30))
    if not space:
        return "study space: none (no method hyperparameters; --params lr,weight_decay,batch_size)"
    parts = [f"{k} {p.choices}" if p.kind == "categorical" else f"{k} [{p.low:g}, {p.high:g}]{' log' if p.log else ''}"
             for k, p in space.items()]
    return "study space (at 40% noise, 30 epochs): " + ", ".join(parts)
