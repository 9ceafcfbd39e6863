"""The canary's sequential test on simulated streams: wrong decisions stay under alpha however
often it looks, and real differences are found (power)."""

from __future__ import annotations

import numpy as np
import pytest

from retrain.sequential import Interval, confidence_interval, decide, mean_and_variance, radius

ALPHA = 0.05
MARGIN = 0.04  # ROUGE-L 0.4 with a 10 % relative margin
SD = 0.2  # spread of per-answer ROUGE-L
STREAMS = 300
SHARE = 0.2  # the candidate's share of requests
TOTAL = 4000  # requests per stream
LOOK_EVERY = 20  # requests between two looks: the canary looks often


def _first_decisions(candidate_mean: float, parent_mean: float, seed: int) -> list[tuple[str, int]]:
    """Run each simulated stream until its first decision; (outcome, requests seen) per stream."""
    rng = np.random.default_rng(seed)
    n_cand, n_par = int(TOTAL * SHARE), int(TOTAL * (1 - SHARE))
    cand = rng.normal(candidate_mean, SD, (STREAMS, n_cand))
    par = rng.normal(parent_mean, SD, (STREAMS, n_par))
    c1, c2 = np.cumsum(cand, axis=1), np.cumsum(cand**2, axis=1)
    p1, p2 = np.cumsum(par, axis=1), np.cumsum(par**2, axis=1)
    out = []
    for s in range(STREAMS):
        outcome, seen = "undecided", TOTAL
        for total in range(LOOK_EVERY * 5, TOTAL + 1, LOOK_EVERY):
            na, nb = max(int(total * SHARE), 2), max(int(total * (1 - SHARE)), 2)
            ma, mb = c1[s, na - 1] / na, p1[s, nb - 1] / nb
            va = (c2[s, na - 1] - na * ma * ma) / (na - 1)
            vb = (p2[s, nb - 1] - nb * mb * mb) / (nb - 1)
            d = ma - mb
            r = radius(va / na + vb / nb, ALPHA, MARGIN)
            verdict = decide(Interval(d, d - r, d + r, na, nb), MARGIN)
            if verdict != "undecided":
                outcome, seen = verdict, total
                break
        out.append((outcome, seen))
    return out


def test_a_candidate_exactly_at_the_margin_is_rarely_called_ok() -> None:
    """At the boundary of the null (worse by exactly the margin), ``ok`` is the wrong decision."""
    results = _first_decisions(0.4 - MARGIN, 0.4, seed=1)
    wrong = sum(o == "ok" for o, _ in results) / STREAMS
    assert wrong <= ALPHA, wrong


def test_an_equal_candidate_is_rarely_called_worse() -> None:
    results = _first_decisions(0.4, 0.4, seed=2)
    wrong = sum(o == "worse" for o, _ in results) / STREAMS
    assert wrong <= ALPHA, wrong


def test_power_a_much_worse_candidate_is_rolled_back_and_an_equal_one_kept() -> None:
    worse = _first_decisions(0.4 - 3 * MARGIN, 0.4, seed=3)
    assert sum(o == "worse" for o, _ in worse) / STREAMS >= 0.9
    assert all(o != "ok" for o, _ in worse)
    equal = _first_decisions(0.4, 0.4, seed=4)
    assert sum(o == "ok" for o, _ in equal) / STREAMS >= 0.9
    # A clearly worse candidate is caught well before the stream's end.
    assert float(np.median([n for o, n in worse if o == "worse"])) < TOTAL / 2


def test_confidence_interval_matches_the_running_form() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.5, 0.1, 50).tolist(), rng.normal(0.4, 0.1, 200).tolist()
    iv = confidence_interval(a, b, alpha=ALPHA, tau=0.05)
    ma, va = mean_and_variance(a)
    mb, vb = mean_and_variance(b)
    r = radius(va / 50 + vb / 200, ALPHA, 0.05)
    assert iv.difference == pytest.approx(ma - mb)
    assert (iv.lower, iv.upper) == pytest.approx((ma - mb - r, ma - mb + r))
    assert (iv.n_a, iv.n_b) == (50, 200)


def test_constant_samples_get_a_floor_not_a_zero_width_interval() -> None:
    iv = confidence_interval([0.4] * 10, [0.4] * 10, alpha=ALPHA, tau=0.05, min_variance=1e-4)
    assert iv.upper > iv.lower


def test_bad_arguments_fail() -> None:
    with pytest.raises(ValueError):
        confidence_interval([0.4], [0.4, 0.5], alpha=ALPHA, tau=0.05)
    with pytest.raises(ValueError):
        radius(0.0, ALPHA, 0.05)
    with pytest.raises(ValueError):
        mean_and_variance([])


def test_lower_is_better_flips_the_orientation() -> None:
    # Candidate latency 30 ms above the parent's, surely: worse beyond a 10 ms margin.
    assert decide(Interval(30.0, 20.0, 40.0, 50, 50), 10.0, higher_is_better=False) == "worse"
    assert decide(Interval(-5.0, -8.0, 2.0, 50, 50), 10.0, higher_is_better=False) == "ok"
