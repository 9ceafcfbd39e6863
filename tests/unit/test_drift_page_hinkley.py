"""Page-Hinkley detector: detection delay, no false alarm on stationary noise, state, factory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atalaia.drift import DriftDetector, PageHinkley, detector_from_bytes, make_detector


def first_alarm(det: PageHinkley, values: np.ndarray) -> int | None:
    for i, x in enumerate(values, start=1):
        det.update(float(x))
        if det.drift_detected:
            return i
    return None


@pytest.mark.parametrize("seed", range(5))
def test_detects_a_one_sd_mean_shift_within_a_bounded_delay(seed: int) -> None:
    rng = np.random.default_rng(seed)
    det = PageHinkley()
    assert first_alarm(det, rng.normal(10.0, 2.0, 1500)) is None
    delay = first_alarm(det, rng.normal(12.0, 2.0, 1000))  # +1 sd, in metric units
    # Expected about threshold / (1 - delta) = 63 values; 95th percentile 80 in simulation.
    assert delay is not None and delay <= 110


def test_scale_makes_thresholds_unit_free() -> None:
    """The same stream in ms and in s (x1000) gives alarms at the same update."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.lognormal(0, 0.5, 1000), 1.5 * rng.lognormal(0, 0.5, 500)])
    assert first_alarm(PageHinkley(), x) == first_alarm(PageHinkley(), 1000 * x) is not None


def test_no_false_alarm_over_ten_thousand_stationary_values() -> None:
    rng = np.random.default_rng(2026)
    for values in (rng.normal(0.3, 0.05, 10_100), 800 * rng.lognormal(0.0, 0.5, 10_100)):
        det = PageHinkley()
        assert first_alarm(det, values) is None
        assert det.n_detections == 0 and det.n_updates == 10_100


def test_one_sided_modes() -> None:
    rng = np.random.default_rng(3)
    base, drop = rng.normal(0, 1, 500), rng.normal(-2, 1, 300)
    assert first_alarm(PageHinkley(mode="up"), np.concatenate([base, drop])) is None
    assert first_alarm(PageHinkley(mode="down"), np.concatenate([base, drop])) is not None
    assert first_alarm(PageHinkley(mode="both"), np.concatenate([base, drop])) is not None


def test_warmup_and_restart_after_an_alarm() -> None:
    det = PageHinkley(min_instances=10, threshold=5, delta=0.0)
    for _ in range(10):
        det.update(1.0)
        assert det.in_warmup and not det.drift_detected
    det.update(1.0)
    assert not det.in_warmup
    # No spread so far: the scale falls back to |mean| = 1, so each +10 adds about 9.
    assert det.current_scale == 1.0
    det.update(11.0)
    assert not det.drift_detected  # 11 - mean(1.83) ≈ 9.2 over the new running sd ≈ 3.0
    det.update(11.0)
    assert det.drift_detected and det.n_detections == 1
    det.update(11.0)  # the update after an alarm restarts: a new warm-up begins
    assert not det.drift_detected and det.in_warmup and det.mean == 11.0
    assert det.n_updates == 14 and det.n_detections == 1
    det.reset()
    assert det.n_updates == 0 and det.n_detections == 0 and det.statistic == 0.0


def test_fixed_scale_means_metric_units() -> None:
    det = PageHinkley(min_instances=1, delta=0.0, threshold=2.5, alpha=1.0, scale=1.0)
    for x in (0.0, 1.0, 1.0, 1.0, 1.0):
        det.update(x)
    # running means 0, 0.5, 0.67, 0.75, 0.8 -> sums 0.5, 0.83, 1.08, 1.28 (the first value only trains)
    assert det.statistic == pytest.approx(0.5 + 1 / 3 + 0.25 + 0.2)
    assert not det.drift_detected


def test_state_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 700), rng.normal(0.8, 1, 700)])
    a = PageHinkley(mode="up", alpha=0.999)
    for v in x[:650]:
        a.update(float(v))
    b = PageHinkley.from_bytes(a.to_bytes())
    c = detector_from_bytes(a.to_bytes())
    assert json.loads(a.to_bytes()) == a.to_dict()
    assert b.params() == a.params() and isinstance(c, PageHinkley)
    for v in x[650:]:
        for det in (a, b, c):
            det.update(float(v))
        assert a.drift_detected == b.drift_detected == c.drift_detected
        assert a.statistic == b.statistic == c.statistic and a.mean == b.mean
    assert a.n_detections >= 1 and a.to_dict() == b.to_dict()


def test_from_dict_rejects_other_kinds_and_versions() -> None:
    state = PageHinkley().to_dict()
    with pytest.raises(ValueError, match="'adwin' detector"):
        PageHinkley.from_dict({**state, "kind": "adwin"})
    with pytest.raises(ValueError, match="version 99"):
        PageHinkley.from_dict({**state, "version": 99})


def test_factory_builds_page_hinkley() -> None:
    det = make_detector("page_hinkley", delta=0.1, threshold=60, mode="up", min_instances=30)
    assert isinstance(det, PageHinkley) and isinstance(det, DriftDetector)
    assert det.params() == {
        "min_instances": 30, "delta": 0.1, "threshold": 60.0, "alpha": 0.9999, "mode": "up", "scale": None
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 0}, "threshold must be > 0"),
        ({"threshold": "high"}, "threshold must be a number, got 'high'"),
        ({"delta": -0.1}, "delta must be >= 0"),
        ({"alpha": 1.5}, "alpha must be <= 1"),
        ({"mode": "sideways"}, "mode must be one of"),
        ({"min_instances": 1}, "min_instances must be an integer >= 2"),
        ({"min_instances": True}, "min_instances must be an integer"),
        ({"scale": 0}, "scale must be > 0"),
        ({"lambda": 50}, "unknown parameter 'lambda'; valid: alpha, delta, min_instances, mode, scale, threshold"),
    ],
)
def test_factory_errors_name_the_parameter(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="drift detector 'page_hinkley': " + message.replace("(", r"\(")):
        make_detector("page_hinkley", **params)


def test_factory_rejects_unknown_kinds() -> None:
    for kind in ("PageHinkley", "mmd", "", None):
        with pytest.raises(ValueError, match=r"unknown drift detector kind .*use one of \['adwin', 'page_hinkley'\]"):
            make_detector(kind)  # type: ignore[arg-type]


def test_update_rejects_non_finite_values() -> None:
    det = PageHinkley()
    for bad in (float("nan"), float("inf"), "1.0x", None):
        with pytest.raises(ValueError, match="expected a"):
            det.update(bad)  # type: ignore[arg-type]
    assert det.n_updates == 0
