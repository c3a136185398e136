"""Presets: named protocols (``--preset NAME``) that pin a benchmark's settings.

A preset fills run settings between the data set's defaults and the command line: anything
given on the command line wins, and the resolved values (not the preset's) are what gets
logged, with the preset's name. The paper presets follow IDO's official code
(``stage_1.py``, ``stage_2.py``, ``config/``): ImageNet-pretrained timm backbones at 224 px, stage 1 = 5 and stage 2
= 10 epochs (wrongevent's default split of a 15-epoch pretrained run), batch 128; ResNet-50
with AdamW lr 1e-3 wd 1e-5, ViT-B/16 with SGD lr 1e-2 wd 1e-5 and no momentum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.common.errors import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any]  # RunConfig fields, including the data set
    dataset_options: dict[str, str] = field(default_factory=dict)


# IDO official code: ResNet-50 AdamW lr 1e-3 wd 1e-5; ViT-B/16 SGD lr 1e-2 wd 1e-5, momentum 0
RESNET50 = {"backbone": "timm:resnet50", "pretrained": True, "optimizer": "adamw", "lr": 1e-3,
            "weight_decay": 1e-5, "scheduler": "none"}
VIT_B16 = {"backbone": "timm:vit_base_patch16_224", "pretrained": True, "optimizer": "sgd", "lr": 1e-2,
           "momentum": 0.0, "weight_decay": 1e-5, "scheduler": "none"}
# paper: 5 + 10 epochs; batch 128 (official configs), 224 px, crop + flip
PROTOCOL = {"epochs": 15, "batch_size": 128, "image_size": 224, "augment": "crop-flip"}

PAPER_DATASETS = {  # preset name -> (data set, protocol changes, data-set options)
    "cifar100": ("cifar100", {}, {}),
    "tiny-imagenet": ("tiny-imagenet", {}, {}),
    "cifar100n": ("cifar100n", {}, {"label": "noisy"}),
    # Clothing1M stage 2: batch 64 with 1000 x 64 class-balanced samples per epoch (official code);
    # one batch size serves both stages here, so stage 1 runs at 64 too (official: 128)
    "clothing1m": ("clothing1m", {"batch_size": 64}, {"samples_per_epoch": "64000"}),
    "webvision": ("webvision", {}, {}),
    # official CIFAR-10 stage 2 uses batch 256; one batch size serves both stages here (128)
    "cifar10": ("cifar10", {}, {}),
    "food101n": ("food101n", {}, {}),
}


def _build() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for name, (dataset, extra, dopts) in PAPER_DATASETS.items():
        for suffix, backbone, label in (("", RESNET50, "ResNet-50"), ("-vit", VIT_B16, "ViT-B/16")):
            values = {"dataset": dataset, **PROTOCOL, **backbone, **extra}
            presets[name + suffix] = Preset(
                name + suffix, f"IDO protocol on {dataset}: pretrained {label}, 224 px, 5 + 10 epochs, "
                f"batch {values['batch_size']}", values, dict(dopts))
    # The CPU benchmark: the memorisation regime, where CE's last accuracy
    # falls clearly under its best at sym 40% (measured here with 6,000 images: best 0.845,
    # 0.679 at epoch 30, 0.586 at 40). 4,000 training images and 30 epochs (no augmentation of
    # the plain view; the small CNN, Adam lr 1e-3, batch 128) keep that regime and let the
    # 5-method x 4-noise x 3-seed grid finish in under 100 minutes on 2 cores (5,000 took
    # 106.5 minutes on a partly contended machine).
    presets["fmnist-cpu"] = Preset(
        "fmnist-cpu", "Fashion-MNIST on CPU in the memorisation regime: smallcnn, 4,000 samples, "
        "no plain-view augmentation, 30 epochs",
        {"dataset": "fashion-mnist", "backbone": "smallcnn", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
         "batch_size": 128, "subset": 4000, "augment": "none", "epochs": 30, "scheduler": "none"})
    return presets


PRESETS: dict[str, Preset] = _build()


# presets that stand for a data set's paper preset: `--preset paper --dataset cifar100` is
# `--preset cifar100`; a sweep also takes the paper's noise grid for the data set from them
PAPER_ALIASES = {"paper": "", "paper-vit": "-vit"}


def get_preset(name: str, dataset: str | None = None) -> Preset:
    """The preset ``name``; ``paper``/``paper-vit`` resolve to ``dataset``'s paper preset."""
    if name in PAPER_ALIASES:
        valid = ", ".join(PAPER_DATASETS)
        if dataset is None:
            raise UsageError(f"--preset {name} stands for a data set's paper protocol; give --dataset ({valid})")
        if dataset not in PAPER_DATASETS:
            raise UsageError(f"--preset {name}: the IDO paper has no protocol for {dataset}; valid data sets: {valid}")
        return PRESETS[dataset + PAPER_ALIASES[name]]
    if name not in PRESETS:
        valid = ", ".join([*sorted(PRESETS), *PAPER_ALIASES])
        raise UsageError(f"--preset {name}: unknown preset; valid: {valid}")
    return PRESETS[name]


def describe_presets() -> list[tuple[str, str, str]]:
    """(name, description, values) of every preset, the paper aliases included."""
    rows = []
    for name, preset in sorted(PRESETS.items()):
        values = {**preset.values, **{f"set {k}": v for k, v in preset.dataset_options.items()}}
        rows.append((name, preset.description, ", ".join(f"{k}={v}" for k, v in values.items())))
    for alias, suffix in PAPER_ALIASES.items():
        label = "ViT-B/16" if suffix else "ResNet-50"
        rows.append((alias, f"the --dataset's IDO paper preset with {label} ({', '.join(PAPER_DATASETS)}); "
                            "in a sweep also the paper's noise grid", ""))
    return rows
