"""Pretrained weights as users get them (:mod:`bench.backbones.weights`, ``bench weights``):
downloaded on first use through huggingface_hub into its cache, never asked for when
``HF_HUB_OFFLINE=1`` or ``--offline``, fetched ahead for offline nodes, and the data sets whose
protocol is pretrained default to it.

Nothing here reaches the internet. A local stand-in for the hub (:mod:`hub_server`) serves
timm's ``test_resnet`` weights (``timm/test_resnet.r160_in1k``, weights of our own) through
``HF_ENDPOINT``. The runs that must see the environment as a user sets it are subprocesses;
the rest run in-process with huggingface_hub's constants (read at its import) pointed at the
stand-in and at an empty cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import COMMIT, HubServer, tiny_resnet_weights

from bench.cli import main
from tests.fixtures_data import make_clothing1m

REPO = Path(__file__).resolve().parents[1]
TEST_REPO = "timm/test_resnet.r160_in1k"
SAFE = "model.safetensors"
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(scope="module")
def served() -> tuple[bytes, dict[str, torch.Tensor]]:
    return tiny_resnet_weights()


def env_for(tmp: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    """A user's environment: the hub at ``endpoint``, an empty cache under ``tmp``, downloads
    allowed unless ``offline`` (HF_HUB_OFFLINE=1)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", *PROXIES)}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf"), TORCH_HOME=str(tmp / "torch"), PYTHONUNBUFFERED="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def bench(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def tiny_run(tmp: Path, *extra: str) -> list[str]:
    """A pretrained test_resnet run of a few Fashion-MNIST batches, its records under ``tmp``."""
    return ["run", "--method", "ce", "--backbone", "timm:test_resnet", "--pretrained", "--epochs", "1",
            "--subset", "64", "--test-subset", "64", "--batch-size", "32", "--out", str(tmp / "runs"),
            "--tracking-uri", f"sqlite:///{tmp}/m.db", *extra]


def cache_file(tmp: Path, name: str = SAFE) -> Path:
    return tmp / "hf" / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / COMMIT / name


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), proc.stderr
    return lines[0]


@pytest.fixture
def hub_here(monkeypatch, tmp_path):
    """huggingface_hub in this process: downloads allowed, its cache empty under ``tmp_path``;
    the endpoint is set by :func:`point_at`."""
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return monkeypatch


def point_at(monkeypatch, url: str) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "ENDPOINT", url)
    monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


# --- first use, offline, fetch: as a user runs them (subprocesses) -----------------------------------

@pytest.mark.slow
def test_first_use_downloads_through_huggingface_hub(tmp_path, served, hub_here):
    data, tensors = served
    with HubServer({(TEST_REPO, SAFE): data}) as hub:
        proc = bench(env_for(tmp_path, hub.url), *tiny_run(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert hub.asked(SAFE) == ["HEAD", "HEAD", "GET"]  # our probe, then hf_hub_download's HEAD and GET
    assert cache_file(tmp_path).read_bytes() == data  # in huggingface_hub's own cache layout
    assert f"backbone timm:test_resnet: hf:{TEST_REPO}@{COMMIT}/{SAFE} (downloaded to {cache_file(tmp_path)})" \
        in proc.stderr
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(["0", "1"])[0]
    assert run.data.tags["weights"] == f"hf:{TEST_REPO}@{COMMIT}/{SAFE}"
    # what the run loaded is the served file: load it from that cache here, offline
    from bench.backbones import create_backbone

    net = create_backbone("timm:test_resnet", 1000, 3, 160, pretrained=True, offline=True)
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())


@pytest.mark.slow
def test_hf_hub_offline_never_asks_the_hub(tmp_path):
    with HubServer({}) as hub:
        proc = bench(env_for(tmp_path, hub.url, offline=True), *tiny_run(tmp_path))
    line = one_error_line(proc)
    assert hub.requests == []
    assert "timm:test_resnet" in line and "HF_HUB_OFFLINE=1" in line
    assert "python -m bench weights fetch --backbone timm:test_resnet" in line and "--no-pretrained" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.slow
def test_fetch_fills_the_cache_and_an_offline_run_loads_from_it(tmp_path, served, hub_here, capsys):
    data, _ = served
    with HubServer({(TEST_REPO, SAFE): data}) as hub:
        fetched = bench(env_for(tmp_path, hub.url), "weights", "fetch", "--backbone", "timm:test_resnet")
    assert fetched.returncode == 0, fetched.stderr
    path = cache_file(tmp_path)
    assert path.read_bytes() == data
    line = fetched.stdout.strip().splitlines()[-1]
    assert line.startswith("timm:test_resnet") and str(path) in line and f"{len(data) / 1e6:.1f} MB" in line
    assert "downloaded to" in line and "loads:" in line
    # the hub is gone: the run must not need it
    with HubServer({}) as gone:
        proc = bench(env_for(tmp_path, gone.url), *tiny_run(tmp_path, "--offline"))
    assert proc.returncode == 0, proc.stderr
    assert gone.requests == []
    assert f"backbone timm:test_resnet: hf:{TEST_REPO}@{COMMIT}/{SAFE} (from the cache: {path})" in proc.stderr
    # and `weights list` shows the file and that a preset's backbone is not cached
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{TEST_REPO}  {SAFE}" in out and str(path) in out
    assert "timm:resnet50  not cached: python -m bench weights fetch --backbone timm:resnet50" in out


@pytest.mark.slow
def test_a_failed_download_is_one_line_and_fast(tmp_path):
    with HubServer({}) as hub:
        url = hub.url  # a port that was just open and is now closed: connections are refused
    proc = bench(env_for(tmp_path, url), *tiny_run(tmp_path))
    line = one_error_line(proc)
    assert "could not download the pretrained weights of timm:test_resnet" in line
    assert f"{url}/{TEST_REPO}" in line and "--no-pretrained" in line and "--weights PATH" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- the rest in-process --------------------------------------------------------------------------

def test_timm_file_order_safetensors_first_then_the_bin(tmp_path, hub_here, served):
    """A repository without model.safetensors: the .bin, as timm's load_state_dict_from_hf falls back."""
    import io

    from bench.backbones.weights import cached, ensure, source

    _, tensors = served
    buf = io.BytesIO()
    torch.save(tensors, buf)
    with HubServer({(TEST_REPO, "pytorch_model.bin"): buf.getvalue()}) as hub:
        point_at(hub_here, hub.url)
        assert cached(source("test_resnet")) is None
        src, path, downloaded = ensure("test_resnet")
        assert downloaded and path.name == "pytorch_model.bin"
        assert hub.asked(SAFE) == ["HEAD"] and hub.asked("pytorch_model.bin") == ["HEAD", "HEAD", "GET"]
        before = len(hub.requests)
        assert ensure("test_resnet")[1:] == (path, False) and len(hub.requests) == before  # cached: no request


def test_offline_is_read_when_needed_not_at_import(hub_here):
    from bench.backbones.weights import offline_reason

    assert offline_reason() is None
    hub_here.setenv("HF_HUB_OFFLINE", "1")
    assert offline_reason() == "HF_HUB_OFFLINE=1"
    hub_here.setenv("HF_HUB_OFFLINE", "0")
    assert offline_reason() is None and offline_reason(True) == "--offline"


def test_a_model_without_pretrained_weights_is_refused(tmp_path, capsys):
    """timm would warn and train from random weights; here it fails before anything is written."""
    code = main(["run", "--method", "ce", "--backbone", "timm:coatnet_nano_cc_224", "--pretrained",
                 "--out", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert code == 2 and "timm:coatnet_nano_cc_224 has no pretrained weights" in err and "--no-pretrained" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dataset,pretrained", [("clothing1m", True), ("webvision", True), ("food101n", True),
                                                ("animal10n", False), ("fashion-mnist", False)])
def test_data_sets_whose_protocol_is_pretrained_default_to_it(dataset, pretrained):
    from bench.training.resolve import resolve_values

    cfg = resolve_values({"method": "ce", "dataset": dataset}).config
    assert cfg.pretrained is pretrained
    assert resolve_values({"method": "ce", "dataset": dataset, "pretrained": False}).config.pretrained is False


def test_a_bare_clothing1m_run_offline_says_how_to_run_from_scratch(tmp_path, hub_here, capsys):
    root = make_clothing1m(tmp_path / "c1m").root
    hub_here.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", "--method", "ce", "--dataset", "clothing1m", "--data-root", str(root),
                 "--out", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "timm:resnet50" in err and "timm/resnet50.a1_in1k" in err and "--no-pretrained" in err
    assert not (tmp_path / "runs").exists()


def test_fetch_dry_run_names_what_presets_data_sets_and_sweeps_load(hub_here, capsys):
    def fetched(*argv: str) -> str:
        assert main(["weights", "fetch", *argv, "--dry-run"]) == 0
        return capsys.readouterr().out

    assert "timm:resnet50  timm/resnet50.a1_in1k  to fetch" in fetched("--preset", "clothing1m")
    out = fetched("--preset", "paper-vit", "--dataset", "cifar100")
    assert out.startswith("timm:vit_base_patch16_224") and "resnet50" not in out
    assert "nothing to fetch" in fetched("--dataset", "animal10n")
    out = fetched("--sweep-args", "--methods ce,wrongevent --noise sym:0.2,sym:0.4 --preset webvision")
    assert out.count("timm:resnet50") == 1
    out = fetched("--sweep-args", "--methods ce --noise none --preset fmnist-cpu --backbone timm:test_resnet "
                  "--pretrained")
    assert out.startswith("timm:test_resnet  timm/test_resnet.r160_in1k")


def test_fetch_refuses_what_has_no_weights(capsys):
    assert main(["weights", "fetch", "--backbone", "smallcnn"]) == 2
    assert "only timm:NAME backbones" in capsys.readouterr().err
    assert main(["weights", "fetch"]) == 2
    assert "name what to fetch" in capsys.readouterr().err
    assert main(["weights", "fetch", "--backbone", "timm:resnet5"]) == 2
    assert "unknown timm model 'resnet5'" in capsys.readouterr().err
