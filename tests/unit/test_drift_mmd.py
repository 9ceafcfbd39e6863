"""MMD statistic, permutation test and the streaming MMD drift detector (pure numpy, fixed seeds)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from atalaia.drift import DriftDetector, MMDDriftDetector, median_bandwidth, mmd2, mmd_permutation_test

DIM = 384


def embeddings(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Gaussian vectors, shifted by ``shift`` in every dimension, normalised to unit length."""
    z = rng.normal(size=(n, DIM)) + shift
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def run(detector: MMDDriftDetector, stream: np.ndarray) -> list[tuple[int, float, bool]]:
    """(n_tests, score, drift_detected) after every update that ran a test."""
    out = []
    for x in stream:
        before = detector.n_tests
        detector.update(x)
        if detector.n_tests > before:
            out.append((detector.n_tests, detector.score, detector.drift_detected))
    return out


# -- mmd2 ------------------------------------------------------------------------------------


def test_mmd2_near_zero_for_same_distribution_and_positive_for_shift() -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(400, 20)), rng.normal(size=(400, 20))
    same = mmd2(X, Y)
    shifted = mmd2(X, rng.normal(loc=0.3, size=(400, 20)))
    assert abs(same) < 2e-3
    assert shifted > 10 * abs(same)
    assert shifted > 0.01


def test_mmd2_accepts_float32_and_matches_float64() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(100, 16)), rng.normal(loc=0.2, size=(120, 16))
    assert mmd2(X.astype(np.float32), Y.astype(np.float32), bandwidth=5.0) == pytest.approx(
        mmd2(X, Y, bandwidth=5.0), rel=1e-5
    )


def test_mmd2_matches_the_definition() -> None:
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(40, 4))
    bw = 1.7

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * bw**2))

    kxx, kyy, kxy = k(X, X), k(Y, Y), k(X, Y)
    m, n = len(X), len(Y)
    expected = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )
    assert mmd2(X, Y, bandwidth=bw) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_median_bandwidth_is_the_median_distance() -> None:
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(60, 5))
    d = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(-1))[np.triu_indices(60, 1)]
    assert median_bandwidth(Z) == pytest.approx(np.median(d), rel=1e-9)
    # Subsampled above max_points, still close.
    big = rng.normal(size=(3000, 5))
    assert median_bandwidth(big, max_points=500) == pytest.approx(
        median_bandwidth(big[:1500], max_points=1500), rel=0.05
    )


def test_mmd2_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        mmd2(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        mmd2(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError):
        mmd2(np.zeros((5, 3)), np.zeros((5, 3)), bandwidth=0.0)


# -- permutation test ------------------------------------------------------------------------


def test_permutation_p_values_are_spread_under_the_null() -> None:
    rng = np.random.default_rng(4)
    p = np.array(
        [
            mmd_permutation_test(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), n_permutations=200, seed=i).p_value
            for i in range(20)
        ]
    )
    assert np.all((p > 0) & (p <= 1))
    assert (p < 0.05).sum() <= 3
    assert 0.25 < p.mean() < 0.75
    assert p.max() > 0.6


def test_permutation_detects_a_shift_in_a_few_dimensions() -> None:
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(200, 64)), rng.normal(size=(200, 64))
    Y[:, :10] += 0.5
    res = mmd_permutation_test(X, Y, n_permutations=500)
    assert res.p_value == pytest.approx(1 / 501)
    assert res.statistic == pytest.approx(mmd2(X, Y, bandwidth=res.bandwidth))
    assert res.bandwidth == pytest.approx(median_bandwidth(np.vstack([X, Y])))


def test_permutation_test_is_reproducible() -> None:
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(70, 3))
    assert mmd_permutation_test(X, Y, seed=1) == mmd_permutation_test(X, Y, seed=1)


# -- detector ------------------------------------------------------------------------------


def test_detector_is_a_drift_detector_and_learns_its_reference_from_the_stream() -> None:
    rng = np.random.default_rng(7)
    det = MMDDriftDetector(reference_size=50, window_size=20, stride=5, n_calibration=50)
    assert isinstance(det, DriftDetector)
    for x in rng.normal(size=(49, 3)):
        det.update(x)
    assert not det.is_calibrated and np.isnan(det.threshold)
    det.update(rng.normal(size=3))
    assert det.is_calibrated and det.threshold > 0 and det.bandwidth > 0
    for x in rng.normal(size=(19, 3)):
        det.update(x)
    assert det.n_tests == 0 and np.isnan(det.score)
    det.update(rng.normal(size=3))  # the window is full: first test
    assert det.n_tests == 1 and not np.isnan(det.score)
    for _ in range(4):
        det.update(rng.normal(size=3))
    assert det.n_tests == 1
    det.update(rng.normal(size=3))  # stride 5
    assert det.n_tests == 2
    with pytest.raises(ValueError):
        det.update(np.zeros(4))
    det.reset()
    assert not det.is_calibrated and det.n_tests == 0 and det.n_updates == 0


def test_detector_stationary_embeddings_raise_no_alarm() -> None:
    rng = np.random.default_rng(8)
    det = MMDDriftDetector(target_arl=1000, seed=0)  # reference 500, window 200, stride 50
    results = run(det, embeddings(rng, 3000))
    assert det.n_tests == len(results) == (3000 - 500 - 200) // 50 + 1
    assert not any(alarm for _, _, alarm in results)
    assert all(score < det.threshold for _, score, _ in results)


@pytest.mark.parametrize("shift", ["+0.05 all", "+0.5 in 10"])
def test_detector_catches_small_shifts_within_a_few_tests(shift: str) -> None:
    rng = np.random.default_rng(9)
    reference = embeddings(rng, 500)
    # The fixed-reference calibration: reference_confidence's higher threshold misses "+0.05 all"
    # on these isotropic vectors (see the MMDDriftDetector docstring).
    det = MMDDriftDetector(reference=reference, target_arl=1000, reference_confidence=None, seed=0)
    assert run(det, embeddings(rng, 1000)) and not det.drift_detected  # stationary warm-up: 17 tests
    tests_before = det.n_tests
    if shift == "+0.05 all":
        shifted = embeddings(rng, 1000, shift=0.05)
    else:
        z = rng.normal(size=(1000, DIM))
        z[:, :10] += 0.5
        shifted = z / np.linalg.norm(z, axis=1, keepdims=True)
    after = [(n - tests_before, alarm) for n, _, alarm in run(det, shifted)]
    alarms = [n for n, alarm in after if alarm]
    assert alarms, "shift not detected"
    assert alarms[0] <= 6  # the window is fully shifted after 4 tests
    # Drift persists, so most later tests alarm too (the reference is not replaced).
    late = [alarm for n, alarm in after if n >= 4]
    assert sum(late) >= 0.6 * len(late)


def test_state_round_trip_gives_identical_decisions() -> None:
    rng = np.random.default_rng(10)
    stream = np.vstack([embeddings(rng, 1000), embeddings(rng, 600, shift=0.15)])
    # Snapshots while collecting the reference, while filling the window, and between tests.
    for cut in (200, 600, 1020, 1300):
        det = MMDDriftDetector(reference_size=400, window_size=150, stride=40, seed=3)
        run(det, stream[:cut])
        state = det.state_dict()
        restored = MMDDriftDetector.from_state(state)
        from_blob = MMDDriftDetector.from_bytes(det.to_bytes())
        expected = run(det, stream[cut:])
        assert expected and any(alarm for _, _, alarm in expected)
        assert run(restored, stream[cut:]) == expected
        assert run(from_blob, stream[cut:]) == expected
        assert restored.threshold == det.threshold and from_blob.bandwidth == det.bandwidth


def test_state_dict_is_plain_and_bytes_need_no_pickle() -> None:
    rng = np.random.default_rng(11)
    det = MMDDriftDetector(reference=rng.normal(size=(60, 4)), window_size=20, stride=10, n_calibration=30)
    run(det, rng.normal(size=(35, 4)))
    state = det.state_dict()
    for key, value in state.items():
        assert value is None or isinstance(value, int | float | bool | dict | np.ndarray), key
    blob = det.to_bytes()
    assert blob[:2] == b"PK"  # a zip (npz) archive
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        assert set(npz.files) == {"meta", "reference", "window"}
    restored = MMDDriftDetector.from_bytes(blob)
    assert restored.n_tests == det.n_tests == 2 and restored.score == det.score
    # A given reference survives reset.
    restored.reset()
    assert restored.is_calibrated and restored.n_tests == 0


def test_threshold_false_alarm_rate_is_plausible() -> None:
    """target_arl=20: per-test false-alarm probability 1/20, averaged over references (the
    reference's own sampling noise moves the rate of a single reference up or down)."""
    alarms = tests = 0
    for r in range(8):
        rng = np.random.default_rng(100 + r)
        reference = embeddings(rng, 500)
        det = MMDDriftDetector(
            reference=reference, window_size=200, stride=200, target_arl=20, reference_confidence=None, seed=r
        )
        results = run(det, embeddings(rng, 200 * 25))  # non-overlapping windows: independent tests
        alarms += sum(alarm for _, _, alarm in results)
        tests += len(results)
    assert tests == 200
    rate = alarms / tests
    assert 0.005 <= rate <= 3 / 20, rate


def test_reference_confidence_bounds_the_rate_of_every_reference() -> None:
    """With the reference's variance accounted for, no reference's tests alarm much more often
    than the target (the fixed-reference calibration lets unlucky references reach several times
    it), and the threshold is above the fixed-reference one."""
    rates = []
    for r in range(6):
        rng = np.random.default_rng(300 + r)
        reference = embeddings(rng, 500)
        det = MMDDriftDetector(reference=reference, window_size=200, stride=200, target_arl=20, seed=r)
        old = MMDDriftDetector(
            reference=reference, window_size=200, stride=200, target_arl=20, reference_confidence=None, seed=r
        )
        assert det.threshold > old.threshold
        results = run(det, embeddings(rng, 200 * 25))
        rates.append(sum(alarm for _, _, alarm in results) / len(results))
    assert max(rates) <= 2 / 20, rates


def test_state_of_version_1_restores_with_its_stored_threshold() -> None:
    rng = np.random.default_rng(12)
    det = MMDDriftDetector(reference=rng.normal(size=(60, 4)), window_size=20, stride=10, reference_confidence=None)
    state = det.state_dict()
    state["version"] = 1
    del state["params"]["reference_confidence"]
    restored = MMDDriftDetector.from_state(state)
    assert restored.reference_confidence is None and restored.threshold == det.threshold
