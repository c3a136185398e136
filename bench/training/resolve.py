"""The one resolver: a request (a plain dict of run options, as `bench run` takes them) becomes
a checked :class:`RunSpec` once, here.

Values come from the request, then the preset (``preset``), then the data set's protocol
defaults (``Dataset.defaults``), then :class:`RunConfig`'s and :class:`Placement`'s generic
defaults. Every check runs here, once, before anything is read or written: names (method, data
set, backbone, noise model, preset), values, the noise model against the data set, the data
files, the ``--set`` options of the method and the data set. Under ``--fidelity official`` the
method's ``official_options`` join its ``--set`` options, those given with ``--set`` winning, so
the configuration (and its hash) names them. The checks that need no torch run
first, so a usage error answers in a fraction of a second; those that need the method's code,
timm or CUDA run after them.

`run`, `sweep`, `study` and `perf` all call :func:`resolve`; a resumed run calls
:func:`resolve_resume`, which takes the saved :class:`RunConfig` unchanged and lets the request
change only the :class:`Placement`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.errors import UsageError
from bench.training.config import Placement, RunConfig, field_names, parse_set

CONFIG_FILE = "config.json"
CHECKPOINT = "checkpoint.pt"
# request keys: the fields of both parts (options other than through `sets`), the preset, and
# `sets`, the --set KEY=VALUE pairs of the method and the data set (a list or a dict)
RESULT_KEYS = field_names(RunConfig) - {"method_options", "dataset_options"}
PLACE_KEYS = field_names(Placement)
REQUEST_KEYS = RESULT_KEYS | PLACE_KEYS | {"preset", "sets"}


@dataclass
class RunSpec:
    """A checked request: what decides the result, where the run happens, and provenance."""

    config: RunConfig
    place: Placement
    preset: str | None = None
    # hash of the configuration as requested (before the data set and the method fill in
    # their defaults): what `bench sweep` finds a run by
    request_hash: str = ""

    def saved(self) -> dict[str, Any]:
        """What config.json holds."""
        return {"config": self.config.to_dict(), "place": self.place.to_dict(), "preset": self.preset,
                "request_hash": self.request_hash}


def resolve(request: Mapping[str, Any], here: bool = True) -> RunSpec:
    """The request as a checked run; one-line :class:`UsageError` for anything wrong. ``here``:
    the run is to happen on this machine (False: on a cluster's compute node, whose devices a
    login node need not have: its device is checked where it runs)."""
    spec = resolve_values(request)
    check(spec, deep=True, here=here)
    return spec


def resolve_values(request: Mapping[str, Any]) -> RunSpec:
    """The request's values with the preset's and the data set's filled in, checked on their
    own (:meth:`RunConfig.validate`); no data, method or backbone check (:func:`check`)."""
    from bench.training.catalogue import catalogue
    from bench.training.presets import get_preset
    from datasets.base import DATASETS

    request = {k: v for k, v in request.items() if v is not None}
    unknown = sorted(set(request) - REQUEST_KEYS)
    if unknown:
        raise UsageError(f"unknown run option {unknown[0]!r}; valid: {', '.join(sorted(REQUEST_KEYS))}")
    methods = catalogue().methods
    if "method" not in request:
        raise UsageError(f"--method is required; valid: {', '.join(methods.names())}")
    method = methods.canonical(request["method"])
    dataset_arg = DATASETS.canonical(request["dataset"]) if "dataset" in request else None
    preset = get_preset(request["preset"], dataset_arg) if "preset" in request else None
    dataset = dataset_arg or (preset.values["dataset"] if preset else "fashion-mnist")
    values: dict[str, Any] = dict(DATASETS.get(dataset).defaults)
    dataset_sets: dict[str, str] = {}
    if preset is not None:
        values.update(preset.values)
        if dataset == preset.values["dataset"]:
            dataset_sets.update(preset.dataset_options)
    values.update({k: v for k, v in request.items() if k in RESULT_KEYS | PLACE_KEYS})
    values.update(method=method, dataset=dataset)
    if "pretrained" not in request and not str(values.get("backbone", "")).startswith("timm:"):
        # a protocol's "pretrained" goes with its timm backbone: another backbone the request
        # names (smallcnn on Clothing1M) starts from random weights, as it only can
        values["pretrained"] = False
    method_sets, ds_sets = split_sets(parse_set(request.get("sets")), methods.get(method), DATASETS.get(dataset))
    if values.get("fidelity") == "official":  # the method's official-code options; an explicit --set wins
        method_sets = {**methods.get(method).official_options, **method_sets}
    dataset_sets.update(ds_sets)
    config = RunConfig.from_dict({**values, "method_options": method_sets, "dataset_options": dataset_sets})
    place = Placement.from_dict(values)
    config.validate()
    place.validate()
    return RunSpec(config, place, preset.name if preset else None, config.hash())


def split_sets(sets: dict[str, str], method: Any, dataset_cls: Any) -> tuple[dict[str, str], dict[str, str]]:
    """``--set`` pairs by owner: the data set's option names, else the method's (``method`` is
    its catalogue entry). A key neither has fails with both lists of valid names, or, for a
    run option, with the flag to use instead."""
    from bench.common.options import option_names

    ds_names, m_names = option_names(dataset_cls), method.option_names
    unknown = [k for k in sets if k not in ds_names and k not in m_names]
    if unknown:
        key = unknown[0]
        flag = key.replace("-", "_")
        if flag in RESULT_KEYS | PLACE_KEYS:
            raise UsageError(f"--set {key}={sets[key]}: {key} is a run option, not a method or data-set option; "
                             f"use --{flag.replace('_', '-')} {sets[key]}")
        valid = ", ".join(sorted(m_names)) or "(none)"
        dvalid = ", ".join(sorted(ds_names)) or "(none)"
        raise UsageError(f"--set {key}: neither method {method.name!r} nor data set {dataset_cls.name!r} "
                         f"has an option {key!r}; method options: {valid}; data-set options: {dvalid}")
    return ({k: v for k, v in sets.items() if k not in ds_names}, {k: v for k, v in sets.items() if k in ds_names})


def check(spec: RunSpec, deep: bool = True, here: bool = True) -> None:
    """Every check of a run beyond its values alone (``RunConfig.validate``), before any data is
    read or anything is written; fills in the data set's resolved options. First what needs no
    torch (noise model against the data set, data files, backbone name, the types of ``--set``
    values); with ``deep`` then what does (timm model names, CUDA, the method options' own
    checks); the device only ``here`` (see :func:`resolve`)."""
    from bench.common.options import build_options, typed_values
    from bench.training.catalogue import catalogue
    from datasets.base import DATASETS

    cfg, place = spec.config, spec.place  # the values alone were checked by RunConfig.validate()
    ds_cls = DATASETS.get(cfg.dataset)
    dataset = ds_cls(build_options(ds_cls, {k: str(v) for k, v in cfg.dataset_options.items()}, "data set"))
    dataset.check_noise(cfg.noise)
    dataset.check_root(place.data_root)
    cfg.dataset_options = dataset.resolved_options()
    timm = cfg.backbone.startswith("timm:")
    if not timm:
        catalogue().backbones.canonical(cfg.backbone)
    if (cfg.pretrained or cfg.weights) and not timm:
        raise UsageError(f"backbone {cfg.backbone!r} has no pretrained weights; use a timm:NAME backbone")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights {cfg.weights}: no such file")
    entry = catalogue().methods.get(cfg.method)
    typed_values(entry.name, {o.name: o.annotation() for o in entry.options},
                 {k: str(v) for k, v in cfg.method_options.items()})
    if not deep:
        return
    from bench.backbones import check_backbone_name
    from bench.training.catalogue import method_class
    from bench.training.device import resolve_device

    if here:
        resolve_device(place.device)
    if timm:
        check_backbone_name(cfg.backbone)
        if cfg.pretrained and not cfg.weights:  # weights timm has, cached unless downloading is on
            from bench.backbones.weights import check as check_weights

            check_weights(cfg.backbone[5:], place.offline)
    build_options(method_class(cfg.method), {k: str(v) for k, v in cfg.method_options.items()})


def load_saved(run_dir: Path) -> RunSpec:
    """The RunSpec a run folder's config.json holds (also the flat config.json of old runs)."""
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such folder; give a run folder under results/runs/")
    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"--resume {run_dir}: no checkpoint there ({CHECKPOINT} and {CONFIG_FILE}); "
                         "give a run folder under results/runs/")
    try:
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        if "config" not in saved:  # flat, as written before the two parts
            saved = {"config": saved, "place": saved, "preset": saved.get("preset")}
        config = RunConfig.from_dict(saved["config"])
        place = Placement.from_dict(saved["place"])
    except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError; a missing key a TypeError
        raise UsageError(f"--resume {run_dir}: {CONFIG_FILE} is damaged ({exc}); the run cannot be resumed") from None
    return RunSpec(config, place, saved.get("preset"), saved.get("request_hash") or config.hash())


def resolve_resume(run_dir: Path, request: Mapping[str, Any]) -> RunSpec:
    """A run folder's saved run, with the request's placement: a request value of the result's
    part that differs from the saved one is refused (repeating it is harmless)."""
    spec = load_saved(run_dir)
    request = {k: v for k, v in request.items() if v is not None}
    saved = spec.config.to_dict()
    changed = [k for k in sorted(RESULT_KEYS & set(request)) if _canonical(k, request[k]) != saved[k]]
    if "preset" in request and request["preset"] != spec.preset:
        changed.append("preset")
    if changed or request.get("sets"):
        names = ", ".join("--" + k.replace("_", "-") for k in changed) or "--set"
        raise UsageError(f"--resume continues a run with its saved configuration; drop {names}")
    place = spec.place.to_dict()
    place.update({k: v for k, v in request.items() if k in PLACE_KEYS})
    spec.place = Placement.from_dict(place)
    spec.place.validate()
    return spec


def _canonical(key: str, value: Any) -> Any:
    """Registered name for method and data-set values, so an alias is no change."""
    from bench.training.catalogue import catalogue
    from datasets.base import DATASETS

    registry = {"method": catalogue().methods, "dataset": DATASETS}.get(key)
    if registry is None or value not in registry:
        return value
    return registry.canonical(value)


def to_argv(request: Mapping[str, Any]) -> list[str]:
    """The `bench run` flags of a request (for a sweep's run processes and their logs)."""
    out: list[str] = []
    for key, value in request.items():
        if value is None:
            continue
        if key == "sets":
            for k, v in parse_set(value).items():
                out += ["--set", f"{k}={v}"]
        elif isinstance(value, bool):
            out.append(("--" if value else "--no-") + key.replace("_", "-"))
        else:
            out += ["--" + key.replace("_", "-"), str(value)]
    return out
