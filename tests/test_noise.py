"""Tests for :mod:`datasets.noise`: statistics of every noise model, determinism, bad input.

Statistical checks use N = 20,000 samples in C = 10 classes (about 2,000 per class). A
realised transition entry with nominal probability p in a row of n samples has a binomial
standard deviation of at most sqrt(p (1 - p) / n) (the exact-count models draw without
replacement, which only shrinks it); we allow 5 of those (two-sided p ~ 6e-7 per entry),
so an entry of nominal 0 or 1 must be matched exactly. All draws use fixed seeds, so the
tests are deterministic; the tolerance says what a different seed would also pass.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from datasets.noise import (
    NOISE_MODELS,
    NoiseError,
    NoiseSpec,
    apply_noise,
    expected_rate,
    expected_transition,
    realized_rate,
    transition_matrix,
)

N, C, RATE = 20_000, 10, 0.4
# A made-up map: a swap, two one-way flips, one class mapped to itself, the rest absent.
ASYM_MAP = {0: 1, 1: 0, 2: 5, 3: 7, 9: 9}
SIGMAS = 5.0


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return np.random.default_rng(123).integers(0, C, size=N)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(456).standard_normal((N, 3, 4, 4)).astype(np.float32)


def _noisy(
    clean: np.ndarray, features: np.ndarray, model: str, rate: float = RATE, seed: int = 0
) -> np.ndarray:
    return apply_noise(clean, C, NoiseSpec(model, rate, seed), asym_map=ASYM_MAP, features=features)


def _binomial_tol(p: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    return SIGMAS * np.sqrt(p * (1 - p) / n) + 1e-12


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_realized_rate_matches_expected(
    model: str, clean: np.ndarray, features: np.ndarray
) -> None:
    rate = 0.0 if model == "none" else RATE
    given = _noisy(clean, features, model, rate)
    assert given.dtype == np.int64 and given.shape == clean.shape
    expected = expected_rate(
        C, NoiseSpec(model, rate, 0), ASYM_MAP, np.bincount(clean, minlength=C)
    )
    # 1/N covers round(r N) / N and int(r N) / N against r.
    assert abs(realized_rate(clean, given) - expected) <= _binomial_tol(expected, N) + 1 / N


@pytest.mark.parametrize("model", [m for m in NOISE_MODELS if m != "instance"])
def test_transition_matrix_matches_expected(
    model: str, clean: np.ndarray, features: np.ndarray
) -> None:
    rate = 0.0 if model == "none" else RATE
    given = _noisy(clean, features, model, rate)
    realised = transition_matrix(clean, given, C)
    nominal = expected_transition(C, NoiseSpec(model, rate, 0), ASYM_MAP)
    row_counts = np.bincount(clean, minlength=C)[:, None]
    excess = np.abs(realised - nominal) - _binomial_tol(nominal, row_counts)
    assert excess.max() <= 0, f"worst entry off by {excess.max():.4f} beyond tolerance"


def test_instance_noise_statistics(clean: np.ndarray, features: np.ndarray) -> None:
    given = _noisy(clean, features, "instance")
    assert expected_transition(C, NoiseSpec("instance", RATE, 0)) is None
    assert abs(realized_rate(clean, given) - RATE) <= 0.02
    realised = transition_matrix(clean, given, C)
    diag_tol = _binomial_tol(RATE, np.bincount(clean, minlength=C))
    assert np.all(np.abs(np.diag(realised) - (1 - RATE)) <= diag_tol)
    off = realised * (1 - np.eye(C))
    # Flips spread over several wrong labels: count those taking at least 1% of the row.
    assert (off >= 0.01).sum(axis=1).mean() >= 3
    assert (off > 0).sum(axis=1).mean() >= 3


def test_instance_noise_ignores_feature_scale(clean: np.ndarray, features: np.ndarray) -> None:
    """Features are L2-normalised per sample, so raw 0-255 scale gives the same labels."""
    unit = _noisy(clean, features, "instance")
    scaled = _noisy(clean, features.astype(np.float64) * 256, "instance")
    np.testing.assert_array_equal(unit, scaled)


def test_instance_noise_spreads_for_raw_pixels(clean: np.ndarray) -> None:
    """Non-negative uint8 'pixels' (a known pitfall of feature-based instance noise) still flip to several classes."""
    pixels = np.random.default_rng(7).integers(0, 256, size=(N, 48), dtype=np.uint8)
    given = _noisy(clean, pixels, "instance")
    off = transition_matrix(clean, given, C) * (1 - np.eye(C))
    assert (off >= 0.01).sum(axis=1).mean() >= 3


def test_expected_transition_rows_sum_to_one() -> None:
    for model in NOISE_MODELS:
        rate = 0.0 if model == "none" else 0.3
        matrix = expected_transition(C, NoiseSpec(model, rate, 0), ASYM_MAP)
        if model != "instance":
            np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
            assert (matrix >= 0).all()


def test_expected_rate_by_hand() -> None:
    spec = NoiseSpec("asym", 0.5, 0)
    assert expected_rate(C, spec, ASYM_MAP) == pytest.approx(0.5 * 4 / 10)  # classes 0-3 move
    counts = np.array([10, 0, 0, 30, 60, 0, 0, 0, 0, 100])
    assert expected_rate(C, spec, ASYM_MAP, counts) == pytest.approx(0.5 * 40 / 200)
    assert expected_rate(C, NoiseSpec("sym-biased", 0.5, 0)) == pytest.approx(0.45)
    assert expected_rate(C, NoiseSpec("instance", 0.4, 0)) == pytest.approx(0.4, abs=1e-3)
    assert expected_rate(C, NoiseSpec("instance", 0.1, 0)) == pytest.approx(0.129, abs=1e-3)
    assert expected_rate(C, NoiseSpec("none", 0, 0)) == 0.0


def test_transition_matrix_and_rate_by_hand() -> None:
    clean, given = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])
    expected = np.array([[0.5, 0.5, 0], [1 / 3, 2 / 3, 0], [0, 0, 0]])
    np.testing.assert_allclose(transition_matrix(clean, given, 3), expected)
    assert realized_rate(clean, given) == pytest.approx(0.4)


# ----------------------------------------------------------------------------- model mechanics


@pytest.mark.parametrize("n", [1000, 1001, 20_000])
@pytest.mark.parametrize("rate", [0.1, 0.25, 0.45, 0.8])
def test_sym_flips_exactly_round_rn_and_never_keeps_label(n: int, rate: float) -> None:
    clean = np.random.default_rng(n).integers(0, C, size=n)
    given = apply_noise(clean, C, NoiseSpec("sym", rate, 3))
    # Every selected sample changes, so the changed count is the selected count.
    assert int((given != clean).sum()) == round(rate * n)


def test_sym_biased_labels_in_range_and_rate(clean: np.ndarray) -> None:
    for seed in range(5):
        given = apply_noise(clean, C, NoiseSpec("sym-biased", 0.9, seed))
        assert given.min() >= 0 and given.max() == C - 1  # C - 1 reachable, C never
        assert abs(realized_rate(clean, given) - 0.9 * (1 - 1 / C)) <= _binomial_tol(0.81, N)
    small = apply_noise(np.zeros(5000, dtype=np.int64), 3, NoiseSpec("sym-biased", 0.99, 1))
    assert set(np.unique(small)) == {0, 1, 2}


def test_pairflip_moves_to_next_class(clean: np.ndarray) -> None:
    given = apply_noise(clean, C, NoiseSpec("pairflip", RATE, 0))
    assert set(np.unique((given - clean) % C)) == {0, 1}
    assert int((given != clean).sum()) == round(RATE * N)


def test_asym_follows_the_map(clean: np.ndarray) -> None:
    given = apply_noise(clean, C, NoiseSpec("asym", RATE, 0), asym_map=ASYM_MAP)
    changed = given != clean
    table = np.arange(C)
    table[list(ASYM_MAP)] = list(ASYM_MAP.values())
    np.testing.assert_array_equal(given[changed], table[clean[changed]])
    assert not changed[np.isin(clean, [4, 5, 6, 7, 8, 9])].any()


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_rate_zero_returns_copy_of_clean(
    model: str, clean: np.ndarray, features: np.ndarray
) -> None:
    given = _noisy(clean, features, model, 0.0)
    np.testing.assert_array_equal(given, clean)
    assert given is not clean and given.dtype == np.int64


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("model", [m for m in NOISE_MODELS if m != "none"])
def test_same_seed_same_labels_other_seed_other_labels(
    model: str, clean: np.ndarray, features: np.ndarray
) -> None:
    first = _noisy(clean, features, model, seed=11)
    np.testing.assert_array_equal(first, _noisy(clean, features, model, seed=11))
    assert (first != _noisy(clean, features, model, seed=12)).any()


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_noise_ignores_global_rng_state(
    model: str, clean: np.ndarray, features: np.ndarray
) -> None:
    rate = 0.0 if model == "none" else RATE
    np.random.seed(1)
    random.seed(1)
    first = _noisy(clean, features, model, rate)
    np.random.seed(99)
    np.random.rand(1000)
    random.seed(99)
    random.random()
    np.testing.assert_array_equal(first, _noisy(clean, features, model, rate))


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_inputs_not_modified(model: str, clean: np.ndarray, features: np.ndarray) -> None:
    rate = 0.0 if model == "none" else RATE
    labels, feats, asym_map = clean.copy(), features.copy(), dict(ASYM_MAP)
    apply_noise(labels, C, NoiseSpec(model, rate, 0), asym_map=asym_map, features=feats)
    np.testing.assert_array_equal(labels, clean)
    np.testing.assert_array_equal(feats, features)
    assert asym_map == ASYM_MAP


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.2, float("nan")])
def test_rate_outside_unit_interval_raises(rate: float) -> None:
    with pytest.raises(NoiseError, match=r"\[0, 1\)"):
        NoiseSpec("sym", rate, 0)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(NoiseError) as info:
        NoiseSpec("symmetric", 0.2, 0)
    assert all(name in str(info.value) for name in NOISE_MODELS)
    assert "\n" not in str(info.value)


def test_none_with_nonzero_rate_raises() -> None:
    with pytest.raises(NoiseError, match="'none' takes rate 0"):
        NoiseSpec("none", 0.2, 0)


def test_negative_seed_raises() -> None:
    with pytest.raises(NoiseError, match="seed"):
        NoiseSpec("sym", 0.2, -1)


def test_asym_without_map_raises(clean: np.ndarray) -> None:
    with pytest.raises(NoiseError, match="'asym' needs a class map; data set 'fmnist' has none"):
        apply_noise(clean, C, NoiseSpec("asym", 0.2, 0), dataset="fmnist")
    with pytest.raises(NoiseError, match="this data set has none"):
        apply_noise(clean, C, NoiseSpec("asym", 0.0, 0))
    with pytest.raises(NoiseError, match="class map"):
        expected_rate(C, NoiseSpec("asym", 0.2, 0))


def test_instance_without_features_raises(clean: np.ndarray) -> None:
    with pytest.raises(NoiseError, match="'instance' needs the training images as features"):
        apply_noise(clean, C, NoiseSpec("instance", 0.2, 0))
    with pytest.raises(NoiseError, match="one non-empty row per label"):
        apply_noise(clean, C, NoiseSpec("instance", 0.2, 0), features=np.zeros((N - 1, 4)))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, C]),
        np.array([-1, 0]),
        np.array([0.0, 1.0]),
        np.zeros((2, 2), dtype=np.int64),
    ],
)
def test_bad_labels_raise(labels: np.ndarray) -> None:
    with pytest.raises(NoiseError, match="labels"):
        apply_noise(labels, C, NoiseSpec("sym", 0.2, 0))


def test_bad_asym_map_raises() -> None:
    with pytest.raises(NoiseError, match="asym_map"):
        apply_noise(np.arange(C), C, NoiseSpec("asym", 0.2, 0), asym_map={0: C})
