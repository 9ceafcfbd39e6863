"""Drift detectors: one detector per module behind :class:`DriftDetector` (as in ``river.drift``).

- :class:`MMDDriftDetector` (``mmd``): embedding vectors against a reference set.
- :class:`PageHinkley` (``page_hinkley``) and :class:`ADWIN` (``adwin``): the mean of a stream of
  numbers (latency, cost, a score). Build them by name with :func:`make_detector`, store them with
  ``to_bytes()`` and restore any of them with :func:`detector_from_bytes`.

Pure numpy/scipy/Python, no I/O.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

from atalaia.drift.adwin import ADWIN
from atalaia.drift.base import DriftDetector, ScalarDriftDetector
from atalaia.drift.mmd import MMDDriftDetector, MMDResult, median_bandwidth, mmd2, mmd_permutation_test
from atalaia.drift.page_hinkley import PageHinkley

__all__ = [
    "ADWIN",
    "DETECTOR_KINDS",
    "DriftDetector",
    "MMDDriftDetector",
    "MMDResult",
    "PageHinkley",
    "ScalarDriftDetector",
    "detector_from_bytes",
    "detector_from_dict",
    "make_detector",
    "median_bandwidth",
    "mmd2",
    "mmd_permutation_test",
]

#: The scalar detectors by name, as used in rule files and saved states.
DETECTOR_KINDS: dict[str, type[ScalarDriftDetector]] = {PageHinkley.kind: PageHinkley, ADWIN.kind: ADWIN}


def _detector_class(kind: Any) -> type[ScalarDriftDetector]:
    cls = DETECTOR_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown drift detector kind {kind!r}; use one of {sorted(DETECTOR_KINDS)}")
    return cls


def make_detector(kind: str, **params: Any) -> ScalarDriftDetector:
    """Build a scalar drift detector by name; every error is a ValueError naming the kind or parameter.

    Parameters
    ----------
    kind
        ``"page_hinkley"`` (:class:`PageHinkley`) or ``"adwin"`` (:class:`ADWIN`).
    **params
        Constructor arguments of that class; omitted ones take the calibrated defaults (no false
        alarm over 10,000 stationary values of typical metric noise, see the classes' Notes).

    Returns
    -------
    ScalarDriftDetector
        A fresh :class:`DriftDetector`: call ``update(x)`` with each value, then read
        ``drift_detected``.

    Raises
    ------
    ValueError
        Unknown kind, unknown parameter or invalid value.

    Examples
    --------
    >>> det = make_detector("page_hinkley", mode="up", threshold=40)
    >>> det.update(812.0)
    >>> det.drift_detected
    False
    >>> make_detector("cusum")
    Traceback (most recent call last):
    ...
    ValueError: unknown drift detector kind 'cusum'; use one of ['adwin', 'page_hinkley']
    >>> make_detector("adwin", delta=2)
    Traceback (most recent call last):
    ...
    ValueError: drift detector 'adwin': delta must be < 1, got 2
    >>> make_detector("adwin", threshold=5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: drift detector 'adwin': unknown parameter 'threshold'; valid: clock, delta, max_buckets, ...
    """
    cls = _detector_class(kind)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [p for p in params if p not in valid]
    if unknown:
        names = ", ".join(repr(p) for p in unknown)
        raise ValueError(
            f"drift detector {kind!r}: unknown parameter{'s' if len(unknown) > 1 else ''} {names}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    try:
        return cls(**params)
    except ValueError as exc:
        raise ValueError(f"drift detector {kind!r}: {exc}") from None


def detector_from_dict(data: Mapping[str, Any]) -> ScalarDriftDetector:
    """Restore any scalar detector from its ``to_dict()`` (dispatching on ``data["kind"]``).

    >>> det = make_detector("adwin")
    >>> for x in range(50):
    ...     det.update(float(x % 7))
    >>> detector_from_dict(det.to_dict()).width
    50
    """
    return _detector_class(data.get("kind")).from_dict(data)


def detector_from_bytes(data: bytes) -> ScalarDriftDetector:
    """Restore any scalar detector from its ``to_bytes()``.

    >>> type(detector_from_bytes(make_detector("page_hinkley").to_bytes())).__name__
    'PageHinkley'
    """
    return detector_from_dict(json.loads(data))
