"""Pretrained weights of timm backbones: where timm takes them from, whether they are cached,
and downloading them into the standard caches.

``timm.create_model(name, pretrained=True)`` loads the model's default weights from the
Hugging Face Hub (the ``hf_hub_id`` of its pretrained config; huggingface_hub caches the file
under ``HF_HOME``, by default ``~/.cache/huggingface``) or, for a few older models, from a URL
(cached by torch.hub under ``TORCH_HOME``). A run downloads them on first use into those same
caches, as timm does; ``HF_HUB_OFFLINE=1`` or ``--offline`` turns downloading off, and a model
whose weights are not cached then fails at once. What differs from calling timm directly:

- huggingface_hub reads ``HF_HUB_OFFLINE`` once, when it is imported; here the variable is
  read when the weights are needed, so setting it later (a notebook, a launcher) still counts.
- Before downloading, one request asks the hub for the file. When the network is unreachable
  that fails at once, in one line; huggingface_hub, finding no cached copy, would retry five
  times with back-off (about 25 s per file, and timm asks for two files).
- A model timm has no pretrained weights for is an error, where timm logs a warning and
  trains from random weights.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bench.common.errors import UsageError

TRUE = {"1", "ON", "YES", "TRUE"}  # the values huggingface_hub takes as true
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")


def offline_reason(flag: bool = False) -> str | None:
    """Why downloading is off (``--offline``, ``HF_HUB_OFFLINE=1``), or None when it is on.

    The environment is read now, not at huggingface_hub's import; TRANSFORMERS_OFFLINE counts
    as huggingface_hub counts it."""
    if flag:
        return "--offline"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in TRUE:
            return f"{var}={os.environ[var]}"
    import huggingface_hub.constants as hub

    return "HF_HUB_OFFLINE (set when huggingface_hub was imported)" if hub.HF_HUB_OFFLINE else None


@contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub uses only its local cache inside (timm then loads what is cached).

    huggingface_hub consults its module constant, not the environment, so the constant is what
    is switched."""
    import huggingface_hub.constants as hub

    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


@dataclass(frozen=True)
class Source:
    """Where timm takes the pretrained weights of ``model`` from: a hub repository (``repo``,
    trying ``files`` in timm's order), a URL (torch.hub), or a local file named by timm's config."""

    model: str  # the timm name as the run gives it: resnet50, or resnet50.tv_in1k with a tag
    repo: str | None = None
    revision: str | None = None
    files: tuple[str, ...] = ()
    url: str | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        """The repository (``timm/resnet50.a1_in1k``), the URL or the file."""
        return self.repo or self.url or self.path or ""

    def where(self) -> str:
        """The address a download asks (the hub endpoint in force, ``HF_ENDPOINT``)."""
        if self.repo:
            import huggingface_hub.constants as hub

            return f"{hub.ENDPOINT}/{self.repo}"
        return self.label

    def cache_dir(self) -> str:
        """The cache the weights go to."""
        if self.repo:
            import huggingface_hub.constants as hub

            return hub.HF_HUB_CACHE
        return str(torch_hub_file(self.url).parent) if self.url else str(Path(self.label).parent)

    def provenance(self, path: Path) -> str:
        """What a run records: ``hf:REPO@COMMIT/FILE``, ``url:URL`` or ``file:PATH``."""
        if self.repo:
            commit = path.parent.name if path.parent.parent.name == "snapshots" else self.revision or "main"
            return f"hf:{self.repo}@{commit}/{path.name}"
        return f"url:{self.url}" if self.url else f"file:{self.path}"


def source(model: str) -> Source:
    """The source of ``model``'s pretrained weights (its default tag when none is given), as
    timm's ``_resolve_pretrained_source`` (timm/models/_builder.py) picks it: a hub id first,
    else the URL, a ``file`` overriding both. One line when timm has no weights for it."""
    import timm
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is not None and cfg.file:
        return Source(model, path=str(cfg.file))
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tag = f" (its tag {cfg.tag!r} has none)" if cfg is not None and cfg.tag else ""
        raise UsageError(f"timm:{model} has no pretrained weights in timm {timm.__version__}{tag}; "
                         "pass --weights PATH, or train from scratch with --no-pretrained")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        return Source(model, repo=repo, revision=revision or None, files=hub_files(cfg.hf_hub_filename))
    return Source(model, url=cfg.url)


def hub_files(filename: str | None) -> tuple[str, ...]:
    """The files timm asks the hub for, in order: the safetensors form first, then the named
    file (timm/models/_hub.py, ``load_state_dict_from_hf`` and ``_get_safe_alternatives``)."""
    name = filename or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return (name,)
    safe = {"pytorch_model.bin": "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(name)
    if safe is None and name.endswith(".bin"):
        safe = name[:-4] + ".safetensors"
    return (safe, name) if safe else (name,)


def torch_hub_file(url: str | None) -> Path:
    """Where torch.hub (and so timm) caches the file of ``url``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url or "").path)


def cached(src: Source) -> Path | None:
    """The cached weights file timm would load for ``src``, or None."""
    if src.path:
        return Path(src.path) if Path(src.path).is_file() else None
    if src.url:
        path = torch_hub_file(src.url)
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    for name in src.files:
        hit = try_to_load_from_cache(src.repo, name, revision=src.revision)
        if isinstance(hit, str):
            return Path(hit)
    return None


def fetch_command(model: str) -> str:
    return f"python -m bench weights fetch --backbone timm:{model}"


def _failed(src: Source, where: str, exc: BaseException) -> UsageError:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return UsageError(
        f"could not download the pretrained weights of timm:{src.model} from {where} ({type(exc).__name__}: "
        f"{first}); check the network (HF_ENDPOINT, proxy variables), or fetch them where there is internet "
        f"(`{fetch_command(src.model)}`) into this machine's cache ({src.cache_dir()}), or pass --weights PATH, "
        "or train from scratch with --no-pretrained")


def download(src: Source) -> Path:
    """Download the weights of ``src`` into the standard cache; the cached file's path."""
    if src.repo:
        return _download_hub(src)
    if src.url:
        return _download_url(src)
    raise UsageError(f"timm's configuration of timm:{src.model} names the file {src.path}, which does not exist; "
                     "pass --weights PATH, or train from scratch with --no-pretrained")


def _download_hub(src: Source) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    for name in src.files:
        url = hf_hub_url(src.repo, name, revision=src.revision)
        try:  # one request, no retries: is the network up, is the file there
            get_hf_file_metadata(url)
        except EntryNotFoundError:
            continue  # the next form of the file (timm's order)
        except Exception as exc:  # network, proxy, HTTP and hub errors alike
            raise _failed(src, src.where(), exc) from None
        try:
            return Path(hf_hub_download(src.repo, name, revision=src.revision))
        except Exception as exc:  # interrupted, disk full, ...: the same one line
            raise _failed(src, url, exc) from None
    raise UsageError(f"the hub repository {src.where()} has none of the files timm loads for timm:{src.model} "
                     f"({', '.join(src.files)}); pass --weights PATH, or train from scratch with --no-pretrained")


def _download_url(src: Source) -> Path:
    import torch.hub

    path = torch_hub_file(src.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch.hub writes a temporary file and renames it: never a partial file in the cache
        torch.hub.download_url_to_file(src.url, str(path), progress=True)
    except Exception as exc:  # urllib's errors and HTTP status errors alike
        raise _failed(src, src.url or "", exc) from None
    return path


def check(model: str, offline: bool = False) -> tuple[Source, Path | None]:
    """The source of timm ``model``'s weights and its cached file (None: not cached, to be
    downloaded). When it is not cached and downloading is off (``offline`` or
    ``HF_HUB_OFFLINE``), one line naming the model and the fetch command."""
    src = source(model)
    hit = cached(src)
    why = None if hit is not None else offline_reason(offline)
    if why:
        raise UsageError(
            f"the pretrained weights of timm:{model} ({src.label}) are not in the cache ({src.cache_dir()}) and "
            f"downloading is off ({why}); fetch them where there is internet (`{fetch_command(model)}`) into "
            "this cache (the same HF_HOME), or pass --weights PATH, or train from scratch with --no-pretrained")
    return src, hit


def ensure(model: str, offline: bool = False) -> tuple[Source, Path, bool]:
    """The weights of timm ``model`` in the cache: (source, file, downloaded now); downloaded
    unless downloading is off, which fails at once (:func:`check`) when they are not cached."""
    src, hit = check(model, offline)
    return (src, hit, False) if hit is not None else (src, download(src), True)


@dataclass(frozen=True)
class CachedFile:
    origin: str  # the hub repository, or "torch.hub"
    name: str
    size: int
    path: Path


def cached_files() -> list[CachedFile]:
    """The weight files in huggingface_hub's cache (model repositories) and torch.hub's."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    rows: list[CachedFile] = []
    try:
        info = scan_cache_dir()
    except CacheNotFound:
        info = None
    for repo in sorted(info.repos if info else (), key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            rows += [CachedFile(repo.repo_id, f.file_name, f.size_on_disk, f.file_path) for f in rev.files
                     if f.file_name.endswith(WEIGHT_SUFFIXES)]
    hub_dir = torch_hub_file("x").parent
    if hub_dir.is_dir():
        rows += [CachedFile("torch.hub", p.name, p.stat().st_size, p) for p in sorted(hub_dir.iterdir())
                 if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return rows
