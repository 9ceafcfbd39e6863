"""Base class of the drift detectors (modelled on ``river.base.DriftDetector``)."""

from __future__ import annotations

import abc
import inspect
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

#: What a scalar detector saves besides its counters: field name → converter applied on load.
StateFields = Mapping[str, Callable[[Any], Any]]


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


class ScalarDriftDetector(DriftDetector):
    """A change detector of a stream of numbers whose whole state is a small JSON document.

    Subclasses (one per module, as in ``river.drift``) set :attr:`kind` and :attr:`state_fields`
    and implement :meth:`update` and :meth:`reset`. Persistence lives here: :meth:`params` reads
    the constructor's arguments back from attributes of the same name, :meth:`to_dict` saves
    :attr:`state_fields` (attribute ``_<name>``) and the three counters, and :meth:`from_dict`
    builds a detector from the params and restores them; a detector whose state is not flat
    extends :meth:`_state` and :meth:`_load_state`. :meth:`to_bytes` and :meth:`from_bytes` wrap
    the dict in UTF-8 JSON so the state can be stored (for example in a database column) and
    survive a restart. Floats are written with ``repr`` precision, so a restored detector
    continues bit for bit where the saved one stopped.
    """

    #: Name of the detector in :func:`atalaia.drift.make_detector` and in saved states.
    kind: ClassVar[str]
    #: Version of the saved state; raise it when :attr:`state_fields` change meaning.
    state_version: ClassVar[int] = 1
    #: The state saved besides the counters: ``name`` → converter; the value is attribute ``_<name>``.
    state_fields: ClassVar[StateFields] = {}
    _COUNTERS: ClassVar[StateFields] = {
        "n_updates": int,
        "n_detections": int,
        "drift_detected": bool,
    }

    @abc.abstractmethod
    def update(self, x: float) -> None:
        """Feed one value (a finite number; NaN and infinities raise :class:`ValueError`)."""

    # Subclasses keep these three counters up to date in update() and reset().
    _drift_detected: bool
    _n_updates: int
    _n_detections: int

    @property
    def drift_detected(self) -> bool:
        """Whether the latest :meth:`update` detected drift."""
        return self._drift_detected

    @property
    def n_updates(self) -> int:
        """Number of values fed since the detector was built or :meth:`reset`."""
        return self._n_updates

    @property
    def n_detections(self) -> int:
        """Number of updates that detected drift since the detector was built or :meth:`reset`."""
        return self._n_detections

    def params(self) -> dict[str, Any]:
        """The constructor arguments, so that ``type(d)(**d.params())`` builds a fresh twin.

        Each argument is read from the attribute of the same name (subclasses store them so).
        """
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, name) for name in names}

    def _state(self) -> dict[str, Any]:
        """The values of :attr:`state_fields` and the counters, by name."""
        return {name: getattr(self, f"_{name}") for name in {**self.state_fields, **self._COUNTERS}}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`_state`: set each field from ``state`` through its converter."""
        for name, convert in {**self.state_fields, **self._COUNTERS}.items():
            setattr(self, f"_{name}", convert(state[name]))

    def to_dict(self) -> dict[str, Any]:
        """The full state as JSON-compatible values (``kind``, ``version``, ``params``, ``state``)."""
        return {"kind": self.kind, "version": self.state_version, "params": self.params(), "state": self._state()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a detector from :meth:`to_dict`; it continues exactly where it stopped."""
        cls._check_header(data, cls.state_version)
        det = cls(**data["params"])
        det._load_state(data["state"])
        return det

    def to_bytes(self) -> bytes:
        """:meth:`to_dict` as compact UTF-8 JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Inverse of :meth:`to_bytes`."""
        return cls.from_dict(json.loads(data))

    @classmethod
    def _check_header(cls, data: Mapping[str, Any], version: int) -> None:
        """Reject a state written by another detector kind or an unknown state version."""
        if data.get("kind") != cls.kind:
            raise ValueError(f"state of a {data.get('kind')!r} detector, not {cls.kind!r}")
        if data.get("version") != version:
            raise ValueError(f"unsupported {cls.kind} state version {data.get('version')!r}")


# --------------------------------------------------------------------------------------------
# parameter and input checks shared by the scalar detectors (messages name the parameter)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float within ``[low, high]`` (ends open where asked), or a ValueError naming ``name``.

    Booleans and strings are refused even though Python could convert them: in a rule file they
    are a typo, not a number.

    >>> check_number("delta", 0.5, low=0, high=1, low_open=True)
    0.5
    >>> check_number("delta", "0.5")
    Traceback (most recent call last):
    ...
    ValueError: delta must be a number, got '0.5'
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return v


def check_int(name: str, value: Any, *, low: int) -> int:
    """``value`` as an int ``>= low``, or a ValueError naming ``name`` (floats like ``30.0`` pass).

    >>> check_int("clock", 32, low=1)
    32
    >>> check_int("clock", 0, low=1)
    Traceback (most recent call last):
    ...
    ValueError: clock must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_value(x: Any) -> float:
    """One stream value as a float; NaN, infinities and non-numbers raise ValueError."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {x!r}")
    return v
