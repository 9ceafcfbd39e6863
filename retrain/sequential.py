"""Anytime-valid comparison of two live streams: a confidence sequence on the difference of means.

The canary looks at its data every few seconds and stops as soon as it knows enough. A fixed-
sample test read that often would decide wrongly far more often than its nominal level; a
*confidence sequence* is a sequence of intervals that holds the true difference at every look at
once with probability ``1 - alpha``, so the canary may look as often as it likes and stop at any
time.

The interval is the Gaussian-mixture boundary (Robbins' normal mixture, the "mSPRT" of Johari et
al., *Always valid inference*, 2017): with ``d`` the observed difference of means of the two arms
and ``v = var_a / n_a + var_b / n_b`` its variance, the mixture likelihood ratio against a
difference ``delta`` is

    Lambda = sqrt(v / (v + tau^2)) * exp(tau^2 (d - delta)^2 / (2 v (v + tau^2)))

and the set of ``delta`` with ``Lambda < 1 / alpha`` is the interval ``d ± r`` with

    r^2 = v (v + tau^2) / tau^2 * (2 log(1/alpha) + log((v + tau^2) / v)).

The variances are plugged in from the samples (an asymptotic confidence sequence: the coverage
holds as the samples grow, which :mod:`tests.unit.test_sequential` checks on simulated streams).
``tau`` is the scale of differences the test is tuned to detect fastest; any positive value keeps
the guarantee.

Decisions (:func:`decide`) are a non-inferiority test with a margin ``m`` on a difference oriented
so that higher is better: ``ok`` once the lower bound is above ``-m`` (not worse than the margin,
with confidence), ``worse`` once the upper bound is below ``-m`` (worse than the margin, with
confidence), ``undecided`` until then. Each wrong decision has probability at most ``alpha``
whenever the stream is looked at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["ok", "worse", "undecided"]


@dataclass(frozen=True)
class Interval:
    """A confidence-sequence interval on ``mean(a) - mean(b)`` at one look."""

    difference: float
    lower: float
    upper: float
    n_a: int
    n_b: int


def mean_and_variance(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and unbiased variance (0 for fewer than two values).

    Examples
    --------
    >>> mean_and_variance([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.fsum((x - mean) ** 2 for x in values) / (n - 1)


def radius(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate of variance ``variance``.

    Parameters
    ----------
    variance
        Variance of the estimated difference (``var_a / n_a + var_b / n_b``); positive.
    alpha
        Probability that the sequence ever misses the true difference.
    tau
        Standard deviation of the mixing distribution: the size of difference detected fastest.

    Examples
    --------
    The interval shrinks as the variance falls (more samples), a little slower than a fixed-sample
    interval (the price of looking at any time):

    >>> round(radius(0.01, 0.05, 0.1), 3), round(radius(0.0001, 0.05, 0.1), 4)
    (0.366, 0.0327)
    >>> round(1.96 * 0.01, 4)  # the fixed-sample 95 % half-width at the smaller variance
    0.0196
    """
    if variance <= 0 or tau <= 0 or not 0 < alpha < 1:
        raise ValueError("variance and tau must be positive and alpha in (0, 1)")
    tau2 = tau * tau
    log_terms = 2 * math.log(1 / alpha) + math.log((variance + tau2) / variance)
    return math.sqrt(variance * (variance + tau2) / tau2 * log_terms)


def confidence_interval(
    a: Sequence[float], b: Sequence[float], *, alpha: float, tau: float, min_variance: float = 1e-12
) -> Interval:
    """The confidence-sequence interval on ``mean(a) - mean(b)`` from all samples so far.

    Parameters
    ----------
    a, b
        The two arms' samples (e.g. the candidate's and the parent's ROUGE-L in the same period).
    alpha
        Error probability over all looks.
    tau
        Mixing scale (see :func:`radius`).
    min_variance
        Floor on each arm's variance: a few identical values must not give a zero-width interval.

    Examples
    --------
    >>> iv = confidence_interval([0.5, 0.6, 0.55] * 100, [0.4, 0.5, 0.45] * 100, alpha=0.05, tau=0.1)
    >>> round(iv.difference, 3), iv.lower > 0
    (0.1, True)
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each arm needs at least two samples")
    mean_a, var_a = mean_and_variance(a)
    mean_b, var_b = mean_and_variance(b)
    v = max(var_a, min_variance) / len(a) + max(var_b, min_variance) / len(b)
    d = mean_a - mean_b
    r = radius(v, alpha, tau)
    return Interval(d, d - r, d + r, len(a), len(b))


def decide(interval: Interval, margin: float, *, higher_is_better: bool = True) -> Outcome:
    """Non-inferiority verdict of the first arm (``a``, the candidate) against the second.

    ``ok``: the candidate is not worse than ``margin`` with confidence; ``worse``: it is worse
    than ``margin`` with confidence; ``undecided`` otherwise.

    Examples
    --------
    >>> decide(Interval(-0.02, -0.04, 0.0, 100, 100), margin=0.05)
    'ok'
    >>> decide(Interval(-0.2, -0.3, -0.1, 100, 100), margin=0.05)
    'worse'
    >>> decide(Interval(30.0, 10.0, 50.0, 100, 100), margin=20.0, higher_is_better=False)
    'undecided'
    """
    if higher_is_better:
        lower, upper = interval.lower, interval.upper
    else:  # lower is better: the oriented difference is -(a - b)
        lower, upper = -interval.upper, -interval.lower
    if lower > -margin:
        return "ok"
    if upper < -margin:
        return "worse"
    return "undecided"
