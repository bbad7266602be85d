"""compose.stats: Wilson and bootstrap intervals, exact McNemar, paired bootstrap and Holm on known values."""

import json
import math

import numpy as np
import pytest

from compose.stats import (Comparison, Interval, bootstrap_groups, bootstrap_mean, bootstrap_stat, holm,
                           interval_for, mcnemar_exact, paired_bootstrap, paired_test, wilson)


def test_wilson_known_values():
    iv = wilson(0, 10)
    assert iv.value == 0 and iv.low == 0 and iv.high == pytest.approx(0.2775, abs=1e-4)
    iv = wilson(5, 10)
    assert (iv.low, iv.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    iv = wilson(10, 10)
    assert iv.high == 1 and iv.low == pytest.approx(1 - 0.2775, abs=1e-4)
    assert iv.method == "wilson" and iv.n == 10


def test_wilson_width_and_edges():
    iv = wilson(100, 200)
    assert iv.half_width == pytest.approx(0.069, abs=5e-4)
    assert iv.low < 0.5 < iv.high
    empty = wilson(0, 0)
    assert math.isnan(empty.value) and (empty.low, empty.high, empty.n) == (0, 1, 0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_interval_round_trip_and_str():
    iv = wilson(162, 200)
    d = json.loads(json.dumps(iv.to_dict()))
    assert set(d) == {"value", "ci_low", "ci_high", "n", "method"}
    assert Interval.from_dict(d) == iv
    assert str(iv) == "0.81 [0.75, 0.86] (n=200)"


def test_bootstrap_mean_deterministic_and_covers():
    e = np.random.default_rng(1).normal(0.0, 1.0, 150)
    values = np.concatenate([2.0 + e, 2.0 - e])  # mean exactly 2, sd about 1
    a, b = bootstrap_mean(values, seed=7), bootstrap_mean(values, seed=7)
    assert a == b and a.method == "bootstrap" and a.n == 300
    assert bootstrap_mean(values, seed=8) != a
    assert a.low < a.value < a.high and a.low < 2.0 < a.high
    # about 1.96 * sd / sqrt(n) on each side
    assert a.half_width == pytest.approx(1.96 / math.sqrt(300), rel=0.2)
    assert math.isnan(bootstrap_mean([]).value) and math.isnan(bootstrap_mean([]).low)
    one = bootstrap_mean([0.4])
    assert one.value == one.low == one.high == 0.4


def test_bootstrap_mean_coverage():
    rng = np.random.default_rng(0)
    hits = 0  # a 95% interval should cover the true mean (0) in about 95 of 100 fresh samples
    for i in range(100):
        iv = bootstrap_mean(rng.normal(0.0, 1.0, 50), n_boot=500, seed=i)
        hits += iv.low <= 0.0 <= iv.high
    assert 85 <= hits <= 100


def test_interval_for():
    assert interval_for([1, 0, 1, 1], "rate") == wilson(3, 4)
    assert interval_for([0.2, 0.4, 0.9], "mean") == bootstrap_mean([0.2, 0.4, 0.9])
    with pytest.raises(ValueError):
        interval_for([0.5, 1], "rate")
    with pytest.raises(ValueError):
        interval_for([1], "median")


def test_bootstrap_stat_joint_and_groups():
    x = np.arange(40, dtype=float)
    iv = bootstrap_stat([x, 2 * x + 1], lambda a, b: float(np.mean(b - 2 * a)), n_boot=300)
    assert iv.value == iv.low == iv.high == 1.0 and iv.n == 40  # the same item indices for both columns
    iv = bootstrap_stat([x], lambda a: float(a.mean()), n_boot=300, seed=3)
    assert iv.low < 19.5 < iv.high
    with pytest.raises(ValueError):
        bootstrap_stat([x, x[:-1]], lambda a, b: 0.0)
    groups = [[1.0] * 10, [0.0, 1.0] * 20]
    iv = bootstrap_groups(groups, lambda gs: float(np.mean([g.mean() for g in gs])), n_boot=500)
    assert iv.value == pytest.approx(0.75) and iv.n == 50 and iv.method == "bootstrap-stratified"
    assert iv.low < 0.75 < iv.high and iv.high <= 1.0
    assert iv == bootstrap_groups(groups, lambda gs: float(np.mean([g.mean() for g in gs])), n_boot=500)


def _pairs(b01, b10, both=0, neither=0):
    a = [0] * b01 + [1] * b10 + [1] * both + [0] * neither
    b = [1] * b01 + [0] * b10 + [1] * both + [0] * neither
    return a, b


def test_mcnemar_exact_known_tables():
    c = mcnemar_exact(*_pairs(0, 6, both=4), name="x")
    assert c.p_value == pytest.approx(0.03125) and c.test == "mcnemar-exact" and c.name == "x"
    assert (c.a, c.b, c.diff, c.n) == pytest.approx((1.0, 0.4, -0.6, 10))
    assert c.ci_low <= c.diff <= c.ci_high < 0
    assert mcnemar_exact(*_pairs(1, 1, both=3)).p_value == 1.0
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    assert mcnemar_exact(*_pairs(2, 10)).p_value == pytest.approx(0.0385742, abs=1e-6)
    assert mcnemar_exact([True, False], [False, False]).a == 0.5


def test_unequal_lengths_raise():
    with pytest.raises(ValueError, match="3.*4"):
        mcnemar_exact([0, 1, 1], [0, 1, 1, 0])
    with pytest.raises(ValueError, match="2.*1"):
        paired_bootstrap([0.1, 0.2], [0.3])


def test_paired_bootstrap_shift_and_null():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 200)
    c = paired_bootstrap(a, a + 0.3 + rng.normal(0.0, 0.5, 200), name="shift")
    assert c.p_value < 0.01 and c.ci_low > 0 and c.test == "paired-bootstrap"
    assert c.diff == pytest.approx(c.b - c.a)
    assert paired_bootstrap(a, a).p_value == 1.0
    noise = rng.normal(0.0, 0.01, 100)
    b = a.copy()
    b[:100] += noise
    b[100:] -= noise  # symmetric noise whose mean is exactly 0
    c = paired_bootstrap(a, b)
    assert c.p_value > 0.05 and c.ci_low < 0 < c.ci_high
    assert paired_bootstrap(a, a + 0.3, seed=1) == paired_bootstrap(a, a + 0.3, seed=1)
    # a constant shift: no centred resample reaches it, so p is the +1-corrected floor 1 / (n_boot + 1)
    assert paired_bootstrap(a, a + 0.3, n_boot=999).p_value == pytest.approx(0.001)


def test_paired_test_dispatch():
    assert paired_test(*_pairs(0, 6)).test == "mcnemar-exact"
    assert paired_test([0.1, 0.5, 0.2], [0.2, 0.1, 0.3]).test == "paired-bootstrap"
    assert paired_test([0, 1, 1], [1, 1, 0], kind="continuous").test == "paired-bootstrap"
    with pytest.raises(ValueError):
        paired_test([0, 1], [1, 1], kind="ordinal")


def test_holm_known_family():
    ps = [0.01, 0.04, 0.03, 0.5]
    family = [Comparison(f"c{i}", 0, 0, 0, 0, 0, p, 10, "t") for i, p in enumerate(ps)]
    assert family[0].adjusted_p == 0.01 and not family[0].significant
    out = holm(family, alpha=0.05)
    assert [c.name for c in out] == ["c0", "c1", "c2", "c3"]
    assert [c.adjusted_p for c in out] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert [c.significant for c in out] == [True, False, False, False]
    assert [c.p_value for c in out] == ps and not family[0].significant  # new objects, inputs unchanged
    assert out[0].to_dict()["adjusted_p"] == pytest.approx(0.04)
    assert holm([]) == []
