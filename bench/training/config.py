"""A run's configuration, in two parts that never mix.

- :class:`RunConfig`: everything that decides the result. It is hashed (``config_hash``),
  logged (flattened, ``method.<option>`` for method options), saved with the checkpoint, and a
  resumed run takes it from there, unchangeable.
- :class:`Placement`: where the run happens and is recorded (device, data root, loader
  workers, tracking URI, experiment, output folder, progress display). A resumed run may
  change it freely.

Both are made by :mod:`bench.training.resolve` from a request; nothing else fills them in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from bench.common.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine")  # and step:S1[,S2...]: lr x 0.1 at those shares of the epochs


def step_milestones(scheduler: str, epochs: int) -> list[int]:
    """The epochs of ``--scheduler step:S1,S2,...`` (lr x 0.1 at each share S of the epochs: the
    CIFAR-N protocol's x 0.1 at 60 of 100 is ``step:0.6``); [] for the other schedulers."""
    if not scheduler.startswith("step:"):
        return []
    try:
        shares = [float(s) for s in scheduler.removeprefix("step:").split(",")]
    except ValueError:
        shares = []
    rising = all(a < b for a, b in zip(shares[:-1], shares[1:], strict=True))
    if not shares or not all(0 < s < 1 for s in shares) or not rising:
        raise UsageError(f"--scheduler {scheduler}: expected step:S1[,S2...] with increasing shares of the "
                         "epochs in (0, 1), e.g. step:0.6 (lr x 0.1 at 60% of the epochs)")
    return [max(1, round(s * epochs)) for s in shares]
TRISTATE = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTS = ("none", "flip", "crop", "crop-flip")  # of the shared training view (bench/training/data.py)
# where a method's own views (weak, weak2, strong) start from: the run's --augment (shared) or
# the method's published augmentation, crop + flip (official); bench/common/views.py View.base_augment
VIEW_POLICIES = ("shared", "official")
# whose reading of a method runs where its paper and its official code differ: the paper's (each
# option's default) or the official code's (the options each method names in
# ``Method.official_options``, set by the resolver unless --set gives them); methods/base.py
FIDELITIES = ("paper", "official")
# torch.compile of every backbone a method builds (off, or a torch.compile mode; reduce-overhead
# adds CUDA graphs on CUDA); bench/training/trainer.py
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
FUSED = ("off", "on")  # the single-kernel (fused) implementation of SGD, Adam and AdamW
DECODERS = ("cpu", "gpu")  # where on-disk JPEGs are decoded (bench/training/disk.py)


ON_NONFINITE = ("stop", "skip-step")  # a non-finite training loss: bench/training/health.py
# fields added after runs were logged: left out of the hash at their default, so a sweep still
# recognises the runs it finished before the field existed
ADDED_LATER: dict[str, Any] = {"val_fraction": 0.0, "test_subset": None, "compile": "off", "fused": "off",
                               "decode": "cpu", "fidelity": "paper", "on_nonfinite": "stop"}


@dataclass
class RunConfig:
    """Every setting that decides a run's result. Defaults here are generic; a data set's own
    protocol (``Dataset.defaults``) fills what the request leaves unset."""

    method: str
    dataset: str = "fashion-mnist"
    noise: str = "none"
    noise_rate: float = 0.0
    noise_seed: int = 1  # fixed by default: training seeds vary, the noisy labels do not
    seed: int = 1
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    scheduler: str = "none"
    backbone: str = "smallcnn"
    pretrained: bool = False
    weights: str | None = None
    augment: str = "crop-flip"
    views: str = "shared"  # a method's own views on top of --augment, or as the method published them
    # the paper's reading of each method, or its official code's where they differ (the method's
    # official_options, which the resolver puts in method_options)
    fidelity: str = "paper"
    # a non-finite training loss: stop the run (diverged, exit 3) or skip that step's update
    # (bench/training/health.py)
    on_nonfinite: str = "stop"
    image_size: int | None = None  # side of the images the backbone sees; None: the data set's
    subset: int | None = None
    val_fraction: float = 0.0  # held out of the noisy training set for validation (studies: 0.1)
    test_subset: int | None = None  # evaluate on N test images, stratified (quick checks, tests); None: all
    amp: str = "auto"            # auto: on for CUDA (fp16 + grad scaling), off on CPU
    channels_last: str = "auto"  # auto: on (CUDA and CPU: measured faster for the conv nets)
    # opt-in, off by default: neither was measured faster on a GPU yet (README, "Speed")
    compile: str = "off"  # torch.compile mode of the backbones (nn.Module.compile: state_dict keys unchanged)
    fused: str = "off"    # fused optimiser kernels (on CUDA they also spare GradScaler's per-step sync)
    eval_batch_size: int = 1024
    # on-disk data: JPEGs decoded by the loader's workers (cpu) or in batches on the device (gpu:
    # nvJPEG, then resize and crop there); the pixels differ a little, so it is part of the result
    decode: str = "cpu"
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        """The run's name, method and setting first: ``wrongevent-cifar100-sym0.4-s1``."""
        noise = "clean" if self.noise == "none" else f"{self.noise}{self.noise_rate:g}"
        return f"{self.method}-{self.dataset}-{noise}-s{self.seed}"

    @property
    def setting(self) -> str:
        """The noise setting as tables name it: ``sym:0.4`` or ``none``."""
        return "none" if self.noise == "none" else f"{self.noise}:{self.noise_rate:g}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """From a saved or logged dict; keys of other parts (a flat config.json of old) are left out."""
        return cls(**{k: v for k, v in d.items() if k in field_names(cls)})

    def flatten(self) -> dict[str, str]:
        """Parameters for MLflow: every field, options as ``method.<option>`` / ``dataset.<option>``."""
        flat = {k: v for k, v in self.to_dict().items() if k not in ("method_options", "dataset_options")}
        flat.update({f"method.{k}": v for k, v in self.method_options.items()})
        flat.update({f"dataset.{k}": v for k, v in self.dataset_options.items()})
        return {k: "" if v is None else str(v) for k, v in flat.items()}

    def hash(self) -> str:
        """Hash of everything that decides the result, i.e. of every field."""
        d = self.to_dict()
        for key, default in ADDED_LATER.items():  # at its default, a later field leaves old hashes as they were
            if d.get(key) == default:
                d.pop(key)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def validate(self) -> None:
        """One-line errors for values no run can use."""
        from datasets.noise import NoiseError, NoiseSpec

        try:  # the noise model's name first: its error is the useful one
            NoiseSpec(self.noise, 0.0, 0)
        except NoiseError as exc:
            if "unknown noise model" in str(exc):
                raise UsageError(str(exc)) from None  # the rest of NoiseSpec's checks are the ones below
        _check(self.epochs >= 1, f"--epochs {self.epochs}: must be at least 1")
        _check(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1")
        _check(self.eval_batch_size >= 1, f"--eval-batch-size {self.eval_batch_size}: must be at least 1")
        _check(self.lr > 0, f"--lr {self.lr}: must be positive")
        _check(self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0")
        _check(0 <= self.noise_rate < 1, f"--noise-rate {self.noise_rate} is outside [0, 1)")
        _check(self.subset is None or self.subset >= 1, f"--subset {self.subset}: must be at least 1")
        _check(self.test_subset is None or self.test_subset >= 1,
               f"--test-subset {self.test_subset}: must be at least 1")
        _check(0 <= self.val_fraction <= 0.5, f"--val-fraction {self.val_fraction}: must lie in [0, 0.5]")
        _check(self.image_size is None or 8 <= self.image_size <= 1024,
               f"--image-size {self.image_size}: must lie in [8, 1024]")
        _check(0 <= self.seed < 2**32, f"--seed {self.seed}: must lie in [0, 2**32)")
        _check(0 <= self.noise_seed < 2**32, f"--noise-seed {self.noise_seed}: must lie in [0, 2**32)")
        _check(self.momentum >= 0, f"--momentum {self.momentum}: must be >= 0")
        for name in ("lr", "weight_decay", "momentum", "noise_rate", "val_fraction"):
            value = getattr(self, name)
            _check(math.isfinite(value), f"--{name.replace('_', '-')} {value}: must be a finite number")
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        if not self.scheduler.startswith("step:"):
            _choice("--scheduler", self.scheduler, SCHEDULERS + ("step:SHARES",))
        step_milestones(self.scheduler, 100)  # step:SHARES checked
        _choice("--amp", self.amp, TRISTATE)
        _choice("--channels-last", self.channels_last, TRISTATE)
        _choice("--compile", self.compile, COMPILE_MODES)
        _choice("--fused", self.fused, FUSED)
        _choice("--decode", self.decode, DECODERS)
        _choice("--augment", self.augment, AUGMENTS)
        _choice("--views", self.views, VIEW_POLICIES)
        _choice("--fidelity", self.fidelity, FIDELITIES)
        _choice("--on-nonfinite", self.on_nonfinite, ON_NONFINITE)
        if self.noise == "none":
            _check(self.noise_rate == 0, f"--noise-rate {self.noise_rate} given with --noise none; "
                                         "name a noise model (sym, sym-biased, pairflip, asym, instance)")
        else:
            _check(self.noise_rate > 0, f"--noise {self.noise} needs --noise-rate R with 0 < R < 1")


@dataclass
class Placement:
    """Where a run happens and is recorded; nothing here changes its result."""

    device: str = "auto"
    data_root: str | None = None
    workers: int | None = None  # loader workers for on-disk data sets; None: the cores this process may use
    prefetch: int = 2  # batches each worker makes ahead (DataLoader's prefetch_factor)
    pin_memory: str = "auto"  # pinned host memory for on-disk batches (auto: on for CUDA)
    tracking_uri: str | None = None
    experiment: str = "bench"
    out: str = "results/runs"
    progress: bool | None = None  # a tqdm bar; None: on a terminal
    # pretrained weights only from the cache (as HF_HUB_OFFLINE=1): a missing file fails at once
    offline: bool = False
    # torch's intra-op CPU threads for the run (torch.set_num_threads); None: torch's own
    # default, which follows OMP_NUM_THREADS, else the cores. Logged (env.threads): results
    # differ in their last digits between thread counts, times more.
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Placement:
        return cls(**{k: v for k, v in d.items() if k in field_names(cls)})

    def validate(self) -> None:
        _check(self.workers is None or self.workers >= 0, f"--workers {self.workers}: must be >= 0")
        _check(self.prefetch >= 1, f"--prefetch {self.prefetch}: must be >= 1")
        _check(self.threads is None or self.threads >= 1, f"--threads {self.threads}: must be >= 1")
        _choice("--pin-memory", self.pin_memory, TRISTATE)
        _choice("--device", self.device, DEVICES)


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def result_params(params: dict[str, str], drop: frozenset[str] = frozenset()) -> dict[str, str]:
    """A run's logged parameters (strings, as in MLflow) that decide its result: the
    :class:`RunConfig` ones (so neither placement nor provenance), without ``drop``, and
    without fields added later that are at their default (so runs logged before a field
    existed compare equal to runs at its default)."""
    # a None default is logged as "" by MLflow (and "None" by str): both mean the field's default
    later = {k: ({"", "None"} if v is None else {str(v)}) for k, v in ADDED_LATER.items()}
    ours = field_names(RunConfig)
    return {k: v for k, v in params.items()
            if (k in ours or k.startswith(("method.", "dataset."))) and k not in drop and v not in later.get(k, ())}


def params_key(params: dict[str, str]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _choice(flag: str, value: str, valid: tuple[str, ...]) -> None:
    _check(value in valid, f"{flag} {value}: valid values are {', '.join(valid)}")


def parse_set(pairs: list[str] | dict[str, Any] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs (or a dict of them) as a dict of strings (typed later by
    their owner)."""
    if isinstance(pairs, dict):
        return {str(k): str(v) for k, v in pairs.items()}
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out
