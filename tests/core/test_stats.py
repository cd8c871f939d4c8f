"""Intervals with known answers: bootstrap coverage, t and Welch intervals against scipy, arm verdicts."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from jit_core.eval import fid as F
from jit_core.eval import stats as S


def test_bootstrap_interval_of_a_mean_covers_about_95_percent():
    rng = np.random.default_rng(0)
    reps, hits, widths = 300, 0, []
    for k in range(reps):
        x = rng.normal(size=60)
        lo, hi = S.bootstrap_interval(np.mean, x, n_boot=300, seed=k)
        hits += lo <= 0.0 <= hi
        widths.append(hi - lo)
    assert 0.90 <= hits / reps <= 0.985, hits / reps
    assert np.mean(widths) == pytest.approx(2 * 1.96 / np.sqrt(60), rel=0.1)   # the normal-theory width


def test_bootstrap_is_seeded_and_rejects_too_few_samples():
    x = np.arange(10.0)
    assert S.bootstrap_interval(np.mean, x, 100, seed=3) == S.bootstrap_interval(np.mean, x, 100, seed=3)
    with pytest.raises(ValueError, match="at least 2"):
        S.bootstrap_interval(np.mean, x[:1])


@pytest.mark.parametrize("n", [40, 300])   # the N <= D and N > D forms
def test_frechet_resampler_equals_the_metric(n):
    rng = np.random.default_rng(1)
    x, ref = rng.normal(size=(n, 64)) + 0.2, rng.normal(size=(500, 64))
    mu, sigma = F.feature_stats(ref)
    f = S.frechet_resampler(x, mu, sigma)
    idx = rng.integers(0, n, n)
    assert f(idx) == pytest.approx(F.frechet_distance_to_features(x[idx], mu, sigma), rel=1e-6)
    assert f(np.arange(n)) == pytest.approx(F.frechet_distance_to_features(x, mu, sigma), rel=1e-6)


def test_recentred_frechet_interval_contains_the_estimate():
    rng = np.random.default_rng(2)
    x, ref = rng.normal(size=(300, 64)) * 1.1, rng.normal(size=(2000, 64))
    f = S.frechet_resampler(x, *F.feature_stats(ref))
    est = f(np.arange(300))
    raw = S.bootstrap_interval(f, np.arange(300), 100)
    lo, hi = S.bootstrap_interval(f, np.arange(300), 100, recentre=True)
    assert raw[0] > est            # the raw percentile interval misses: resampling inflates the distance
    assert lo < est < hi and hi - lo == pytest.approx(raw[1] - raw[0])


def test_t_and_welch_intervals_match_scipy():
    x, y = [5.1, 5.6, 5.3, 5.9], [4.2, 4.9, 4.4]
    m, lo, hi = S.t_interval(x)
    assert (lo, hi) == pytest.approx(st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x)))
    d, lo, hi, _ = S.welch_interval(x, y)
    ci = st.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(x) - np.mean(y)) and (lo, hi) == pytest.approx((ci.low, ci.high))


def test_summarize_arm_seeds_and_single_run():
    many = S.summarize_arm("JiT", [5.5, 5.7, 5.6])
    assert many.n == 3 and many.mean == pytest.approx(5.6) and many.lo < 5.6 < many.hi and "t-interval" in many.method
    one = S.summarize_arm("JiT", [5.6], [(5.2, 6.0)])
    assert (one.lo, one.hi) == (5.2, 6.0) and "bootstrap" in one.method and "1 seed" in one.method
    bare = S.summarize_arm("JiT", [5.6])
    assert bare.lo is None and "no interval" in bare.method


def test_verdict_tie_and_difference_and_direction():
    base = S.summarize_arm("JiT", [5.5, 5.7, 5.6])
    tie = S.compare_arms_stats(S.summarize_arm("V-Co", [5.6, 5.5, 5.7]), base, True, "Fréchet distance")
    assert not tie.outside_noise and tie.better is None and tie.lo < 0 < tie.hi
    assert "within noise" in tie.sentence and "3 seeds each" in tie.sentence and "Welch" in tie.sentence
    low = S.summarize_arm("V-Co", [4.0, 4.1, 3.9])
    assert S.compare_arms_stats(low, base, lower_is_better=True).better == "V-Co"
    assert S.compare_arms_stats(low, base, lower_is_better=False).better == "JiT"   # e.g. an accuracy
    v = S.compare_arms_stats(low, base, True, "Fréchet distance")
    assert v.outside_noise and v.hi < 0 and "V-Co is better, outside the noise" in v.sentence


def test_verdict_with_one_seed_per_arm_combines_the_bootstrap_intervals():
    a = S.summarize_arm("A", [5.0], [(4.8, 5.2)])
    b = S.summarize_arm("B", [5.1], [(4.9, 5.3)])
    v = S.compare_arms_stats(a, b, True)
    assert not v.outside_noise and v.hi - v.lo == pytest.approx(2 * np.hypot(0.2, 0.2), rel=1e-3)
    assert "bootstrap" in v.method and "1 seed" in v.sentence
    none = S.compare_arms_stats(S.summarize_arm("A", [5.0]), S.summarize_arm("B", [4.0]), True)
    assert none.lo is None and not none.outside_noise and "no interval" in none.sentence


def test_fid_resampler_torch_form_equals_the_metric():
    rng = np.random.default_rng(3)
    x, ref = rng.normal(size=(120, 16)) + 0.1, rng.normal(size=(400, 16))
    mu, sigma = F.feature_stats(ref)
    f = F.fid_resampler(x, mu, sigma, device="cpu")   # N > D: the float64 torch form used for 50k x 2048
    idx = rng.integers(0, 120, 120)
    assert f(idx) == pytest.approx(F.frechet_distance_to_features(x[idx], mu, sigma), rel=1e-8)
