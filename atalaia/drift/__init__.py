"""Drift detectors: one detector per module behind :class:`DriftDetector` (as in ``river.drift``).

Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

from atalaia.drift.base import DriftDetector
from atalaia.drift.mmd import MMDDriftDetector, MMDResult, median_bandwidth, mmd2, mmd_permutation_test

__all__ = ["DriftDetector", "MMDDriftDetector", "MMDResult", "median_bandwidth", "mmd2", "mmd_permutation_test"]
