"""Backbones: a registry of factories ``(num_classes, in_chans) -> nn.Module``.

- ``smallcnn``: the out-of-the-box CPU backbone for 28x28 grey images (Fashion-MNIST).
- ``preact_resnet18``: DivideMix's CIFAR backbone (He et al. 2016, "Identity Mappings in
  Deep Residual Networks"; DivideMix's ``PreResNet.py``), written fresh.
- ``resnet34_cifar``: ResNet-34 with the CIFAR stem (3x3 stride 1, no max-pooling; He et al. 2016),
  the backbone of the CIFAR-N protocol and of ELR's CIFAR experiments, written fresh.
- ``timm:NAME``: any timm model, created with ``timm.create_model``. Pretrained weights come
  from a local file (``--weights PATH``) or, as timm takes them, from the Hugging Face Hub:
  downloaded on first use into huggingface_hub's cache unless ``HF_HUB_OFFLINE=1`` or
  ``--offline`` (:mod:`bench.backbones.weights`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.backbones.weights import Source, fetch_command, hub_offline
from bench.backbones.weights import ensure as ensure_weights
from bench.common.errors import UsageError
from bench.common.registry import Registry

BACKBONES: Registry = Registry("backbone")


@BACKBONES.register("smallcnn")
class SmallCNN(nn.Module):
    """Two-conv CNN for 28x28 grey images: 16/32 channels, 1568-128-10 head (207k params)."""

    # Sized so that one epoch of the 60k Fashion-MNIST training images takes about 11 s on a
    # 2-core CPU (channels-last); a 32/64-channel CNN without channels-last took about 70 s.

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * side * side, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv twice, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


@BACKBONES.register("preact_resnet18")
class PreActResNet18(nn.Module):
    """PreAct ResNet-18 for 32x32 inputs: DivideMix's CIFAR backbone (11.2M params)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        # DivideMix pools with avg_pool2d(4) on 32x32 inputs; adaptive pooling equals that
        # there and also accepts other sizes (28x28 Fashion-MNIST).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016): conv-BN-ReLU-conv-BN, plus the identity or a
    1x1-conv-BN shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@BACKBONES.register("resnet34_cifar")
class ResNet34CIFAR(nn.Module):
    """ResNet-34 for 32x32 inputs (21.3M params): the CIFAR-N protocol's backbone (Wei et al., ICLR
    2022, App. E) and ELR's: a 3x3 stride-1 stem without max-pooling, stages of 3/4/6/3 basic blocks."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, cin = [], 64
        for cout, stride, blocks in ((64, 1, 3), (128, 2, 4), (256, 2, 6), (512, 2, 3)):
            for i in range(blocks):
                stages.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))  # avg_pool2d(4) at 32 px


def _timm_create(name: str, image_size: int | None, **kwargs: object) -> nn.Module:
    """``timm.create_model``, telling models built for one input size (ViTs and the like) the
    run's image size; convolutional nets take any size and refuse the argument."""
    import timm

    default = timm.get_pretrained_cfg(name.split(".")[0])
    if image_size is None or (default is not None and default.input_size[-1] == image_size):
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:  # "unexpected keyword argument 'img_size'": the net is size-agnostic
        return timm.create_model(name, **kwargs)


def _create_timm(name: str, num_classes: int, in_chans: int, pretrained: bool,
                 weights: str | None, image_size: int | None = None, offline: bool = False) -> nn.Module:
    """A timm model: random weights, a local file (``weights``), or timm's pretrained weights,
    downloaded on first use unless ``offline`` (or ``HF_HUB_OFFLINE``) says not to."""

    _check_timm_name(name)
    common = {"num_classes": num_classes, "in_chans": in_chans}
    if not pretrained:
        return _timm_create(name, image_size, pretrained=False, **common)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--weights {weights}: no such file")
        net = _timm_create(name, image_size, pretrained=False, **common)
        load_weights_file(net, path, name)
        return net
    src, path, _ = ensure_weights(name, offline)
    return load_cached_pretrained(name, src, path, image_size, **common)


def load_cached_pretrained(name: str, src: Source, path: Path, image_size: int | None = None,
                           **kwargs: object) -> nn.Module:
    """timm model ``name`` with its pretrained weights, from the cached file ``path`` alone (what
    :func:`bench.backbones.weights.ensure` returned): timm loads it strictly, the classifier
    aside when ``kwargs`` ask for other classes. A run and ``bench weights fetch`` load so."""
    try:
        with hub_offline():
            return _timm_create(name, image_size, pretrained=True, **kwargs)
    except Exception as exc:  # timm raises several types for a file that does not load
        raise UsageError(f"the pretrained weights of timm:{name} ({src.label}) are in the cache ({path}) but do not "
                         f"load ({type(exc).__name__}: {str(exc).strip()[:160]}); delete that file and fetch it again "
                         f"(`{fetch_command(name)}`), or pass --weights PATH") from None


def load_weights_file(net: nn.Module, path: Path, name: str) -> None:
    """Load a local state dict into a timm model, strictly.

    timm's own file loading (``pretrained_cfg_overlay``) is not strict: a file of another model
    loads with only a logged warning and leaves random weights. Here every tensor of the model
    must come from the file, except the classifier (re-initialised when the run's class count
    differs) and the first convolution adapted to other input channels as timm does; anything
    else fails in one line.
    """
    import timm.models

    def fail(why: str) -> UsageError:
        return UsageError(f"--weights {path} does not load into timm:{name}: {why}")

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise fail(f"unreadable ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise fail("not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    first = cfg.get("first_conv")
    own = net.state_dict()
    for key in list(state):
        if key not in own or own[key].shape == state[key].shape:
            continue
        if any(key.startswith(h + ".") for h in heads):
            del state[key]  # the run's own classifier
        elif first and key == first + ".weight" and state[key].dim() == 4:
            state[key] = timm.models.adapt_input_conv(own[key].shape[1], state[key])
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ
        raise fail(str(exc).splitlines()[-1].strip()[:160]) from None
    missing = [k for k in missing if not any(k.startswith(h + ".") for h in heads)]
    if missing or unexpected:
        bad = missing or unexpected
        raise fail(f"{len(missing)} tensors missing from the file, {len(unexpected)} unexpected (e.g. {bad[0]})")


def create_backbone(name: str, num_classes: int, in_chans: int, image_size: int,
                    pretrained: bool = False, weights: str | None = None, offline: bool = False) -> nn.Module:
    """Build backbone ``name`` (a registered name or ``timm:NAME``); ``offline``: pretrained
    weights come only from the cache (as with ``HF_HUB_OFFLINE=1``)."""
    if name.startswith("timm:"):
        return _create_timm(name[5:], num_classes, in_chans, pretrained, weights, image_size, offline)
    factory = BACKBONES.get(name)
    if pretrained or weights:
        raise UsageError(f"backbone {name!r} has no pretrained weights; use a timm:NAME backbone")
    return factory(num_classes=num_classes, in_chans=in_chans, image_size=image_size)


def check_backbone_name(name: str) -> None:
    """Raise a one-line error for an unknown backbone name (before any data is loaded)."""
    if name.startswith("timm:"):
        _check_timm_name(name[5:])
        return
    BACKBONES.canonical(name)


def _check_timm_name(name: str) -> None:
    """An exact timm model name (``is_model``, not a pattern), a pretrained tag allowed."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UsageError(f"unknown timm model {name!r}{hint}; see timm.list_models() for valid names")


def count_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one input of ``shape`` (C, H, W), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    model.train(was_training)
    return int(counter.get_total_flops())
