"""Uncertainty of results: bootstrap intervals of one run's metrics, t-intervals over seeds, arm verdicts.

Pure numpy/scipy (no torch). Three levels:

- one run: :func:`bootstrap_interval` resamples the generated samples (rows) with replacement and
  recomputes the statistic; for Fréchet distances only the generated *features* are resampled (the
  reference statistics stay fixed, :func:`frechet_resampler`), so no image is generated or encoded again;
- one arm (several training seeds): :func:`summarize_arm`, a t-based interval of the mean over seeds
  (with one seed: that run's bootstrap interval, labelled as such);
- two arms: :func:`compare_arms_stats`, a Welch t-interval of the difference of means, and a sentence
  saying what is and is not shown.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

LEVEL = 0.95


# ----------------------------------------------------------------------------------- one run: the bootstrap
def bootstrap_values(stat: Callable, samples, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``stat(samples[idx])`` for ``n_boot`` resamples ``idx`` of the rows of ``samples`` (with replacement)."""
    n = len(samples)
    if n < 2:
        raise ValueError(f"the bootstrap needs at least 2 samples, got {n}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return np.array([float(stat(samples[rng.integers(0, n, n)])) for _ in range(n_boot)])


def percentile_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        raise ValueError("no finite bootstrap replicate")
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_interval(stat: Callable, samples, n_boot: int = 1000, level: float = LEVEL,
                       seed: int = 0, recentre: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval ``(lo, hi)`` of ``stat`` over the rows of ``samples``.

    ``samples`` is anything indexable by an integer array (numpy array, or ``np.arange(N)`` when ``stat``
    maps indices to a value itself, as :func:`frechet_resampler` does).

    ``recentre``: shift the interval by ``stat(samples) - mean(replicates)``. Needed for Fréchet distances:
    a resample repeats about a third of the samples, which inflates the distance (measured, 128-d Gaussian
    features, 500 samples: estimate 11.5, replicates 19.5-21.9), so the raw percentile interval does not
    even contain the estimate. Recentred, it measures the spread only.
    """
    values = bootstrap_values(stat, samples, n_boot, seed)
    lo, hi = percentile_interval(values, level)
    if recentre:
        shift = float(stat(samples)) - float(np.mean(values[np.isfinite(values)]))
        lo, hi = lo + shift, hi + shift
    return lo, hi


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_resampler(features, mu_ref, sigma_ref) -> Callable[[np.ndarray], float]:
    """``f(idx)`` = Fréchet distance between the Gaussian fit of ``features[idx]`` and fixed reference statistics.

    Prepared once so each resample is cheap: with N > D, Tr (S_r S)^(1/2) is the sum of the square roots of
    the eigenvalues of the PSD matrix A S A, A = S_r^(1/2) (computed once); with N <= D it is computed from
    the N x N matrix C G[idx, idx] C / (N - 1), G = X S_r X^T precomputed and C the centring matrix. Both are
    exact rewrites of ``jit_core.eval.fid.frechet_distance_to_features`` (tested against it).
    """
    x = np.asarray(features, dtype=np.float64)
    mu_r, s_r = np.asarray(mu_ref, dtype=np.float64), np.asarray(sigma_ref, dtype=np.float64)
    n, d = x.shape
    if mu_r.shape != (d,) or s_r.shape != (d, d):
        raise ValueError(f"features {x.shape} do not match reference mu {mu_r.shape} / sigma {s_r.shape}")
    tr_r = float(np.trace(s_r))
    if n > d:
        a = _sqrt_psd(s_r)

        def fd(idx):
            xs = x[idx]
            mu = xs.mean(axis=0)
            s = np.cov(xs, rowvar=False)
            eig = np.linalg.eigvalsh(a @ s @ a)
            diff = mu - mu_r
            return float(diff @ diff + np.trace(s) + tr_r - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
        return fd
    g = x @ s_r @ x.T
    xr = x @ mu_r
    sq = np.einsum("ij,ij->i", x, x)

    def fd_small(idx):
        m = len(idx)
        gs = g[np.ix_(idx, idx)]
        c = gs - gs.mean(axis=0, keepdims=True)
        c = c - c.mean(axis=1, keepdims=True)
        eig = np.linalg.eigvalsh(c / (m - 1))
        mu = x[idx].mean(axis=0)
        tr_s = (sq[idx].sum() - m * (mu @ mu)) / (m - 1)
        # ||mu - mu_r||^2 without forming mu - mu_r twice
        dist = mu @ mu - 2 * xr[idx].mean() + mu_r @ mu_r
        return float(dist + tr_s + tr_r - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
    return fd_small


FRECHET_CAVEAT = ("Fréchet-distance intervals are recentred on the estimate (resampling repeats samples, which "
                  "inflates the distance) and conservative: in 128-d Gaussian tests their spread was 3-5x the "
                  "spread over fresh sample sets at 200-1000 samples")


def interval_method(n: int, n_boot: int, level: float = LEVEL, what: str = "reference statistics fixed") -> str:
    return (f"percentile bootstrap over the {n} generated samples, {n_boot} resamples, {what}; "
            f"{round(100 * level)} % intervals; {FRECHET_CAVEAT}")


# ----------------------------------------------------------------------------------- arms (several seeds)
@dataclass
class ArmSummary:
    """One arm's metric over its seeds: ``mean`` and the interval ``[lo, hi]`` (None: no interval)."""
    name: str
    n: int
    mean: float
    lo: float | None
    hi: float | None
    values: list[float]
    method: str
    lower_is_better: bool = True
    level: float = LEVEL
    per_seed_intervals: list | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _near_identical_ok():
    """scipy warns of "precision loss" when seeds give nearly identical values; the interval it returns is
    then as narrow as the spread, which is the answer (tests/core/test_stats.py checks these numbers)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        yield


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: Student-t interval of the mean of >= 2 values (``scipy.stats.ttest_1samp``)."""
    from scipy import stats as st
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        raise ValueError("a t-interval needs at least 2 values")
    m = float(v.mean())
    if np.all(v == v[0]):   # no spread: scipy's interval would be nan
        return m, m, m
    with _near_identical_ok():
        ci = st.ttest_1samp(v, 0.0).confidence_interval(confidence_level=level)
    return m, float(ci.low), float(ci.high)


def summarize_arm(name: str, per_seed_values: Sequence[float], per_seed_intervals: Sequence | None = None,
                  lower_is_better: bool = True, level: float = LEVEL) -> ArmSummary:
    """Mean and interval of one arm's metric over training seeds.

    >= 2 seeds: t-interval of the mean over seeds (the seed spread dominates the sample noise of one run);
    1 seed: that run's bootstrap interval over its samples (``per_seed_intervals[0]``), or no interval.
    """
    vals = [float(v) for v in per_seed_values]
    if not vals:
        raise ValueError(f"arm {name!r} has no values")
    ints = [None if i is None else (float(i[0]), float(i[1])) for i in per_seed_intervals] if per_seed_intervals \
        else None
    if len(vals) >= 2:
        m, lo, hi = t_interval(vals, level)
        method = f"t-interval of the mean over {len(vals)} seeds"
    elif ints and ints[0] is not None:
        m, (lo, hi) = vals[0], ints[0]
        method = "1 seed: bootstrap interval over that run's samples (seed-to-seed spread not included)"
    else:
        m, lo, hi = vals[0], None, None
        method = "1 seed, no interval"
    return ArmSummary(name, len(vals), m, lo, hi, vals, method, lower_is_better, level, ints)


@dataclass
class Verdict:
    """``a`` vs ``b``: ``diff = a.mean - b.mean`` with its interval; ``better`` is the name of the better arm
    only when the interval excludes 0 (``outside_noise``), else None. ``degenerate``: why no verdict can be given
    although numbers exist (identical values across seeds, a zero-width interval), else None."""
    better: str | None
    diff: float
    lo: float | None
    hi: float | None
    outside_noise: bool
    sentence: str
    method: str
    degenerate: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def welch_interval(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> tuple[float, float, float, float]:
    """``(mean(x) - mean(y), lo, hi, df)``: Welch's t-interval (Welch-Satterthwaite degrees of freedom), from
    ``scipy.stats.ttest_ind(equal_var=False)``."""
    from scipy import stats as st
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 2 or len(ys) < 2:
        raise ValueError("Welch's interval needs at least 2 values per arm")
    d = float(xs.mean() - ys.mean())
    if xs.var(ddof=1) + ys.var(ddof=1) == 0:   # no spread in either arm: scipy's interval would be nan
        return d, d, d, float("inf")
    with _near_identical_ok():
        result = st.ttest_ind(xs, ys, equal_var=False)
        ci = result.confidence_interval(confidence_level=level)
    return d, float(ci.low), float(ci.high), float(result.df)


def _g(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _fixed(x: float) -> str:
    """Two decimals; smaller values with two significant digits; rounding noise (< 1e-9) as 0.00."""
    if abs(x) < 1e-9:
        return "0.00"
    return f"{x:.2f}" if abs(x) >= 0.01 else f"{x:.2g}"


def _diff_interval(a: ArmSummary, b: ArmSummary, level: float) -> tuple[tuple[float, float] | None, str]:
    """``((lo, hi), method)`` of a.mean - b.mean, or ``(None, why)``."""
    from scipy import stats as st
    d = a.mean - b.mean
    if a.n >= 2 and b.n >= 2:
        _, lo, hi, df = welch_interval(a.values, b.values, level)
        return (lo, hi), f"Welch t-interval over seeds (df {df:.1f})"
    if a.n >= 2 or b.n >= 2:   # one arm has a single seed: assume it spreads over seeds like the other arm
        many, one = (a, b) if a.n >= 2 else (b, a)
        sd = float(np.std(many.values, ddof=1))
        h = float(st.t.ppf((1 + level) / 2, many.n - 1)) * sd * math.sqrt(1 / many.n + 1)
        return (d - h, d + h), (f"t-interval assuming {one.name!r} (1 seed) has the seed spread of "
                                f"{many.name!r} ({many.n} seeds)")
    if a.lo is None or a.hi is None or b.lo is None or b.hi is None:
        return None, "no interval: one seed per arm and no per-run interval"
    z = float(st.norm.ppf((1 + level) / 2))
    se = math.hypot((a.hi - a.lo) / (2 * z), (b.hi - b.lo) / (2 * z))
    return (d - z * se, d + z * se), ("normal approximation combining the two runs' bootstrap intervals over "
                                      "samples (1 seed each: seed-to-seed spread not included)")


def _seeds(a: ArmSummary, b: ArmSummary) -> str:
    if a.n == b.n:
        return f"{a.n} seed{'s' if a.n > 1 else ''} each"
    return f"{a.n} vs {b.n} seeds"


def compare_arms_stats(a: ArmSummary, b: ArmSummary, lower_is_better: bool | None = None,
                       metric_label: str = "metric", level: float = LEVEL) -> Verdict:
    """Verdict on arm ``a`` against arm ``b`` (the baseline): is ``a.mean - b.mean`` outside the noise?

    Both with >= 2 seeds: Welch t-interval of the difference of means; one with a single seed: a t-interval
    that lends it the other arm's seed spread; one seed each: the two bootstrap intervals combined (normal
    approximation). The method is named in ``Verdict.method`` and in the sentence.
    """
    lower = a.lower_is_better if lower_is_better is None else lower_is_better
    d = a.mean - b.mean
    interval, method = _diff_interval(a, b, level)
    pct = f"{round(100 * level)} %"
    head = (f"{a.name} vs {b.name}: {metric_label} {_g(a.mean)} [{_g(a.lo)}, {_g(a.hi)}] vs "
            f"{_g(b.mean)} [{_g(b.lo)}, {_g(b.hi)}] ({_seeds(a, b)})")
    if interval is None:
        sentence = f"{head}: no interval for the difference ({method}); difference {_fixed(d)}, not a verdict."
        return Verdict(None, float(d), None, None, False, sentence, method, None)
    lo, hi = interval
    degenerate = degenerate_reason(a, b)
    outside = (lo > 0 or hi < 0) and degenerate is None
    better = None
    if outside:
        better = a.name if (d < 0) == lower else b.name
    if degenerate:
        sentence = (f"{head}: no verdict, the numbers are degenerate: {degenerate} (difference {_fixed(d)}, "
                    f"{pct} interval [{_fixed(lo)}, {_fixed(hi)}]).")
    elif outside:
        sentence = (f"{head}: {better} is better, outside the noise (difference {_fixed(d)}, {pct} interval "
                    f"[{_fixed(lo)}, {_fixed(hi)}], {method}).")
    else:
        sentence = (f"{head}: within noise (difference {_fixed(d)}, {pct} interval [{_fixed(lo)}, {_fixed(hi)}], "
                    f"{method}).")
    return Verdict(better, float(d), lo, hi, outside, sentence, method, degenerate)


def degenerate_reason(a: ArmSummary, b: ArmSummary) -> str | None:
    """Why the comparison of ``a`` and ``b`` cannot be trusted although it has numbers, or None.

    Different training seeds never give identical values, so identical values mean one run counted several times
    or a metric that does not measure anything here; an interval of zero width (of an arm or of the difference)
    claims a certainty no finite sample gives.
    """
    for arm in (a, b):
        if arm.n >= 2 and len(set(arm.values)) == 1:
            return (f"{arm.name}'s {arm.n} seeds have identical values ({_g(arm.values[0])}): the same run counted "
                    "twice, or a metric that does not vary")
        if arm.lo is not None and arm.lo == arm.hi:
            return f"{arm.name}'s interval has zero width ([{_g(arm.lo)}, {_g(arm.hi)}])"
    return None
