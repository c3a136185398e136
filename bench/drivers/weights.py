"""``bench weights fetch|list``: the pretrained weights runs will load, fetched ahead into the
standard caches, for compute nodes without internet.

What a run loads is decided as the run itself decides it (:func:`bench.training.resolve.resolve_values`:
preset, then the data set's protocol, then the command line), so ``fetch --preset clothing1m``,
``--dataset webvision`` or ``--sweep-args "..."`` fetch exactly the files those runs will ask
for. Each file is downloaded by huggingface_hub (or torch.hub) into its usual cache, then loaded
into its model from the cache alone, as an offline run will load it.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.backbones.weights import Source, cached, cached_files, ensure, fetch_command, source
from bench.common.errors import UsageError


def pretrained_models(requests: Iterable[Mapping[str, Any]]) -> list[str]:
    """The timm models whose pretrained weights the runs of ``requests`` load (a run with
    ``--weights PATH`` or without ``--pretrained`` loads none), each once, in order."""
    from bench.training.resolve import resolve_values

    found: list[str] = []
    for request in requests:
        cfg = resolve_values({"method": "ce", **request}).config  # the method never changes the backbone
        if not cfg.pretrained or cfg.weights:
            continue
        if not cfg.backbone.startswith("timm:"):
            raise UsageError(f"backbone {cfg.backbone!r} has no pretrained weights; use a timm:NAME backbone")
        if cfg.backbone[5:] not in found:
            found.append(cfg.backbone[5:])
    return found


def preset_requests(presets: list[str], datasets: list[str]) -> list[dict[str, Any]]:
    """Requests for ``--preset`` (``all``: every preset; ``paper``/``paper-vit`` with each
    ``--dataset``) and for bare runs on each ``--dataset`` without a preset."""
    from bench.training.presets import PAPER_ALIASES, PRESETS

    names = sorted(PRESETS) if "all" in presets else presets
    out: list[dict[str, Any]] = []
    for name in names:
        if name in PAPER_ALIASES:
            out += [{"preset": name, "dataset": d} for d in datasets] or [{"preset": name}]
        else:
            out.append({"preset": name})
    if not presets:
        out += [{"dataset": d} for d in datasets]
    return out


@dataclass
class Fetched:
    model: str
    src: Source
    path: Path
    downloaded: bool
    params: int


def fetch_one(model: str) -> Fetched:
    """Download ``model``'s weights unless cached, then load them from the cache alone into the
    model at its own class count (every tensor from the file: timm loads strictly)."""
    from bench.backbones import load_cached_pretrained

    src, path, downloaded = ensure(model, offline=False)
    net = load_cached_pretrained(model, src, path)
    return Fetched(model, src, path, downloaded, sum(p.numel() for p in net.parameters()))


def run_fetch(models: list[str], dry_run: bool) -> int:
    """Fetch (or, ``dry_run``, list) each model's weights; one line per file on stdout."""
    if not models:
        print("nothing to fetch: those runs load no pretrained weights (random initialisation or --weights PATH)")
        return 0
    for model in models:
        if dry_run:
            src = source(model)
            hit = cached(src)
            state = f"cached at {hit}" if hit else f"to fetch from {src.where()}"
            print(f"timm:{model}  {src.label}  {state}")
            continue
        got = fetch_one(model)
        how = "downloaded to" if got.downloaded else "already cached at"
        print(f"timm:{model}  {got.src.provenance(got.path)}  {size_text(got.path.stat().st_size)}  {how} "
              f"{got.path}  (loads: {got.params / 1e6:.1f} M parameters)", flush=True)
    if not dry_run:
        print(f"cache: {cache_roots()}; a compute node that sees this cache (the same HF_HOME) runs these with "
              "HF_HUB_OFFLINE=1 or --offline", file=sys.stderr)
    return 0


def size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def cache_roots() -> str:
    import huggingface_hub.constants as hub
    import torch.hub

    return f"HF_HOME {hub.HF_HOME} (hub files in {hub.HF_HUB_CACHE}), torch.hub {torch.hub.get_dir()}"


def run_list() -> int:
    """The cached weight files, then the presets' backbones and whether each is cached."""
    from bench.training.presets import PRESETS

    print(f"cache: {cache_roots()}")
    files = cached_files()
    for f in files:
        print(f"  {f.origin}  {f.name}  {size_text(f.size)}  {f.path}")
    if not files:
        print("  (no weight files)")
    models = pretrained_models(preset_requests(sorted(PRESETS), []))
    print("pretrained backbones of the presets:")
    for model in models:
        hit = cached(source(model))
        users = ", ".join(n for n, p in sorted(PRESETS.items()) if p.values.get("backbone") == f"timm:{model}"
                          and p.values.get("pretrained"))
        print(f"  timm:{model}  {'cached' if hit else 'not cached: ' + fetch_command(model)}  ({users})")
    return 0
