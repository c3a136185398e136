"""Per-setting defaults (bench.common.defaults): the cases, what they match, the value types, and
the base class filling every per-setting option left at None, for every registered method."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import pytest
from helpers import fake_context

import methods
from bench.common.defaults import (
    ByRate,
    FromOptions,
    PerSetting,
    RunSetting,
    Scaled,
    case,
    fill_defaults,
    nearest,
    per_setting,
)
from bench.common.options import describe_options
from methods.base import METHODS


def setting(dataset="cifar10", noise="sym", rate=0.4, classes=10, epochs=200, pretrained=False) -> RunSetting:
    return RunSetting(dataset, noise, rate, classes, epochs, pretrained)


def test_cases_match_on_every_condition_given():
    c = case(1, "src", dataset=("cifar10", "cifar100"), noise="asym", classes="<=10", rate=">=0.6")
    assert c.matches(setting(noise="asym", rate=0.6))
    assert not c.matches(setting(noise="asym", rate=0.59))
    assert not c.matches(setting(noise="sym", rate=0.8))
    assert not c.matches(setting(dataset="webvision", noise="asym", rate=0.8))
    assert not c.matches(setting(dataset="cifar100", noise="asym", rate=0.8, classes=100))
    assert not c.matches(setting(noise="asym", rate=None))  # a rate bound never matches real noise
    assert case(1, "src", rate="real").matches(setting(rate=None))
    assert not case(1, "src", rate="real").matches(setting(rate=0.2))
    assert c.when() == "cifar10/cifar100, asym noise, classes <=10, rate >=0.6"
    with pytest.raises(ValueError, match="bound 'about 3'"):
        case(1, "src", classes="about 3")


def test_the_first_matching_case_wins_and_a_table_ends_with_a_case_for_every_setting():
    table = PerSetting(case("c100", "a", classes=">10"), case("hi", "b", rate=">=0.8"), case("lo", "c"))
    assert [table(setting(classes=100, rate=0.9)), table(setting(rate=0.9)), table(setting(rate=None))] == [
        "c100", "hi", "lo"]
    assert table.describe() == ["classes >10: 'c100' [a]", "rate >=0.8: 'hi' [b]", "otherwise: 'lo' [c]"]
    with pytest.raises(ValueError, match="ends with a case for every other setting"):
        PerSetting(case(1, "a", classes=">10"))


def test_rate_tables_take_the_nearest_published_rate_and_scaled_counts_the_runs_epochs():
    by_rate = ByRate({0.2: 0.0, 0.5: 25.0, 0.8: 25.0, 0.9: 50.0})
    assert [by_rate(setting(rate=r)) for r in (0.1, 0.35, 0.36, 0.85, 0.86, None)] == [0.0, 0.0, 25.0, 25.0, 50.0, 0.0]
    assert ByRate({0.2: 1, 0.5: 2}, real=3)(setting(rate=None)) == 3
    assert nearest(0.35, {0.2: "a", 0.5: "b"}) == "a"  # a tie: the lower rate
    assert [Scaled(20, 200)(setting(epochs=e)) for e in (200, 30, 5, 2)] == [20, 3, 1, 1]
    assert Scaled(20, 200, least=0)(setting(epochs=2)) == 0
    assert str(Scaled(20, 200)) == "20 of 200 epochs, scaled to --epochs (at least 1)"


def _twice(s: RunSetting) -> int:
    """Twice the epochs."""
    return 2 * s.epochs


@dataclass
class _Options:
    k: int | None = field(default=None, metadata={"help": "k", "setting": PerSetting(
        case(7, "paper Table 1", dataset="webvision"), case(_twice, "paper Sec. 2"))})
    plain: float = 1.0
    twice_k: int | None = field(default=None, metadata={"help": "2k", "setting": PerSetting(
        case(FromOptions(lambda s, o: 2 * o.k, "twice k"), "paper Sec. 3"))})

    def __post_init__(self):
        if self.k is not None and self.k < 0:
            raise ValueError("k must be >= 0")


def test_fill_defaults_sets_only_what_was_left_at_none_and_validates_again():
    assert fill_defaults(_Options(), setting(epochs=3)) == _Options(k=6, twice_k=12)  # in order: k, then 2k
    assert fill_defaults(_Options(), setting(dataset="webvision")) == _Options(k=7, twice_k=14)
    assert fill_defaults(_Options(k=2), setting()) == _Options(k=2, twice_k=4)
    given = _Options(k=2, twice_k=1)
    assert fill_defaults(given, setting()) is given
    bad = dataclasses.replace(_Options(), k=None)
    with pytest.raises(ValueError, match="k must be >= 0"):
        fill_defaults(bad, setting(epochs=-1))
    assert per_setting(_Options).keys() == {"k", "twice_k"}


def test_options_describe_their_tables():
    class Owner:
        name = "owner"
        Options = _Options

    line, _, derived = describe_options(Owner)
    assert line.splitlines()[1:] == ["          when None, by setting:", "          webvision: 7 [paper Table 1]",
                                     "          otherwise: Twice the epochs [paper Sec. 2]"]
    assert derived.splitlines()[1:] == ["          when None, by setting:",
                                        "          otherwise: twice k [paper Sec. 3]"]


def test_every_registered_table_describes_itself_in_words():
    """No object's repr (an address would make the catalogue differ build to build)."""
    methods.load_all()
    for name in METHODS.names():
        for line in describe_options(METHODS.get(name)):
            assert " at 0x" not in line and "object" not in line, (name, line)


def test_the_method_base_class_fills_the_per_setting_options():
    from methods.dividemix import DivideMix

    m = DivideMix(DivideMix.Options(), fake_context(dataset="cifar100", num_classes=100, noise_rate=0.5))
    assert (m.opts.lambda_u, m.opts.warmup_epochs, m.opts.alpha) == (150.0, 30, 4.0)  # the paper's CIFAR-100 50%
    given = DivideMix(DivideMix.Options(lambda_u=3.0), fake_context(dataset="cifar100", num_classes=100))
    assert given.opts.lambda_u == 3.0
    assert m.resolved_options()["lambda_u"] == 150.0


def test_every_registered_per_setting_option_may_be_none_and_names_its_source():
    methods.load_all()
    tables = 0
    for name in METHODS.names():
        cls = METHODS.get(name)
        for f in dataclasses.fields(cls.Options):
            table = f.metadata.get("setting")
            if table is None:
                continue
            tables += 1
            hint = typing.get_type_hints(cls.Options)[f.name]
            assert type(None) in typing.get_args(hint), (name, f.name)  # else the table is never asked
            assert all(c.source for c in table.cases), (name, f.name)
    assert tables >= 20
