"""Presets: every paper preset runs wrongevent on its data set's fixture (a tiny timm backbone
in place of the pretrained one, 32 px on CPU), command-line values override a preset's, and the
resolved values are what gets logged; local weights files load into timm backbones."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.training.data import make_view_maker
from bench.training.presets import PRESETS
from tests.fixtures_data import MAKERS
from tests.helpers import metric_curve, run_cli, tracking_uri

PAPER = sorted(p for p in PRESETS if p != "fmnist-cpu")


def test_every_paper_benchmark_has_a_resnet50_and_a_vit_preset():
    for name in ("cifar100", "tiny-imagenet", "cifar100n", "clothing1m", "webvision", "cifar10", "food101n"):
        assert PRESETS[name].values["backbone"] == "timm:resnet50"
        assert PRESETS[name + "-vit"].values["backbone"] == "timm:vit_base_patch16_224"
        for p in (PRESETS[name], PRESETS[name + "-vit"]):
            assert p.values["pretrained"] and p.values["image_size"] == 224 and p.values["epochs"] == 15


@pytest.mark.slow
@pytest.mark.parametrize("preset", PAPER)
def test_preset_runs_wrongevent_on_its_fixture(preset, tmp_path):
    dataset = PRESETS[preset].values["dataset"]
    MAKERS[dataset](tmp_path / "data")
    tiny = "timm:test_vit" if preset.endswith("-vit") else "timm:test_resnet"
    s = run_cli(tmp_path, "--method", "wrongevent", "--preset", preset, "--data-root", str(tmp_path / "data"),
                "--backbone", tiny, "--no-pretrained", "--image-size", "32", "--epochs", "2", "--workers", "0")
    assert s["status"] == "finished" and s["dataset"] == dataset and s["epochs_done"] == 2
    params = MlflowClient(tracking_uri(tmp_path)).get_run(s["run_id"]).data.params
    assert params["preset"] == preset and params["backbone"] == tiny and params["image_size"] == "32"
    assert params["optimizer"] == PRESETS[preset].values["optimizer"]  # the preset's, not the data set's
    assert params["method.stage1_epochs"] == "1"
    assert len(metric_curve(tmp_path, s["run_id"], "test_acc")) == 2


@pytest.mark.slow
def test_command_line_overrides_a_preset_and_the_resolved_values_are_logged(tmp_path):
    s = run_cli(tmp_path, "--method", "ce", "--preset", "fmnist-cpu", "--epochs", "1", "--subset", "300",
                "--lr", "0.002")
    params = MlflowClient(tracking_uri(tmp_path)).get_run(s["run_id"]).data.params
    assert params["lr"] == "0.002" and params["subset"] == "300" and params["epochs"] == "1"
    assert params["augment"] == "none" and params["preset"] == "fmnist-cpu"  # the rest from the preset


@pytest.mark.slow
def test_clothing1m_preset_sets_the_epoch_sample(tmp_path):
    MAKERS["clothing1m"](tmp_path / "data")
    s = run_cli(tmp_path, "--method", "ce", "--preset", "clothing1m", "--data-root", str(tmp_path / "data"),
                "--backbone", "timm:test_resnet", "--no-pretrained", "--image-size", "32", "--epochs", "1",
                "--workers", "0", "--set", "samples_per_epoch=14")
    params = MlflowClient(tracking_uri(tmp_path)).get_run(s["run_id"]).data.params
    assert params["dataset.samples_per_epoch"] == "14" and params["batch_size"] == "64"


def test_unknown_preset_and_unknown_set_key(capsys):
    assert main(["run", "--method", "ce", "--preset", "nope"]) == 2
    assert "valid: cifar10," in capsys.readouterr().err
    assert main(["run", "--method", "ce", "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "method options:" in err and "data-set options:" in err


def test_list_presets():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["list", "presets", "--verbose"]) == 0
    out = buf.getvalue()
    assert all(name in out for name in PRESETS) and "lr=0.001" in out


def test_in_memory_images_are_resized_on_the_device():
    vm = make_view_maker((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), "crop-flip", False, size=48)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    for view in ("plain", "train", "strong"):
        assert vm(x, view, gen).shape == (2, 3, 48, 48)


def test_a_local_weights_file_loads_into_timm_resnet18(tmp_path):
    import timm

    from bench.backbones import create_backbone

    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    net = create_backbone("timm:resnet18", num_classes=7, in_chans=3, image_size=32, pretrained=True,
                          weights=str(path))
    loaded, want = net.state_dict(), source.state_dict()
    body = [k for k in want if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], want[k]) for k in body)  # every backbone tensor from the file
    assert net.fc.out_features == 7  # the classifier is new, for the run's classes


def test_a_weights_file_of_another_model_fails_in_one_line(tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save({"not": torch.zeros(1)}, path)
    code = main(["run", "--method", "ce", "--backbone", "timm:resnet18", "--pretrained", "--weights", str(path),
                 "--subset", "100", "--epochs", "1", "--out", str(tmp_path / "runs"),
                 "--tracking-uri", tracking_uri(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not load into timm:resnet18" in err and "\n" not in err


def test_weights_of_a_different_architecture_fail_in_one_line(tmp_path):
    import timm

    from bench.backbones import create_backbone
    from bench.common.errors import UsageError

    path = tmp_path / "r34.pth"
    torch.save({"state_dict": timm.create_model("resnet34").state_dict()}, path)  # a wrapped checkpoint
    with pytest.raises(UsageError, match="does not load into timm:resnet18"):
        create_backbone("timm:resnet18", 10, 3, 32, pretrained=True, weights=str(path))
    path = tmp_path / "grey.pth"  # 3-channel weights into a 1-channel net: first conv adapted, as timm does
    torch.save(timm.create_model("resnet18").state_dict(), path)
    net = create_backbone("timm:resnet18", 10, 1, 28, pretrained=True, weights=str(path))
    assert net.conv1.weight.shape[1] == 1
