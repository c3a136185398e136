"""Two-component mixtures on per-sample noise scores, shared by the methods that separate
clean from noisy samples (IDO's Beta mixture; DivideMix's and IDO's GMM ablation;
M-Correction's BMM).

Every mixture works on raw scores (higher = more likely noisy: wrong-event counts, losses),
min-max normalises them with the range of its last fit, and exposes for whole arrays at once
(vectorised numpy/scipy, no per-sample Python loop):

- ``posterior(v)``: (p_clean, p_noisy), summing to 1;
- ``cdf(v)``: (F_clean, F_noisy), each component's CDF at the normalised score;
- ``params()``: the fitted parameters, for logging.

Component 0 is the clean one (low scores), component 1 the noisy one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from scipy import stats
from scipy.special import logsumexp

EPS = 1e-6  # IDO squeezes normalised scores into [eps, 1 - eps] (IDO utils/bmm.py:12, 29)
EPS_NAN = 1e-12  # floor of the moment estimates in the M-step (M-Correction's BetaMixture1D)


@dataclass(frozen=True)
class Guards:
    """The numerical guards of an official Beta-mixture implementation, reproduced by the
    methods' ``posterior=official`` options. Each changes results where densities are tiny (the
    tails of the score range) or a component is nearly empty, which is where the methods'
    weights matter most. ``None`` in their place (the default) means exact arithmetic: E-step
    and posteriors in log space, no floors beyond what keeps the moments finite."""

    e_floor: float  # E-step: each weighted density at or below it becomes it
    e_denom: float  # E-step: added to the sum of the two before dividing
    m_denom: float  # M-step: added to the weight sum of the weighted mean and variance
    m_floor: float  # M-step: floor of the weighted variance and of alpha and beta
    post_denom: float  # posterior look-up: added to the sum of the two, no floor


# IDO utils/bmm.py: epsilon 1e-6 (:12) as the E-step floor and denominator (:48-50), in the
# weighted mean (:33), as the variance floor (:38-39) and the alpha / beta floor (:42-43), and
# in predict()'s denominator with no floor (:70-71)
IDO_GUARDS = Guards(e_floor=1e-6, e_denom=1e-6, m_denom=1e-6, m_floor=1e-6, post_denom=1e-6)
# M-Correction utils.py BetaMixture1D: eps_nan 1e-12 as the E-step floor, normalised by the sum
# alone (:696-701); no guard in the moments (:659-667: 1e-12 here only keeps a zero variance
# finite, where the official gives inf); posterior() adds eps_nan to the denominator (:693-694)
MCORRECTION_GUARDS = Guards(e_floor=EPS_NAN, e_denom=0.0, m_denom=0.0, m_floor=EPS_NAN, post_denom=EPS_NAN)


class Mixture(Protocol):
    def fit(self, values: np.ndarray, iterations: int) -> None: ...
    def posterior(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def cdf(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def params(self) -> dict[str, float]: ...
    def raw_density(self, values: np.ndarray) -> np.ndarray: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Normaliser:
    """Min-max normalisation with the range of the last fit, put into [eps, 1 - eps].

    ``affine``: IDO's map x (1 - 2 eps) + eps (``utils/bmm.py:28-29, 68-69``); otherwise values
    are clipped into [eps, 1 - eps]. ``clip``: a score outside the fitted range (a wrong-event
    count past the last fit's maximum) is clipped to the range's end; without it, it maps
    outside (0, 1), where the official look-ups give it zero density (``bmm.py:68-71``). A fit
    whose values are all equal keeps a span of 1 here; the official code maps them to 0.5
    (``bmm.py:25-26``, max 0) or divides by zero, and its look-up divides by zero."""

    lo: float = 0.0
    hi: float = 1.0
    affine: bool = False
    clip: bool = True

    def refit(self, values: np.ndarray) -> None:
        self.lo, self.hi = float(np.min(values)), float(np.max(values))

    @property
    def span(self) -> float:
        return self.hi - self.lo if self.hi > self.lo else 1.0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        x = (np.asarray(values, dtype=np.float64) - self.lo) / self.span
        if self.affine:
            x = x * (1 - 2 * EPS) + EPS
        return np.clip(x, EPS, 1 - EPS) if self.clip else x


def weighted_beta_moments(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Beta (alpha, beta) by the weighted method of moments (M-Correction's M-step)."""
    wsum = max(float(w.sum()), EPS_NAN)
    # x lies in [eps, 1 - eps], so the mean does too, unless no sample has any weight (exact
    # posteriors can give a component none; the official 1e-12 floor never does)
    mean = min(max(float((w * x).sum() / wsum), EPS), 1 - EPS)
    var = max(float((w * (x - mean) ** 2).sum() / wsum), EPS_NAN)
    common = mean * (1 - mean) / var - 1
    alpha = max(mean * common, EPS_NAN)
    return alpha, max(alpha * (1 - mean) / mean, EPS_NAN)


def guarded_beta_moments(x: np.ndarray, w: np.ndarray, g: Guards) -> tuple[float, float]:
    """The weighted method of moments with an official implementation's guards ``g``
    (IDO ``utils/bmm.py:32-44``; M-Correction ``utils.py:659-667``)."""
    wsum = float(w.sum()) + g.m_denom
    mean = float((w * x).sum()) / wsum
    var = max(float((w * (x - mean) ** 2).sum()) / wsum, g.m_floor)
    alpha = mean * (mean * (1 - mean) / var - 1)
    return max(alpha, g.m_floor), max(alpha * (1 - mean) / mean, g.m_floor)


@dataclass
class BetaMixture:
    """Two-component Beta mixture fitted by EM with weighted method-of-moments M-steps.

    Init alpha = (1, 2), beta = (2, 1), weights (0.5, 0.5); after each M-step IDO clamps
    beta_clean and alpha_noisy: a value below 1.02 becomes 1.1, which keeps the clean
    density decreasing and the noisy one increasing (IDO official ``utils/bmm.py:56-64``; the
    EM itself follows Arazo et al. 2019, M-Correction). ``guards``: None for exact arithmetic,
    or an official implementation's numerical guards (:class:`Guards`).
    """

    clamp: bool = True
    guards: Guards | None = None
    alphas: np.ndarray = field(default_factory=lambda: np.array([1.0, 2.0]))
    betas: np.ndarray = field(default_factory=lambda: np.array([2.0, 1.0]))
    weights: np.ndarray = field(default_factory=lambda: np.array([0.5, 0.5]))
    norm: Normaliser = field(default_factory=Normaliser)

    def _likelihood(self, x: np.ndarray) -> np.ndarray:
        """(2, N) weighted component densities (zero outside (0, 1))."""
        return self.weights[:, None] * stats.beta.pdf(x[None, :], self.alphas[:, None], self.betas[:, None])

    def _log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """(2, N) logs of the weighted component densities."""
        with np.errstate(divide="ignore"):  # a component of weight 0 has log-weight -inf
            logw = np.log(self.weights)
        return logw[:, None] + stats.beta.logpdf(x[None, :], self.alphas[:, None], self.betas[:, None])

    def _exact_posterior(self, x: np.ndarray) -> np.ndarray:
        """(2, N) posteriors in log space: where both densities underflow (the highest
        wrong-event counts, far in both tails) the limit, the component with the heavier
        tail there, rather than a floor's 0.5 / 0.5."""
        ll = self._log_likelihood(x)
        return np.exp(ll - logsumexp(ll, axis=0, keepdims=True))

    def _responsibilities(self, x: np.ndarray) -> np.ndarray:
        """E-step: exact, or with the official floor and denominator (``bmm.py:46-51``,
        M-Correction ``utils.py:696-701``)."""
        g = self.guards
        if g is None:
            return self._exact_posterior(x)
        r = np.maximum(self._likelihood(x), g.e_floor)
        return r / (r.sum(axis=0, keepdims=True) + g.e_denom)

    def em_step(self, x: np.ndarray) -> None:
        r = self._responsibilities(x)
        for k in range(2):
            if self.guards is None:
                self.alphas[k], self.betas[k] = weighted_beta_moments(x, r[k])
            else:
                self.alphas[k], self.betas[k] = guarded_beta_moments(x, r[k], self.guards)
        self.weights = r.sum(axis=1) / r.sum()
        if self.clamp:
            if self.betas[0] < 1.02:
                self.betas[0] = 1.1
            if self.alphas[1] < 1.02:
                self.alphas[1] = 1.1

    def fit(self, values: np.ndarray, iterations: int) -> None:
        """``iterations`` EM steps on ``values``, normalised with their own min and max."""
        self.norm.refit(values)
        x = self.norm(values)
        for _ in range(iterations):
            self.em_step(x)

    def fit_normalised(self, x: np.ndarray, iterations: int) -> None:
        """``iterations`` EM steps on scores the caller has already put into (0, 1) its own way
        (M-Correction: percentile range, ``train.py`` ``track_training_loss``); later calls take
        such scores too, as they are (no clip: the official look-up table's end points are
        1e-12 and 1 - 1e-12, ``utils.py:731``)."""
        self.norm = Normaliser(0.0, 1.0, clip=False)
        x = self.norm(x)
        for _ in range(iterations):
            self.em_step(x)

    def posterior(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_clean, p_noisy): exact, summing to 1; or, with guards, weighted density / (sum +
        ``post_denom``) with no floor, as the official look-ups (IDO ``bmm.py:70-71``,
        M-Correction ``utils.py:693-694``): 0 and 0 outside (0, 1) or where both underflow."""
        x = self.norm(values)
        if self.guards is None:
            r = self._exact_posterior(x)
        else:
            lik = self._likelihood(x)
            r = lik / (lik.sum(axis=0, keepdims=True) + self.guards.post_denom)
        return r[0], r[1]

    def cdf(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.norm(values)
        f = stats.beta.cdf(x[None, :], self.alphas[:, None], self.betas[:, None])
        return f[0], f[1]

    def params(self) -> dict[str, float]:
        return {"alpha_clean": self.alphas[0], "beta_clean": self.betas[0], "alpha_noisy": self.alphas[1],
                "beta_noisy": self.betas[1], "weight_clean": self.weights[0]}

    def raw_density(self, v: np.ndarray) -> np.ndarray:
        """(2, len(v)) weighted component densities per unit of the raw score, for plots."""
        x = np.clip((np.asarray(v, dtype=np.float64) - self.norm.lo) / self.norm.span, EPS, 1 - EPS)
        return self._likelihood(x) / self.norm.span

    def state_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas.copy(), "betas": self.betas.copy(), "weights": self.weights.copy(),
                "lo": self.norm.lo, "hi": self.norm.hi}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.alphas, self.betas, self.weights = s["alphas"].copy(), s["betas"].copy(), s["weights"].copy()
        self.norm = replace(self.norm, lo=s["lo"], hi=s["hi"])  # the range of the fit; its mapping as made


@dataclass
class GaussianMixture2:
    """Two-component 1-D GMM (scikit-learn), continued by warm starts: DivideMix's separator
    (max_iter 10, tol 1e-2, reg_covar 5e-4: DivideMix ``Train_cifar.py``) and IDO's GMM
    ablation. The clean component is the one with the lower mean."""

    tol: float = 1e-2
    reg_covar: float = 5e-4
    warm_start: bool = True  # False: a fresh GMM per fit, as DivideMix's eval_train
    normalise: bool = True  # False: fit the scores as given (DivideMix normalises them itself)
    gmm: Any = None
    norm: Normaliser = field(default_factory=Normaliser)

    def fit(self, values: np.ndarray, iterations: int) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        if self.normalise:
            self.norm.refit(values)
        x = self.norm(values)[:, None]
        if self.gmm is None or not self.warm_start:
            self.gmm = GaussianMixture(n_components=2, max_iter=iterations, tol=self.tol,
                                       reg_covar=self.reg_covar, warm_start=True, random_state=0)
        self.gmm.max_iter = iterations
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # 1 iteration per epoch is by design
            self.gmm.fit(x)

    def _order(self) -> np.ndarray:
        return np.argsort(self.gmm.means_.ravel())  # [clean, noisy]

    def posterior(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.gmm.predict_proba(self.norm(values)[:, None])[:, self._order()]
        return p[:, 0], p[:, 1]

    def cdf(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.norm(values)
        order = self._order()
        mu = self.gmm.means_.ravel()[order]
        sd = np.sqrt(self.gmm.covariances_.ravel()[order])
        f = stats.norm.cdf((x[None, :] - mu[:, None]) / sd[:, None])
        return f[0], f[1]

    def params(self) -> dict[str, float]:
        order = self._order()
        mu = self.gmm.means_.ravel()[order]
        var = self.gmm.covariances_.ravel()[order]
        return {"mean_clean": mu[0], "var_clean": var[0], "mean_noisy": mu[1], "var_noisy": var[1],
                "weight_clean": self.gmm.weights_[order][0]}

    def raw_density(self, v: np.ndarray) -> np.ndarray:
        """(2, len(v)) weighted component densities per unit of the raw score, for plots."""
        order = self._order()
        mu = self.gmm.means_.ravel()[order]
        sd = np.sqrt(self.gmm.covariances_.ravel()[order])
        w = self.gmm.weights_[order]
        x = (np.asarray(v, dtype=np.float64) - self.norm.lo) / self.norm.span
        return w[:, None] * stats.norm.pdf(x[None, :], mu[:, None], sd[:, None]) / self.norm.span

    def state_dict(self) -> dict[str, Any]:
        return {"gmm": self.gmm, "lo": self.norm.lo, "hi": self.norm.hi}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.gmm = s["gmm"]
        self.norm = replace(self.norm, lo=s["lo"], hi=s["hi"])  # the range of the fit; its mapping as made


class ClasswiseMixture:
    """One mixture per given-label class (IDO official ``stage_2_class.py``): each sample is
    scored by the mixture of its given class, fitted on that class's samples alone.

    A class that has not been fitted yet (fewer than ``MIN_CLASS`` samples in all, as in a small
    ``--subset``, or fewer than that among the samples seen so far, with sampled epochs) has no
    mixture of its own: its samples are scored by one mixture fitted on all (seen) samples. A
    class fitted once keeps its last fit when a later call sees too few of its samples."""

    MIN_CLASS = 2

    def __init__(self, labels: np.ndarray, num_classes: int, make: Any) -> None:
        self.labels = labels
        self.members = [np.flatnonzero(labels == c) for c in range(num_classes)]
        self.parts = [make() for _ in range(num_classes)]
        self.fitted = np.zeros(num_classes, dtype=bool)
        self.fallback = make()

    def fit(self, values: np.ndarray, iterations: int, mask: np.ndarray | None = None) -> None:
        """Fit every class's mixture on its samples (those in ``mask`` when given), and the
        global fallback whenever a class is left without a fit of its own."""
        for c, (part, idx) in enumerate(zip(self.parts, self.members, strict=True)):
            idx = idx if mask is None else idx[mask[idx]]
            if len(idx) >= self.MIN_CLASS:
                part.fit(values[idx], iterations)
                self.fitted[c] = True
        if not self.fitted.all():
            self.fallback.fit(values if mask is None else values[mask], iterations)

    def part_for(self, c: int) -> Any:
        """The mixture that scores the samples of given class ``c``."""
        return self.parts[c] if self.fitted[c] else self.fallback

    def _apply(self, fn: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.zeros(len(values)), np.zeros(len(values))
        for c, idx in enumerate(self.members):
            if len(idx):
                a[idx], b[idx] = getattr(self.part_for(c), fn)(values[idx])
        return a, b

    def posterior(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._apply("posterior", values)

    def cdf(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._apply("cdf", values)

    def raw_density(self, v: np.ndarray) -> np.ndarray:
        """The fitted class mixtures' densities summed with the classes' shares of the samples."""
        total = sum(len(idx) for idx in self.members)
        out = np.zeros((2, len(v)))
        for part, idx, fitted in zip(self.parts, self.members, self.fitted, strict=True):
            if fitted:
                out += len(idx) / total * part.raw_density(v)
        return out

    def params(self) -> dict[str, float]:
        """Each parameter's median over the fitted classes (the per-class values are in
        state_dict). A median, because a class whose clean samples all share one count gets a
        near-zero variance and so moment estimates in the billions, which would swamp a mean."""
        rows = [p.params() for p, fitted in zip(self.parts, self.fitted, strict=True) if fitted]
        return {k: float(np.median([r[k] for r in rows])) for k in rows[0]} if rows else {}

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [p.state_dict() for p in self.parts], "fitted": self.fitted.copy(),
                "fallback": self.fallback.state_dict()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        for part, ps in zip(self.parts, s["parts"], strict=True):
            part.load_state_dict(ps)
        # checkpoints written before the fitted flags existed: every class big enough was fitted
        default = np.array([len(idx) >= self.MIN_CLASS for idx in self.members])
        self.fitted = np.array(s.get("fitted", default), dtype=bool)
        if s.get("fallback") is not None:
            self.fallback.load_state_dict(s["fallback"])
