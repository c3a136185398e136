"""Tests for :mod:`bench.common.registry` and smoke tests over the real registries.

The smoke tests are parametrised over the registries themselves (timm's manner), so a new
backbone, data set or method is tested here without new test code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import datasets  # noqa: F401  (registers the data sets)
import methods  # noqa: F401  (registers the methods)
from bench.backbones import BACKBONES, check_backbone_name, count_flops, create_backbone
from bench.cli import main
from bench.common.errors import UsageError
from bench.common.options import build_options, describe_options
from bench.common.registry import Registry, UnknownNameError, describe
from datasets.base import DATASETS, Dataset
from methods.base import FAMILIES, METHODS, Method

# --- Registry ---------------------------------------------------------------------------------------


@pytest.fixture
def reg() -> Registry:
    r: Registry = Registry("widget")

    @r.register()
    def alpha() -> str:
        return "alpha"

    @r.register("beta-net", aliases=("beta", "b"))
    def make_beta() -> str:
        return "beta"

    @r.register()
    class Gamma:
        name = "gamma"

    return r


def test_register_keys_default_to_name_attribute_or_function_name(reg):
    assert reg.names() == ["alpha", "beta-net", "gamma"]
    assert reg.get("alpha")() == "alpha"
    assert reg.get("gamma").__name__ == "Gamma"


def test_a_registered_class_gets_the_registered_name_written_once():
    r: Registry = Registry("widget")

    @r.register("parent")
    class Parent:
        pass

    @r.register("child")
    class Child(Parent):  # not its parent's name
        pass

    @r.register("same")
    class Same:
        name = "same"  # spelt twice, the same: allowed

    assert (Parent.name, Child.name, Same.name) == ("parent", "child", "same")
    with pytest.raises(ValueError, match="the class says name = 'other'"):
        @r.register("mine")
        class Other:
            name = "other"
    assert "mine" not in r


def test_aliases_resolve_to_the_canonical_name(reg):
    assert reg.canonical("beta") == "beta-net"
    assert reg.canonical("b") == "beta-net"
    assert reg.get("beta") is reg.get("beta-net")
    assert reg.aliases_of("beta-net") == ["b", "beta"]
    assert reg.aliases_of("alpha") == []
    assert "beta" in reg and "beta-net" in reg and "delta" not in reg
    assert list(reg) == ["alpha", "beta-net", "gamma"]  # aliases are not listed as names


@pytest.mark.parametrize("name, aliases", [
    ("alpha", ()),          # a registered name again
    ("beta", ()),           # a name that is already an alias
    ("delta", ("alpha",)),  # an alias that is already a name
    ("delta", ("b",)),      # an alias that is already an alias
])
def test_registering_a_taken_name_raises(reg, name, aliases):
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(name, aliases=aliases)(lambda: None)
    assert "delta" not in reg  # nothing half-registered


def test_unknown_name_lists_close_matches_and_every_name(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    message = str(info.value)
    assert message.startswith("unknown widget 'alpah'")  # plain, not KeyError's quoted repr
    assert "did you mean alpha" in message
    assert message.endswith("valid: alpha, beta-net, gamma")
    assert isinstance(info.value, KeyError)


def test_unknown_name_without_close_match_has_no_hint(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.canonical("zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "valid: alpha, beta-net, gamma" in str(info.value)


def test_describe_is_the_first_docstring_line():
    def documented() -> None:
        """First line.

        More text.
        """

    assert describe(documented) == "First line."
    assert describe(lambda: None) == ""


# --- backbones ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes, in_chans, image_size", [(10, 1, 28), (10, 3, 32)])
@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_builds_and_trains(name, num_classes, in_chans, image_size):
    torch.manual_seed(0)
    net = create_backbone(name, num_classes, in_chans, image_size)
    x = torch.randn(2, in_chans, image_size, image_size)
    logits = net(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    params = [p for p in net.parameters() if p.requires_grad]
    assert params
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_has_a_description(name):
    assert describe(BACKBONES.get(name))


def test_count_flops_of_smallcnn():
    net = create_backbone("smallcnn", 10, 1, 28)
    flops = count_flops(net, (1, 28, 28))
    assert flops > 0
    # 2 FLOPs per multiply-accumulate: conv 28x28x16x(1x3x3), conv 14x14x32x(16x3x3), linear 1568x128, 128x10
    assert flops == 2 * (28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 1568 * 128 + 128 * 10)
    assert net.training  # the mode is restored


def test_timm_backbone_with_one_input_channel():
    net = create_backbone("timm:resnet18", 10, 1, 28)
    assert net.conv1.in_channels == 1
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_check_backbone_name():
    check_backbone_name("smallcnn")
    check_backbone_name("timm:resnet18")
    with pytest.raises(UnknownNameError, match="valid: .*smallcnn"):
        check_backbone_name("smallcnm")
    with pytest.raises(UsageError, match="not_a_model"):
        check_backbone_name("timm:not_a_model")


def test_timm_wildcard_is_not_a_model_name():
    with pytest.raises(UsageError):
        check_backbone_name("timm:resnet*")


def test_timm_name_with_pretrained_tag_is_accepted():
    check_backbone_name("timm:resnet18.a1_in1k")


# --- data sets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_class_attributes(name):
    cls = DATASETS.get(name)
    assert issubclass(cls, Dataset)
    assert cls.name == name
    ds = cls()
    if name == "folder":  # classes are the folder names: unknown before the data is read
        with pytest.raises(UsageError, match="unknown before the data is read"):
            ds.classes  # noqa: B018
    else:  # before reading (tiny-imagenet, food101n: their real class count until then)
        assert len(ds.classes) >= 2 and len(set(ds.classes)) == len(ds.classes)
        assert ds.num_classes == len(ds.classes)
    assert cls.channels in (1, 3)
    assert isinstance(cls.image_size, int) and cls.image_size > 0
    assert len(cls.mean) == cls.channels and len(cls.std) == cls.channels
    assert all(0 < s for s in cls.std) and all(0 <= m <= 1 for m in cls.mean)
    if cls.asym_map and name != "folder":
        assert set(cls.asym_map) | set(cls.asym_map.values()) <= set(range(ds.num_classes))
    doc = (cls.__doc__ or "").strip()  # a class's own docstring (not inherited)
    assert doc and len(doc.splitlines()) == 1, "one-line docstring: its `bench list` description"
    assert describe(cls) == doc


# --- methods ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS.names())
def test_method_class_contract(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method)
    assert cls.name == name
    assert describe(cls), "a docstring: its `bench list` description"
    assert dataclasses.is_dataclass(cls.Options)
    opts = build_options(cls, {})  # every option has a default
    assert isinstance(opts, cls.Options)
    assert len(describe_options(cls)) == len(dataclasses.fields(cls.Options))
    for f in dataclasses.fields(cls.Options):
        assert f.metadata.get("help"), f"option {f.name} has no help text"
    assert cls.family in FAMILIES, f"family {cls.family!r}: one of {', '.join(FAMILIES)}"
    if cls.__module__ in {f"methods.{m}" for m in methods.MODULES}:  # ours, not a test's side entry
        assert cls.paper and cls.code, "its paper and its official repository (or why there is none)"
        assert cls.family != "other", "one of the report's groups (Method.family)"


@pytest.mark.parametrize("name", METHODS.names())
def test_official_options_name_options_whose_values_parse(name):
    """What `--fidelity official` sets (``official_options``): each key one of the method's options,
    each value a string as `--set` takes it that parses, differs from the option's default (else
    it sets nothing), and all of them together pass the options' own checks."""
    cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    default = build_options(cls, {})
    for key, value in cls.official_options.items():
        assert key in fields, f"{name}: official_options names {key!r}, which is no option of {cls.Options.__name__}"
        assert isinstance(value, str), f"{name}: official_options[{key!r}] must be a string, as --set takes it"
        assert getattr(build_options(cls, {key: value}), key) != getattr(default, key), f"{name}: {key}={value}"
    build_options(cls, dict(cls.official_options))


def test_bench_list_methods_shows_paper_and_repository(capsys):
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in registered():
        i = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == name)
        cls = METHODS.get(name)
        assert lines[i + 1].strip() == f"paper: {cls.paper}; code: {cls.code}"


# --- `bench list` -------------------------------------------------------------------------------------


def sections(text: str) -> dict[str, list[str]]:
    """``bench list`` output as {section: first word of each entry line}."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            current = line.rstrip(":")
            out[current] = []
        elif line.startswith("  ") and not line.startswith("      "):
            out[current].append(line.split()[0])
    return out


def registered() -> list[str]:
    """The methods of the modules of methods/ (`methods.MODULES`, not what a test registers on the side)."""
    ours = {f"methods.{m}" for m in methods.MODULES}
    return [n for n in METHODS.names() if METHODS.get(n).__module__ in ours]


def test_bench_list_names_every_entry(capsys):
    from bench.training.presets import PAPER_ALIASES, PRESETS
    from datasets.noise import NOISE_MODELS

    assert main(["list"]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""
    listed = sections(cap.out)
    assert list(listed) == ["methods", "datasets", "backbones", "noise", "presets", "views"]
    assert listed["methods"] == registered()
    assert listed["datasets"] == DATASETS.names()
    assert listed["backbones"] == [*BACKBONES.names(), "timm:NAME"]
    assert listed["noise"] == list(NOISE_MODELS)
    assert listed["presets"] == [*sorted(PRESETS), *PAPER_ALIASES]
    from bench.common.views import view_names

    methods.load_all()  # the catalogue may come from the cache: the views of every method module
    assert sorted(listed["views"]) == sorted(view_names())
    for name in registered():
        assert describe(METHODS.get(name)) in cap.out


def test_bench_list_methods_verbose(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert list(sections(out)) == ["methods"]
    assert sections(out)["methods"] == registered()
    for name in registered():
        for line in describe_options(METHODS.get(name)) or ["(no options)"]:
            assert f"      {line}" in out
        aliases = METHODS.aliases_of(name)
        if aliases:
            assert f"(alias: {', '.join(aliases)})" in out


def test_the_independence_contract_covers_every_method_module_by_wildcard():
    """The import-linter contract "No method imports another" takes ``methods.*`` and allows only
    the imports of the shared pieces, exactly methods.SHARED, so a new method is covered without
    an edit (import-linter 2 expands wildcards in an independence contract's modules)."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (CI's); 3.10 has no TOML reader

    cfg = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    contract = next(c for c in cfg["tool"]["importlinter"]["contracts"] if c["name"].startswith("No method imports"))
    assert contract["modules"] == ["methods.*"]
    assert sorted(contract["ignore_imports"]) == [f"methods.* -> methods.{m}" for m in sorted(methods.SHARED)]


def test_the_discovered_method_modules_are_those_that_register_a_method():
    """Every module of methods/ but the shared pieces registers a method, and no shared piece
    does: a new shared module left out of methods.SHARED fails here, naming it."""
    from pathlib import Path

    folder = Path(methods.__file__).parent
    assert set(methods.MODULES) | set(methods.SHARED) == {p.stem for p in folder.glob("*.py")} - {"__init__"}
    assert not set(methods.MODULES) & set(methods.SHARED)
    registering = {METHODS.get(n).__module__.removeprefix("methods.") for n in METHODS.names()}
    silent = sorted(set(methods.MODULES) - registering)
    assert not silent, f"{silent} register no method: a shared piece belongs in methods.SHARED"
    assert not set(methods.SHARED) & registering, f"{sorted(set(methods.SHARED) & registering)} register a method"
