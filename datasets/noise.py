"""Synthetic label noise: one seeded function that turns clean labels into given labels.

The literature uses one name for several different things (DivideMix's "asym" is a class map,
Co-teaching's "pairflip" a cyclic shift, IDO's CIFAR-10 "asym" code is pair-flip), so every
model here is named exactly and each docstring says which paper and official file its
convention follows and where it differs.
Noise is drawn once, for the whole label vector, from ``np.random.default_rng(spec.seed)``
and nothing else, so it depends only on (labels, model, rate, seed, class map, features) and
never on the training seed or on global RNG state. The caller saves the result as a file and
logs :func:`realized_rate` and :func:`transition_matrix` next to the nominal values from
:func:`expected_rate` and :func:`expected_transition`.

Models (``NOISE_MODELS``):

- ``none``: labels unchanged.
- ``sym``: exactly ``round(r N)`` samples get one of the OTHER ``C - 1`` classes (Co-teaching).
- ``sym-biased``: exactly ``int(r N)`` samples get one of ALL ``C`` classes (DivideMix).
- ``pairflip``: exactly ``round(r N)`` samples go from class ``i`` to ``(i + 1) mod C``.
- ``asym``: exactly ``int(r N)`` samples are mapped through a semantic class map (DivideMix).
- ``instance``: part-dependent noise of Xia et al. (NeurIPS 2020), Algorithm 2.

A rate of 0 returns a copy of the clean labels for every model (the request is still
validated first, so a missing class map or missing features fail even at rate 0).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bench.common.noise_models import CLASS_DEPENDENT, NOISE_MODELS, describe_noise  # noqa: F401  (re-exported)

# Xia et al. draw each sample's flip rate from N(r, 0.1^2) truncated to [0, 1].
INSTANCE_FLIP_STD = 0.1
# Rows per matmul in the instance model: bounds the float64 copy of the features
# (8192 x 3072 x 8 bytes = 200 MB for CIFAR) without changing the result.
_INSTANCE_BLOCK = 8192


class NoiseError(ValueError):
    """A bad noise request; ``str(e)`` is one line saying what is wrong and what is valid."""


@dataclass(frozen=True)
class NoiseSpec:
    """Which noise to apply: model name, nominal rate in [0, 1) and the noise seed.

    The seed is the noise seed, not the training seed: the same spec on the same labels
    always gives the same noisy labels.
    """

    model: str
    rate: float
    seed: int

    def __post_init__(self) -> None:
        if self.model not in NOISE_MODELS:
            close = difflib.get_close_matches(str(self.model), NOISE_MODELS, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise NoiseError(
                f"unknown noise model {self.model!r}{hint}; valid: {', '.join(NOISE_MODELS)}"
            )
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float, np.floating)):
            raise NoiseError(f"noise rate must be a number in [0, 1), got {self.rate!r}")
        if not 0 <= self.rate < 1:  # also rejects nan
            raise NoiseError(f"noise rate {self.rate} is outside [0, 1)")
        if self.model == "none" and self.rate != 0:
            raise NoiseError(
                f"noise model 'none' takes rate 0, got {self.rate}; "
                f"for noise use one of {', '.join(NOISE_MODELS[1:])}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise NoiseError(f"noise seed must be a non-negative integer, got {self.seed!r}")
        if self.seed < 0:
            raise NoiseError(f"noise seed must be a non-negative integer, got {self.seed}")


# ----------------------------------------------------------------------------- validation


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise NoiseError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if num_classes < 2:
        raise NoiseError(f"num_classes must be an integer >= 2, got {num_classes}")


def _as_labels(labels: np.ndarray, num_classes: int, what: str = "labels") -> np.ndarray:
    """``labels`` as a 1-D int64 array (a new array only if a conversion is needed)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise NoiseError(
            f"{what} must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise NoiseError(f"{what} must lie in [0, {num_classes}), found {arr.min()}..{arr.max()}")
    return arr.astype(np.int64, copy=False)


def _map_lookup(
    asym_map: Mapping[int, int] | None, num_classes: int, dataset: str | None
) -> np.ndarray:
    """The class map as a lookup table ``table[i]`` (classes not in the map stay)."""
    if asym_map is None:
        where = f"data set {dataset!r}" if dataset else "this data set"
        raise NoiseError(
            f"noise model 'asym' needs a class map; {where} has none "
            f"(pass asym_map, or use one of sym, sym-biased, pairflip, instance)"
        )
    table = np.arange(num_classes, dtype=np.int64)
    for src, dst in asym_map.items():
        for k in (src, dst):
            if (
                isinstance(k, bool)
                or not isinstance(k, (int, np.integer))
                or not 0 <= k < num_classes
            ):
                raise NoiseError(
                    f"asym_map entry {src!r}: {dst!r} must map a class in [0, {num_classes}) "
                    f"to a class in [0, {num_classes})"
                )
        table[src] = dst
    return table


def _as_features(features: np.ndarray | None, n: int) -> np.ndarray:
    """``features`` as an (N, D) array without copying (flattening is a view when possible)."""
    if features is None:
        raise NoiseError(
            "noise model 'instance' needs the training images as features "
            "(pass features=, an array with one row per label)"
        )
    arr = np.asarray(features)
    if arr.ndim == 0 or arr.shape[0] != n or arr.size == 0:
        raise NoiseError(
            f"features must have one non-empty row per label ({n}), got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise NoiseError(f"features must be integer or float, got dtype {arr.dtype}")
    return arr.reshape(n, -1)


# ----------------------------------------------------------------------------- noise models


def _pick(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` distinct sample indices, uniformly at random."""
    return rng.choice(n, size=count, replace=False)


def _sym(labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric noise, exact: round(r N) samples get a uniform label among the OTHER C - 1.

    Source: Han et al., "Co-teaching", NeurIPS 2018, bhanML/Co-teaching
    ``data/utils.py::noisify_multiclass_symmetric`` (transition diagonal 1 - r, off-diagonal
    r / (C - 1)). Co-teaching flips each sample independently with probability r; we flip
    exactly round(r N) samples (the variant the reference allows), so the realised rate is
    round(r N) / N and every picked sample changes. Adding an offset uniform in 1..C-1 modulo
    C gives a uniform label among the other classes without a loop.
    """
    out = labels.copy()
    idx = _pick(rng, labels.size, round(float(rate) * labels.size))
    out[idx] = (labels[idx] + rng.integers(1, num_classes, size=idx.size)) % num_classes
    return out


def _sym_biased(
    labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Biased symmetric noise: int(r N) samples get a label uniform over ALL C (may keep it).

    Source: Li et al., "DivideMix", ICLR 2020, LiJunnan1992/DivideMix ``dataloader_cifar.py``
    (``int(r * 50000)`` shuffled indices, ``random.randint(0, 9)``, inclusive, for CIFAR-10).
    The realised rate is about r (1 - 1/C). Labels are drawn in 0..C-1: the IDO code's
    ``randint(0, C)`` off-by-one, which can produce the non-existent label C, is not copied.
    ``int`` (truncation) is kept as in DivideMix, including its float quirk
    (``int(0.29 * 100) == 28``).
    """
    out = labels.copy()
    idx = _pick(rng, labels.size, int(rate * labels.size))
    out[idx] = rng.integers(0, num_classes, size=idx.size)
    return out


def _pairflip(
    labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Pair flipping: round(r N) samples go from class i to (i + 1) mod C.

    Source: Co-teaching, bhanML/Co-teaching ``data/utils.py::noisify_pairflip`` (diagonal
    1 - r, entry (i, i+1 mod C) r). As for ``sym`` we flip an exact count instead of
    independent per-sample draws. IDO's CIFAR-10 "asym" is this model.
    """
    out = labels.copy()
    idx = _pick(rng, labels.size, round(float(rate) * labels.size))
    out[idx] = (labels[idx] + 1) % num_classes
    return out


def _asym(
    labels: np.ndarray, table: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Semantic class map: int(r N) samples picked over the WHOLE set are mapped by ``table``.

    Source: DivideMix ``dataloader_cifar.py`` (CIFAR-10 map truck->automobile,
    bird->airplane, deer->horse, cat<->dog, others stay). Picked samples of classes that map to
    themselves stay, so the realised rate is about r times the share of samples whose class
    maps elsewhere. ELR (Liu et al., NeurIPS 2020) uses the same CIFAR-10 map but flips a
    fraction r of each source class; the expected transition matrix is the same, only the
    per-class counts are exact there and hypergeometric here.
    """
    out = labels.copy()
    idx = _pick(rng, labels.size, int(rate * labels.size))
    out[idx] = table[labels[idx]]
    return out


def _instance(
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    rng: np.random.Generator,
    features: np.ndarray,
) -> np.ndarray:
    """Part-dependent (instance) noise: Xia et al., NeurIPS 2020, Algorithm 2.

    Source: xiaoboxia/Part-dependent-label-noise ``tools.py::get_instance_noisy_label``.
    1. q_i ~ N(r, 0.1^2) truncated to [0, 1] (scipy ``truncnorm``), independent of x.
    2. W ~ N(0, 1), shape (C, D, C).
    3. v = xhat_i @ W[y_i]; v[y_i] = -inf; row = q_i softmax(v); row[y_i] += 1 - q_i;
       the given label is drawn from row.
    Our convention for xhat (the official ``data.py`` feeds raw 0-255 pixels, which makes the
    softmax nearly one-hot, so each class flips almost only to one other class): features are
    flattened to float64 and each sample's vector is divided by its L2 norm (a zero vector
    stays zero). Then every entry of v is N(0, 1) over W and the flips spread over several
    classes; the labels do not change if the features are rescaled. Centring (e.g. per-channel
    normalisation) is the caller's choice and does change the labels.
    Draw order, which fixes the labels for a seed: q (N values), W (float32, to halve its
    245 MB for CIFAR-100), one uniform per sample. Samples are grouped by class (one matmul
    per class and block of rows) and drawn by inverse CDF. The realised rate is the mean of
    q, about r: the truncated normal's mean, which exceeds r for small r.
    """
    n = labels.size
    from scipy.stats import truncnorm  # here, not at import: the command line starts without scipy

    flip = truncnorm.rvs(
        -rate / INSTANCE_FLIP_STD,
        (1 - rate) / INSTANCE_FLIP_STD,
        loc=rate,
        scale=INSTANCE_FLIP_STD,
        size=n,
        random_state=rng,
    )
    weights = rng.standard_normal((num_classes, features.shape[1], num_classes), dtype=np.float32)
    uniforms = rng.random(n)
    out = labels.copy()
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        for start in range(0, members.size, _INSTANCE_BLOCK):
            idx = members[start : start + _INSTANCE_BLOCK]
            rows = _instance_rows(_unit_rows(features[idx]), weights[c], c, flip[idx])
            out[idx] = _draw(rows, uniforms[idx])
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as float64, each divided by its L2 norm (zero rows stay zero), as float32."""
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise NoiseError("features contain nan or inf; instance noise needs finite features")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x.astype(np.float32)


def _instance_rows(xhat: np.ndarray, w_c: np.ndarray, c: int, flip: np.ndarray) -> np.ndarray:
    """Label distributions of samples of class ``c``: q softmax(v without c), plus 1 - q on c."""
    v = (xhat @ w_c).astype(np.float64)
    v[:, c] = -np.inf
    v -= v.max(axis=1, keepdims=True)
    p = np.exp(v)
    p /= p.sum(axis=1, keepdims=True)
    p *= flip[:, None]
    p[:, c] += 1 - flip
    return p


def _draw(rows: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One label per row of probabilities, by inverse CDF with one uniform in [0, 1) per row.

    The label is the first index whose cumulative sum exceeds u * total, so a label of zero
    probability is never drawn and rounding in the sum cannot push the index past C - 1.
    """
    cum = np.cumsum(rows, axis=1)
    target = uniforms * cum[:, -1]
    drawn = (cum <= target[:, None]).sum(axis=1)
    return np.minimum(drawn, rows.shape[1] - 1)


# ----------------------------------------------------------------------------- public API


def apply_noise(
    clean: np.ndarray,
    num_classes: int,
    spec: NoiseSpec,
    *,
    asym_map: Mapping[int, int] | None = None,
    features: np.ndarray | None = None,
    dataset: str | None = None,
) -> np.ndarray:
    """Return the given (noisy) labels: a new int64 array as long as ``clean``.

    Deterministic in (clean, spec, asym_map, features): the only randomness is
    ``np.random.default_rng(spec.seed)`` (also passed to scipy's ``truncnorm``), never the
    global RNG. ``clean`` is not modified. ``asym_map`` is needed by ``asym``, ``features``
    (the training images, one row per label, any shape after the first axis) by
    ``instance``; each is ignored by the other models. ``dataset`` only names the data set
    in error messages. Raises :class:`NoiseError` for any bad request, also at rate 0.
    """
    if not isinstance(spec, NoiseSpec):
        raise NoiseError(f"spec must be a NoiseSpec, got {type(spec).__name__}")
    _check_num_classes(num_classes)
    labels = _as_labels(clean, num_classes, "clean labels")
    table = _map_lookup(asym_map, num_classes, dataset) if spec.model == "asym" else None
    feats = _as_features(features, labels.size) if spec.model == "instance" else None
    if spec.model == "none" or spec.rate == 0 or labels.size == 0:
        return labels.copy()
    rng = np.random.default_rng(spec.seed)
    if spec.model == "sym":
        return _sym(labels, num_classes, spec.rate, rng)
    if spec.model == "sym-biased":
        return _sym_biased(labels, num_classes, spec.rate, rng)
    if spec.model == "pairflip":
        return _pairflip(labels, num_classes, spec.rate, rng)
    if spec.model == "asym":
        return _asym(labels, table, spec.rate, rng)
    return _instance(labels, num_classes, spec.rate, rng, feats)


def transition_matrix(clean: np.ndarray, given: np.ndarray, num_classes: int) -> np.ndarray:
    """Realised transition matrix, float64 (C, C): rows true class, columns given label.

    Each row is normalised to sum 1; a class with no samples keeps an all-zero row.
    """
    _check_num_classes(num_classes)
    clean = _as_labels(clean, num_classes, "clean labels")
    given = _as_labels(given, num_classes, "given labels")
    if clean.shape != given.shape:
        raise NoiseError(f"clean and given labels differ in length: {clean.size} vs {given.size}")
    counts = np.bincount(clean * num_classes + given, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def realized_rate(clean: np.ndarray, given: np.ndarray) -> float:
    """Fraction of samples whose given label differs from the clean one (0.0 for no samples)."""
    clean, given = np.asarray(clean), np.asarray(given)
    if clean.shape != given.shape or clean.ndim != 1:
        raise NoiseError(
            f"clean and given labels must be 1-D and of equal length, "
            f"got {clean.shape} and {given.shape}"
        )
    return float(np.mean(clean != given)) if clean.size else 0.0


def expected_transition(
    num_classes: int, spec: NoiseSpec, asym_map: Mapping[int, int] | None = None
) -> np.ndarray | None:
    """The model's nominal transition matrix (float64, rows sum to 1); None for ``instance``.

    ``sym``: diagonal 1 - r, off-diagonal r / (C - 1). ``sym-biased``: diagonal 1 - r + r/C,
    off-diagonal r / C. ``pairflip``: diagonal 1 - r, (i, i+1 mod C) r. ``asym``: for each
    class i that maps to j != i, (i, i) 1 - r and (i, j) r; other rows identity. The exact-count
    models realise these only up to sampling error (and round/int of r N).
    """
    _check_num_classes(num_classes)
    c, r = num_classes, float(spec.rate)
    if spec.model == "instance":
        return None
    eye = np.eye(c)
    if spec.model == "none":
        return eye
    if spec.model == "sym":
        return (1 - r) * eye + r / (c - 1) * (1 - eye)
    if spec.model == "sym-biased":
        return (1 - r) * eye + r / c
    if spec.model == "pairflip":
        return (1 - r) * eye + r * np.roll(eye, 1, axis=1)
    table = _map_lookup(asym_map, c, None)
    moved = np.flatnonzero(table != np.arange(c))
    matrix = eye.copy()
    matrix[moved, moved] = 1 - r
    matrix[moved, table[moved]] = r
    return matrix


def expected_rate(
    num_classes: int,
    spec: NoiseSpec,
    asym_map: Mapping[int, int] | None = None,
    class_counts: np.ndarray | None = None,
) -> float:
    """Nominal overall noise rate of ``spec``.

    r for ``sym`` and ``pairflip``; r (1 - 1/C) for ``sym-biased``; for ``asym`` r times the
    share of samples whose class maps elsewhere (from ``class_counts`` when given, else
    assuming balanced classes); for ``instance`` the mean of N(r, 0.1^2) truncated to [0, 1],
    which is about r for r >= 0.2 but larger below (0.129 for r = 0.1); 0 for ``none`` and
    for rate 0.
    """
    _check_num_classes(num_classes)
    r = float(spec.rate)
    if spec.model == "none" or r == 0:
        return 0.0
    if spec.model in ("sym", "pairflip"):
        return r
    if spec.model == "sym-biased":
        return r * (1 - 1 / num_classes)
    if spec.model == "instance":
        from scipy.stats import truncnorm

        a, b = -r / INSTANCE_FLIP_STD, (1 - r) / INSTANCE_FLIP_STD
        return float(truncnorm.mean(a, b, loc=r, scale=INSTANCE_FLIP_STD))
    moved = _map_lookup(asym_map, num_classes, None) != np.arange(num_classes)
    if class_counts is None:
        return r * float(moved.mean())
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.shape != (num_classes,) or (counts < 0).any() or counts.sum() <= 0:
        raise NoiseError(
            f"class_counts must be {num_classes} non-negative counts with a positive sum, "
            f"got {counts}"
        )
    return r * float(counts[moved].sum() / counts.sum())
