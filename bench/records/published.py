"""Published test accuracies, the project's reference data (``refdata/published.csv``), and
which of them a run may be set beside (``bench table --paper``, ``--gap``; ``bench list
published``).

``refdata/published.csv`` holds one published number per row, with its source. Columns:

- ``method``, ``dataset``: the harness's names (``bench list methods``, ``bench list datasets``).
- ``noise``: the harness's noise model (``bench list noise``) where the source's convention is
  known. ``sym`` (the new label is one of the OTHER C-1 classes: Co-teaching) and ``sym-biased``
  (drawn from ALL C classes, the true one included: the code of DivideMix, ELR, ELR+ and IDO)
  are different settings; the IDO code's CIFAR-10 "asym" is ``pairflip``. ``asym-blocks`` is no
  harness model: ELR's and ELR+'s CIFAR-100 "asym" flips to the next class within index blocks
  of five (classes 0-4, 5-9, ...), not within the real superclasses as the harness's ``asym``
  does, so nothing is compared with it. Where the source does not state its convention the name
  it uses is kept (``noise_basis`` says so). ``none`` for real noise (CIFAR-N, Clothing1M, ...).
- ``rate``: the nominal noise rate; empty for real noise.
- ``labels``: the label set of the data sets that ship several (``--set label=``): CIFAR-10N
  ``aggre``, ``random1``, ``worse`` (published as "worst"); CIFAR-100N ``noisy``. Empty otherwise.
- ``acc``, ``std``: mean test accuracy in % and the standard deviation the source reports
  (empty where it gives none).
- ``which``: ``best`` (best test accuracy over epochs), ``last`` (final epoch), ``val`` (the
  checkpoint chosen on a noisy validation split) or ``unspecified`` (the source does not say).
- ``protocol``: the backbone as a key, random initialisation unless ``-pretrained``
  (ImageNet): ``preact-resnet18``; ``resnet34-cifar`` (3x3 stride-1 stem, no max-pool: ELR's and
  the CIFAR-N code's); ``resnet34-tv`` (torchvision's ImageNet-stem ResNet-34); ``resnet34``
  (stem not stated); ``resnet50``; ``resnet50-pretrained``; ``vit-b16-pretrained``; ``cnn8`` (the
  APL/AFL 8-layer CNN); ``inception-resnet-v2``; ``unknown`` (not stated: matches no run).
- ``epochs``: the training epochs the source states (the IDO repository's 5 + 10 is 15; the
  CIFAR-N paper's shared protocol, App. E, 100); empty where it states none.
- ``variant``: what the number needs of the run besides its method, as ``key=value`` of the run's
  logged parameters (M-correction's ``method.variant=hard`` for M-DYR-H, ``dynamic`` for
  MD-DYR-SH; ELR* ``scheduler=cosine``), or, without ``=``, a variant the harness does not run
  (CORES* with its phase-2 consistency training); empty for the method as the harness runs it.
- ``own``: ``yes`` for the method's own paper or official code, ``no`` for a third party's run.
- ``uncertain``: ``yes`` where the text was second-hand or OCR-damaged.
- ``noise_published``: the noise name as the source writes it.
- ``noise_basis``: why ``noise`` is what it is: ``code: ...`` (read in the official code that
  made the number), ``assumed: ...`` (a run in a paper's setting whose code is known),
  ``unknown: ...`` (kept as published), ``data: ...`` (real noise).
- ``which_published``, ``backbone``: as published (epochs, seeds, schedule).
- ``source``: the primary source: paper and table, or official repository and file, with
  notes; the standard deviation, where the source text carried it, is in ``std``.

A run's cell is set beside the numbers of the same method, data set, noise model and rate (or
label set), backbone protocol (:func:`run_protocol`, from the logged ``backbone``,
``pretrained`` and ``weights``), best or last (the table's metric), the epochs where the source
states them, the variant, and a run on the whole data (no ``--subset``/``--test-subset``).
``unspecified`` numbers stand beside either metric, marked ``?``, as are numbers whose epochs are
not stated or whose noise convention is assumed or unknown; ``!`` marks uncertain
transcriptions. Best is never set beside last, nor ``val`` beside either. The optimiser and
schedule are not compared beyond ``variant``: the notes of `bench list published` give them.
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

PUBLISHED_CSV = Path(__file__).parent / "refdata" / "published.csv"
WHICH = ("best", "last", "val", "unspecified")
METRIC_WHICH = {"best_test_acc": "best", "last_test_acc": "last"}
# timm model names whose protocol key differs from the name (the rest: '_' -> '-')
TIMM_KEYS = {"resnet34": "resnet34-tv", "resnet50": "resnet50", "inception_resnet_v2": "inception-resnet-v2"}
UNSURE = "?"     # best/last not stated, or the noise convention assumed or unknown
UNCERTAIN = "!"  # second-hand or OCR-damaged text


@lru_cache(maxsize=1)
def _read() -> pd.DataFrame:
    df = pd.read_csv(PUBLISHED_CSV, dtype={"labels": str, "std": float, "rate": float, "epochs": str, "variant": str},
                     keep_default_na=False, na_values={"rate": [""], "std": [""]})
    return df


def published() -> pd.DataFrame:
    """Every published number (a copy: callers may change it)."""
    return _read().copy()


def setting_text(noise: str, rate: float, labels: str = "") -> str:
    """A setting as tables name it: ``sym-biased:0.5``, ``label=aggre``, ``none``."""
    if labels:
        return f"label={labels}"
    if noise == "none" or rate != rate:
        return noise
    return f"{noise}:{rate:g}"


def flags(row: Any) -> str:
    """``?`` and/or ``!`` for a row (see the module docstring)."""
    unsure = (row.which == "unspecified" or str(row.noise_basis).startswith(("assumed", "unknown"))
              or not row.epochs)
    return (UNSURE if unsure else "") + (UNCERTAIN if row.uncertain == "yes" else "")


def acc_text(row: Any) -> str:
    return f"{row.acc:g}" + (f" ± {row.std:.2f}" if row.std == row.std else "")


def short_source(source: str, width: int = 100) -> str:
    """The source without its notes, cut to ``width`` characters."""
    source = source.split("; note:")[0]
    return source if len(source) <= width else source[: width - 1] + "…"


def list_lines(df: pd.DataFrame) -> list[str]:
    """``bench list published``: one line per number."""
    if df.empty:
        return ["  (none)"]
    lines = []
    for r in df.itertuples():
        source = short_source(r.source)
        acc = acc_text(r) + flags(r)
        lines.append(f"  {r.method:<15} {r.dataset:<13} {setting_text(r.noise, r.rate, r.labels):<15} {acc:<14} "
                     f"{r.which:<11} {r.protocol:<20} {'own' if r.own == 'yes' else '3rd'}  {source}")
    return lines


def list_header(n: int) -> str:
    return (f"published: {n} test accuracies in % ({UNSURE} part of the protocol unstated or assumed, "
            f"{UNCERTAIN} uncertain transcription; all columns in bench/records/refdata/published.csv)")


# ----------------------------------------------------------------------------- runs


def run_protocol(params: dict[str, str]) -> str:
    """A run's backbone protocol key, from its logged parameters: ``timm:resnet50`` with
    ``pretrained`` True is ``resnet50-pretrained``; weights from a file of one's own match no
    published number."""
    backbone = params.get("backbone") or "unlogged"
    arch = backbone.removeprefix("timm:").split(".")[0]  # timm's pretrained tag: resnet50.a1_in1k
    key = TIMM_KEYS.get(arch) or ("vit-b16" if arch.startswith("vit_base_patch16") else arch.replace("_", "-"))
    if params.get("weights"):
        return f"{key}-own-weights"
    return key + ("-pretrained" if str(params.get("pretrained", "")).lower() == "true" else "")


def run_labels(dataset: str, params: dict[str, str]) -> str:
    """The label set of a run on a data set that ships several (``--set label=``), else ''."""
    if params.get("dataset.label"):
        return params["dataset.label"]
    from datasets.base import DATASETS

    if dataset not in DATASETS:
        return ""
    opts = getattr(DATASETS.get(dataset), "Options", None)
    fields = {f.name: f.default for f in dataclasses.fields(opts)} if opts else {}
    return str(fields.get("label", ""))


def _family(noise: str) -> str:
    return {"sym-biased": "sym", "asym-blocks": "asym"}.get(noise, noise)


@dataclasses.dataclass
class Cell:
    """What a table cell's runs are: the keys published numbers are matched on."""

    method: str
    dataset: str
    noise: str
    rate: float
    labels: str
    protocol: str
    which: str
    params: dict[str, str] = dataclasses.field(default_factory=dict)  # the run's logged parameters

    def describe(self) -> str:
        return f"{self.protocol}, {self.which}, {setting_text(self.noise, self.rate, self.labels)}"


def cell_of(method: str, dataset: str, setting: str, params: dict[str, str], metric: str) -> Cell:
    if setting.startswith("label="):  # a data set's own label set (CIFAR-N): its column in a table
        noise, rate, labels = "none", "", setting.removeprefix("label=")
    else:
        noise, _, rate = setting.partition(":")
        labels = run_labels(dataset, params) if noise == "none" else ""
    return Cell(method, dataset, noise, float(rate) if rate else math.nan, labels, run_protocol(params),
                METRIC_WHICH[metric], dict(params))


def candidates(ref: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    """Published numbers of the cell's method, data set and setting, whatever their protocol:
    the noise model by name or family (sym and sym-biased, or the name the source used)."""
    part = ref[(ref["method"] == cell.method) & (ref["dataset"] == cell.dataset)]
    if cell.noise == "none":
        return part[(part["noise"] == "none") & (part["labels"] == cell.labels)]
    same_rate = (part["rate"] - cell.rate).abs() < 1e-9
    names = {cell.noise, _family(cell.noise)}
    named = part["noise"].isin(names) | part["noise"].map(_family).isin(names) | part["noise_published"].isin(names)
    return part[same_rate & named]


def differences(row: Any, cell: Cell) -> list[str]:
    """Why a published number is not set beside the cell (empty: it is)."""
    out = []
    if row.noise != cell.noise:
        out.append(f"noise model {row.noise}")
    if row.protocol != cell.protocol:
        out.append("backbone" if row.protocol != "unknown" else "backbone not stated")
    if row.which == "val":
        out.append("chosen on a validation split")
    elif row.which not in (cell.which, "unspecified"):
        out.append(f"{row.which} vs {cell.which}")
    run_epochs = cell.params.get("epochs", "")
    if row.epochs and run_epochs and int(float(run_epochs)) != int(row.epochs):
        out.append(f"{row.epochs} epochs vs {int(float(run_epochs))}")
    if row.variant:
        wanted = dict(c.split("=", 1) for c in row.variant.split(",")) if "=" in row.variant else None
        if wanted is None or any(cell.params.get(k) != v for k, v in wanted.items()):
            out.append(f"variant {row.variant}")
    for key in ("subset", "test_subset"):
        if cell.params.get(key) not in (None, "", "None", "0"):
            out.append(f"this run's --{key.replace('_', '-')} {cell.params[key]}")
    return out


class ReferenceColumn:
    """The published numbers beside an accuracy table's cells (``bench table --paper``), the
    gap to them (``--gap``), and the notes under the table: a legend, and for each cell with
    published numbers of its setting but none of its protocol, which there are and how they
    differ."""

    def __init__(self, df: pd.DataFrame, metric: str, gap: bool = False, digits: int = 2) -> None:
        self.ref = _read()
        self.metric, self.gap, self.digits = metric, gap, digits
        self.params: dict[tuple[str, str, str], dict[str, str]] = {}
        for key, p in zip(zip(df["row"], df["dataset"], df["setting"], strict=True), df["params"], strict=True):
            self.params.setdefault(key, p)
        self.methods = dict(zip(df["row"], df["method"], strict=True))
        self.footnotes: list[str] = []
        self.shown = False
        self.marks: set[str] = set()

    def cell(self, row: str, dataset: str, setting: str, ours: float) -> str:
        """The text after a cell's ``mean ± std``: `` (paper 94.6, gap -1.20)``, `` (note 2)`` or ''."""
        cell = cell_of(self.methods[row], dataset, setting, self.params[(row, dataset, setting)], self.metric)
        cands = candidates(self.ref, cell)
        if cands.empty:
            return ""
        same = [r for r in cands.itertuples() if not differences(r, cell)]
        if same:
            self.shown = True
            parts = []
            for r in same:
                mark = flags(r)
                self.marks |= set(mark)
                text = f"{r.acc:g}{mark}"
                if self.gap and ours == ours:
                    text += f", gap {ours - r.acc:+.{self.digits}f}"
                parts.append(text)
            return " (paper " + " / ".join(dict.fromkeys(parts)) + ")"  # one number from several sources: once
        groups: dict[tuple[str, ...], list[str]] = {}
        for r in cands.itertuples():
            key = (r.which, r.protocol, setting_text(r.noise, r.rate, r.labels), "; ".join(differences(r, cell)))
            mark = flags(r)
            self.marks |= set(mark)
            groups.setdefault(key, []).append(f"{r.acc:g}{mark}")
        published = ", ".join(f"{' / '.join(v)} ({w}, {p}, {s}: {d})" for (w, p, s, d), v in groups.items())
        self.footnotes.append(f"{row} {dataset} {setting}: no published number of this protocol; published "
                              f"{published}; this run: {cell.describe()}.")
        return f" (note {len(self.footnotes)})"

    def notes(self) -> list[str]:
        """The lines under the table: what the paper column is, the marks used, the footnotes."""
        if not (self.shown or self.footnotes):
            return []
        which = METRIC_WHICH[self.metric]
        out = [f"paper: published test accuracy (%) of the same method, data set, noise model and rate, backbone "
               f"protocol and epoch selection ({which}); `python -m bench list published` gives every number "
               "with its source."]
        if self.gap:
            out.append("gap: ours minus published, in points.")
        if UNSURE in self.marks:
            out.append(f"{UNSURE}: the source leaves part of its protocol unstated or it is assumed (best or last "
                       "not given, or its noise convention); shown beside best and last alike.")
        if UNCERTAIN in self.marks:
            out.append(f"{UNCERTAIN}: uncertain transcription (second-hand or OCR-damaged text).")
        return out + [f"note {i}: {text}" for i, text in enumerate(self.footnotes, 1)]
