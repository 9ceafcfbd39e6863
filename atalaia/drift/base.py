"""Base class of the drift detectors (modelled on ``river.base.DriftDetector``)."""

from __future__ import annotations

import abc
from typing import Any


class DriftDetector(abc.ABC):
    """A detector fed one observation at a time.

    After each :meth:`update`, :attr:`drift_detected` says whether *that* update raised an alarm
    (as in river, it describes the latest update only, so it is read after every call).
    """

    @abc.abstractmethod
    def update(self, x: Any) -> None:
        """Feed one observation to the detector."""

    @property
    @abc.abstractmethod
    def drift_detected(self) -> bool:
        """Whether the latest :meth:`update` detected drift."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget what was seen since the detector was built (its configuration stays)."""
