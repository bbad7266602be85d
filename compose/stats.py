"""Uncertainty of evaluation figures and paired comparisons between systems (numpy and the standard library only).

Every figure is measured on a finite sample of prompts, so it comes with a 95% interval that says how much it
would move on another sample of prompts of the same kind (the prompts are the unit of resampling; the model's
decoding is taken as fixed):

- a rate (share of unsafe / refused / toxic answers, items scored 0/1): ``wilson``, the Wilson score interval,
  which stays inside [0, 1] and behaves at 0 of n and n of n, unlike the normal approximation;
- a continuous figure (mean score, perplexity-like means): ``bootstrap_mean``, the percentile bootstrap over
  prompts; ``bootstrap_stat`` resamples prompts jointly across several per-prompt columns, and
  ``bootstrap_groups`` resamples each group (risk) on its own, for figures such as A = mean of per-risk safety
  where each risk has its own prompts (a stratified bootstrap);
- two systems on the SAME prompts (patched vs base, strategy X vs Y): the comparison is paired. Binary verdicts
  use ``mcnemar_exact``, the exact binomial test on the discordant pairs; continuous scores use
  ``paired_bootstrap``, the bootstrap of the mean per-prompt difference. Both give diff = b - a with a paired
  bootstrap interval, and a two-sided p-value;
- a table of comparisons is one family of tests: ``holm`` applies the Holm-Bonferroni step-down correction and
  marks which differences stay significant.

Bootstraps are deterministic for a given seed (``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Iterator, Sequence

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
_CHUNK = 2_000_000  # at most this many resampled indices in memory at once

__all__ = ["Interval", "Comparison", "wilson", "bootstrap_mean", "bootstrap_stat", "bootstrap_groups",
           "interval_for", "mcnemar_exact", "paired_bootstrap", "paired_bootstrap_groups", "paired_test", "holm"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval [low, high], the number of items and the method used."""

    value: float
    low: float
    high: float
    n: int
    method: str

    @property
    def half_width(self) -> float:
        """(high - low) / 2."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict:
        return {"value": float(self.value), "ci_low": float(self.low), "ci_high": float(self.high),
                "n": int(self.n), "method": self.method}

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        def num(x) -> float:
            return float("nan") if x is None else float(x)
        return cls(num(d["value"]), num(d["ci_low"]), num(d["ci_high"]), int(d["n"]), d.get("method", ""))

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


@dataclass(frozen=True)
class Comparison:
    """System b against system a on the same items: diff = b - a, its CI, the two-sided p-value of the test.

    ``significant`` and ``adjusted_p`` (the Holm-adjusted p-value; defaults to ``p_value``) are set by ``holm``.
    """

    name: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    test: str
    significant: bool = False
    adjusted_p: float | None = None

    def __post_init__(self):
        if self.adjusted_p is None:
            object.__setattr__(self, "adjusted_p", self.p_value)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("a", "b", "diff", "ci_low", "ci_high", "p_value", "adjusted_p"):
            d[k] = float(d[k])
        d["n"], d["significant"] = int(d["n"]), bool(d["significant"])
        return d


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return Z95 if level == 0.95 else NormalDist().inv_cdf(0.5 + level / 2)


def _as_array(values: Sequence[float], what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if np.isnan(arr).any():
        raise ValueError(f"{what} contain NaN")
    return arr


def _is_binary(arr: np.ndarray) -> bool:
    return bool(np.isin(arr, (0.0, 1.0)).all())


def _index_chunks(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
    """Bootstrap index rows (each n draws with replacement from range(n)), n_boot in all, in bounded chunks."""
    rows = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval: the (1 - level)/2 and (1 + level)/2 quantiles of the bootstrap replicates."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _boot_means(arr: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([arr[idx].mean(axis=1) for idx in _index_chunks(rng, len(arr), n_boot)])


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for a proportion p = s/n:

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n).  n = 0 gives value NaN and the whole range [0, 1].
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, 0, "wilson")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, n, "wilson")


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap of the mean: resample the n items with replacement n_boot times, take the
    (1 - level)/2 and (1 + level)/2 quantiles of the resampled means. n = 0: all NaN; n = 1: low = high = value."""
    arr = _as_array(values)
    n = len(arr)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "bootstrap")
    value = float(arr.mean())
    if n == 1:
        return Interval(value, value, value, 1, "bootstrap")
    low, high = _percentiles(_boot_means(arr, n_boot, seed), level)
    return Interval(value, low, high, n, "bootstrap")


def bootstrap_stat(columns: Sequence[Sequence[float]], stat: Callable[..., float], n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile bootstrap of value = stat(*columns) over items: the same resampled item indices are applied to
    every column (equal lengths; per-item vectors), so per-item pairing is kept. n = number of items."""
    cols = [_as_array(c, "columns") for c in columns]
    if not cols:
        raise ValueError("bootstrap_stat needs at least one column")
    lengths = {len(c) for c in cols}
    if len(lengths) != 1:
        raise ValueError(f"columns must have equal lengths, got {[len(c) for c in cols]}")
    n = lengths.pop()
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "bootstrap")
    value = float(stat(*cols))
    rng = np.random.default_rng(seed)
    boot = np.array([float(stat(*[c[row] for c in cols]))
                     for idx in _index_chunks(rng, n, n_boot) for row in idx])
    low, high = _percentiles(boot, level)
    return Interval(value, low, high, n, "bootstrap")


def bootstrap_groups(groups: Sequence[Sequence[float]], stat: Callable[[list[np.ndarray]], float],
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Stratified percentile bootstrap of value = stat([g1, g2, ...]): each group is resampled on its own (its
    own size, its own items), e.g. A = mean of per-risk safety where each risk has its own prompts:
    ``bootstrap_groups(per_risk, lambda gs: np.mean([g.mean() for g in gs]))``. n = total items."""
    arrs = [_as_array(g, "groups") for g in groups]
    n = sum(len(g) for g in arrs)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "bootstrap-stratified")
    value = float(stat(arrs))
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        boot[i] = float(stat([g[rng.integers(0, len(g), len(g))] if len(g) else g for g in arrs]))
    low, high = _percentiles(boot, level)
    return Interval(value, low, high, n, "bootstrap-stratified")


def interval_for(values: Sequence[float], kind: str | None = None, *, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> Interval:
    """The interval of a figure from its per-item values: kind "rate" (0/1 values -> ``wilson``) or "mean"
    (any values -> ``bootstrap_mean``); None picks "rate" when every value is 0 or 1."""
    arr = _as_array(values)
    if kind is None:
        kind = "rate" if len(arr) and _is_binary(arr) else "mean"
    if kind == "rate":
        if not _is_binary(arr):
            raise ValueError("kind 'rate' needs 0/1 values")
        return wilson(int(arr.sum()), len(arr), z=_z(level))
    if kind == "mean":
        return bootstrap_mean(arr, n_boot=n_boot, seed=seed, level=level)
    raise ValueError(f"unknown kind {kind!r}: expected 'rate' or 'mean'")


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired comparison needs the same items: a has {len(x)} values, b has {len(y)}")
    return x, y


def _binom_two_sided(k: int, m: int) -> float:
    """Exact two-sided sign test: min(1, 2·P[X <= k]) with X ~ Bin(m, 1/2) and k = min of the two counts."""
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** m)


def mcnemar_exact(a: Sequence[int | bool], b: Sequence[int | bool], name: str = "", n_boot: int = 2000,
                  seed: int = 0, level: float = 0.95) -> Comparison:
    """Exact McNemar test of two systems' 0/1 verdicts on the same items. With b01 = #(a=0, b=1) and
    b10 = #(a=1, b=0): p = min(1, 2·P[X <= min(b01, b10)]), X ~ Bin(b01 + b10, 1/2); p = 1 without discordant
    pairs. a, b = the two rates; diff = rate_b - rate_a with a paired bootstrap percentile CI."""
    x, y = _paired(a, b)
    if not (_is_binary(x) and _is_binary(y)):
        raise ValueError("mcnemar_exact needs 0/1 verdicts")
    n = len(x)
    if n == 0:
        nan = float("nan")
        return Comparison(name, nan, nan, nan, nan, nan, 1.0, 0, "mcnemar-exact")
    b01 = int(((x == 0) & (y == 1)).sum())
    b10 = int(((x == 1) & (y == 0)).sum())
    p = _binom_two_sided(min(b01, b10), b01 + b10)
    d = y - x
    diff = float(d.mean())
    low, high = (diff, diff) if n == 1 else _percentiles(_boot_means(d, n_boot, seed), level)
    return Comparison(name, float(x.mean()), float(y.mean()), diff, low, high, p, n, "mcnemar-exact")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], name: str = "", n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> Comparison:
    """Paired bootstrap of continuous per-item scores on the same items. d = b - a per item; diff = mean(d) with
    the percentile CI of the resampled means; two-sided p by the shift method: resample the centred d - mean(d)
    and p = (#{|mean*| >= |mean(d)|} + 1) / (n_boot + 1). p = 1 when every d is 0, or with fewer than 2 items."""
    x, y = _paired(a, b)
    n = len(x)
    if n == 0:
        nan = float("nan")
        return Comparison(name, nan, nan, nan, nan, nan, 1.0, 0, "paired-bootstrap")
    d = y - x
    diff = float(d.mean())
    if n == 1:
        return Comparison(name, float(x.mean()), float(y.mean()), diff, diff, diff, 1.0, 1, "paired-bootstrap")
    means = _boot_means(d, n_boot, seed)
    low, high = _percentiles(means, level)
    if not d.any():
        p = 1.0
    else:
        # the centred resample's mean is the resample's mean minus mean(d): reuse the same replicates
        tol = 1e-12 * max(1.0, float(np.abs(d).max()))
        count = int((np.abs(means - diff) >= abs(diff) - tol).sum())
        p = min(1.0, (count + 1) / (n_boot + 1))
    return Comparison(name, float(x.mean()), float(y.mean()), diff, low, high, p, n, "paired-bootstrap")


def paired_bootstrap_groups(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], name: str = "",
                            n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> Comparison:
    """Paired, stratified bootstrap of a mean of group means (e.g. A = mean over risks of safety, each risk with
    its own prompts): group g has per-item scores a[g], b[g] on the same items; diff = mean_g mean(b[g] - a[g]).
    Each group's differences are resampled on their own; the p-value uses the shift method as in
    ``paired_bootstrap`` (every group's differences centred on their mean)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired groups need the same non-empty groups: a has {len(a)}, b has {len(b)}")
    pairs = [_paired(x, y) for x, y in zip(a, b)]
    if any(len(x) == 0 for x, _ in pairs):
        raise ValueError("every group needs at least one item")
    diffs = [y - x for x, y in pairs]
    diff = float(np.mean([d.mean() for d in diffs]))
    n = sum(len(d) for d in diffs)
    rng = np.random.default_rng(seed)
    boot = np.mean([d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1) for d in diffs], axis=0)
    low, high = _percentiles(boot, level)
    if not any(d.any() for d in diffs) or n < 2:
        p = 1.0
    else:
        tol = 1e-12 * max(1.0, max(float(np.abs(d).max()) for d in diffs))
        p = min(1.0, (int((np.abs(boot - diff) >= abs(diff) - tol).sum()) + 1) / (n_boot + 1))
    a_mean = float(np.mean([x.mean() for x, _ in pairs]))
    b_mean = float(np.mean([y.mean() for _, y in pairs]))
    return Comparison(name, a_mean, b_mean, diff, low, high, p, n, "paired-bootstrap-stratified")


def paired_test(a: Sequence[float], b: Sequence[float], name: str = "", kind: str | None = None) -> Comparison:
    """``mcnemar_exact`` for 0/1 verdicts (kind "binary", or auto-detected when both vectors hold only 0 and 1),
    ``paired_bootstrap`` otherwise (kind "continuous")."""
    if kind not in (None, "binary", "continuous"):
        raise ValueError(f"unknown kind {kind!r}: expected 'binary', 'continuous' or None")
    if kind is None:
        x, y = _paired(a, b)
        kind = "binary" if _is_binary(x) and _is_binary(y) else "continuous"
    return mcnemar_exact(a, b, name=name) if kind == "binary" else paired_bootstrap(a, b, name=name)


def holm(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Holm-Bonferroni step-down over one family of m tests. With the p-values sorted ascending (k = 0..m-1):
    adjusted_(k) = max over j <= k of min(1, (m - j)·p_(j)); significant = adjusted <= alpha. Returns new
    Comparisons in the input order."""
    m = len(comparisons)
    order = sorted(range(m), key=lambda i: comparisons[i].p_value)
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * comparisons[i].p_value))
        adjusted[i] = running
    return [dataclasses.replace(c, adjusted_p=adj, significant=adj <= alpha) for c, adj in zip(comparisons, adjusted)]
