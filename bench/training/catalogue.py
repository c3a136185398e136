"""What the command line must know of the registered methods and backbones before it imports
torch: names, aliases, one-line descriptions, options (name, type, default, help, source) and
study spaces.

``bench list``, ``--help`` and every usage error that concerns names or ``--set`` types are
answered from this catalogue in milliseconds, where importing the method modules costs
seconds (torch, scipy). It is built by importing the registries, and cached outside the
checkout (:func:`cache_dir`: ``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/lnl-bench``, else
``~/.cache/lnl-bench``) as ``catalogue-<fingerprint>.json``, the fingerprint being that of the
source files it is built from (:data:`SOURCES`). It is derived data, so it is not tracked: a
fresh checkout, or any change to a source, finds no file under its fingerprint and the next
command builds one (seconds, once) and writes it atomically; an unwritable cache only means
building in memory each time. Data sets need no catalogue: their modules import only numpy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from bench.common.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
# the files whose content decides the catalogue
SOURCES = ("methods/*.py", "bench/backbones/*.py", "bench/common/*.py", "bench/training/catalogue.py")
BASE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
KEEP = 10  # cached catalogues kept (several checkouts or branches may share the cache)


@dataclass(frozen=True)
class Option:
    """One ``--set`` option of a method, as the catalogue knows it."""

    name: str
    type: dict[str, Any]  # {"kind": "int"|"float"|"str"|"bool"|"literal", "choices": [...], "optional": bool}
    line: str  # its line in `bench list --verbose`

    def annotation(self) -> Any:
        """The option's type as a typing object, for :func:`bench.common.options.coerce`."""
        kind = self.type["kind"]
        tp: Any = Literal[tuple(self.type["choices"])] if kind == "literal" else BASE_TYPES[kind]
        return tp | None if self.type.get("optional") else tp


@dataclass(frozen=True)
class Entry:
    """A registered method or backbone: what ``bench list`` shows and the checks use."""

    name: str
    doc: str
    aliases: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    space: str = ""  # the study space, described (methods)
    module: str = ""  # the module that registers it
    views: tuple[str, ...] = ()  # a method's own views (weak, weak2, strong, its module's)
    paper: str = ""  # a method's paper: authors, title, venue
    code: str = ""  # a method's official repository
    # the options `--fidelity official` sets, with their values as `--set` takes them (a method's
    # ``official_options``), in the order the method declares them
    official: tuple[tuple[str, str], ...] = ()
    family: str = ""  # a method's group in reports and figures (``Method.family``)

    @property
    def option_names(self) -> set[str]:
        return {o.name for o in self.options}

    @property
    def official_options(self) -> dict[str, str]:
        return dict(self.official)


@dataclass(frozen=True)
class Catalogue:
    methods: Registry
    backbones: Registry
    views: dict[str, dict[str, str]]  # name -> owner, source, and the view in words under each policy


def fingerprint() -> str:
    h = hashlib.sha1()
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def type_spec(tp: Any) -> dict[str, Any]:
    """A JSON form of an option's type: a base type or a Literal, optionally with None."""
    args = typing.get_args(tp)
    if type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)]
        return {**type_spec(inner[0]), "optional": True}
    if typing.get_origin(tp) is Literal:
        return {"kind": "literal", "choices": list(args)}
    name = getattr(tp, "__name__", "")
    if name not in BASE_TYPES:
        raise TypeError(f"option type {tp!r} is not one the command line can parse")
    return {"kind": name}


def _entry(name: str, obj: Any, aliases: list[str], space: str = "") -> dict[str, Any]:
    from bench.common.options import describe_options
    from bench.common.registry import describe

    options = []
    if hasattr(obj, "Options"):
        hints = typing.get_type_hints(obj.Options)
        lines = describe_options(obj)
        for f, line in zip(dataclasses.fields(obj.Options), lines, strict=True):
            options.append({"name": f.name, "type": type_spec(hints[f.name]), "line": line})
    return {"doc": describe(obj), "aliases": aliases, "options": options, "space": space, "module": obj.__module__,
            "views": list(getattr(obj, "own_views", ())), "paper": getattr(obj, "paper", ""),
            "code": getattr(obj, "code", ""),
            # a list of pairs: the file's keys are sorted, the declared order is kept
            "official": [[k, str(v)] for k, v in getattr(obj, "official_options", {}).items()],
            "family": getattr(obj, "family", "")}


def build() -> dict[str, Any]:
    """The catalogue, from the registries themselves (imports torch and every method)."""
    import methods
    from bench.backbones import BACKBONES
    from bench.common.search import describe_space
    from bench.common.views import get_view, view_names
    from methods.base import METHODS

    methods.load_all()
    ours = {f"methods.{m}" for m in methods.MODULES}  # not what a test registered on the side
    names = [n for n in METHODS.names() if METHODS.get(n).__module__ in ours]
    return {
        "fingerprint": fingerprint(),
        "methods": {n: _entry(n, METHODS.get(n), METHODS.aliases_of(n), describe_space(METHODS.get(n)))
                    for n in names},
        "backbones": {n: _entry(n, BACKBONES.get(n), BACKBONES.aliases_of(n)) for n in BACKBONES.names()},
        # a list, in registration order (the shared views first; the file's keys are sorted)
        "views": [{"name": v.name, "owner": v.owner, "source": v.source, "shared": v.describe("shared"),
                   "official": v.describe("official")}
                  for v in map(get_view, view_names()) if v.owner == "bench" or v.owner in ours],
    }


def cache_dir() -> Path:
    """Where built catalogues are kept: ``$BENCH_CACHE_DIR`` (tests point it at a temporary
    folder), else the XDG cache; never the checkout, whose files are sources only."""
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lnl-bench"


def cache_path(fp: str | None = None) -> Path:
    """The cached catalogue of the sources with fingerprint ``fp`` (default: the files on disk)."""
    return cache_dir() / f"catalogue-{fp or fingerprint()}.json"


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` atomically (a concurrent reader sees the old file or the whole new one: a
    sweep starts many processes at once), then drop all but the :data:`KEEP` newest catalogues."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    others = [p for p in path.parent.glob("catalogue-*.json") if p != path]
    old = sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)[KEEP - 1:]
    for stale in old:
        stale.unlink(missing_ok=True)


def _load_or_build() -> dict[str, Any]:
    want = fingerprint()
    path = cache_path(want)
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") == want:
            return data
    except (OSError, ValueError):  # not built yet for these sources, or a torn or foreign file
        pass
    data = build()
    try:
        _write(path, data)
    except OSError:  # an unwritable cache: rebuilt in memory each time, still correct
        pass
    return data


def _registry(kind: str, entries: dict[str, Any]) -> Registry:
    reg: Registry = Registry(kind)
    for name, e in entries.items():
        options = tuple(Option(o["name"], o["type"], o["line"]) for o in e["options"])
        reg.register(name, aliases=tuple(e["aliases"]))(Entry(name, e["doc"], tuple(e["aliases"]), options,
                                                               e["space"], e["module"], tuple(e["views"]),
                                                               e.get("paper", ""), e.get("code", ""),
                                                               tuple((k, v) for k, v in e.get("official", ())),
                                                               e.get("family", "")))
    return reg


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    data = _load_or_build()
    return Catalogue(_registry("method", data["methods"]), _registry("backbone", data["backbones"]),
                     {v["name"]: v for v in data["views"]})


def method_class(name: str) -> Any:
    """The registered class of method ``name`` (or an alias), importing its module alone."""
    import importlib

    from methods.base import METHODS

    if name not in METHODS:  # not registered yet in this process: import its module
        importlib.import_module(catalogue().methods.get(name).module)
    return METHODS.get(name)
