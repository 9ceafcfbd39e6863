"""Declarative alert rules, loaded from YAML and validated with errors that name the rule and key."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atalaia.drift.base import DriftDetector

Aggregation = Literal["mean", "min", "max", "p50", "p95", "p99", "count", "rate", "sum", "share", "error_share"]
Comparator = Literal[">", ">=", "<", "<="]
GROUPABLE = ("model_version", "service")
#: Keys of a threshold rule that mean nothing on a detector rule.
THRESHOLD_ONLY = (
    "threshold",
    "on_no_data",
    "resolve_threshold",
    "aggregation",
    "comparator",
    "min_samples",
    "share_above",
    "baseline",
)

_detector_factory: Callable[..., DriftDetector] | None = None


class RuleError(ValueError):
    """A rule file is invalid; the message names the rule, the key and what is wrong."""


def set_detector_factory(factory: Callable[..., DriftDetector] | None) -> None:
    """Use ``factory(kind, **params)`` to build streaming detectors (None: ``atalaia.drift.make_detector``).

    Tests use it to run detector rules with a fake detector.
    """
    global _detector_factory
    _detector_factory = factory


def make_detector(kind: str, params: dict[str, Any]) -> DriftDetector:
    """Build a streaming change detector of ``kind`` with ``params``.

    Raises ``ValueError`` naming the kind or parameter that is wrong.
    """
    factory: Callable[..., DriftDetector]
    if _detector_factory is not None:
        factory = _detector_factory
    else:
        from atalaia.drift import make_detector as factory
    try:
        return factory(kind, **params)
    except TypeError as exc:
        # An unexpected or missing keyword argument: name the parameter, not the Python call.
        raise ValueError(f"bad parameters for detector {kind!r}: {exc}") from None


def _detector_key(message: str) -> str:
    """The rule key a detector error is about: ``detector.kind``, ``detector.<param>`` or ``detector``."""
    if "kind" in message and "unknown" in message and "parameter" not in message:
        return "detector.kind"
    found = re.search(r"parameters? '([A-Za-z_][A-Za-z0-9_]*)'", message) or re.search(
        r"^drift detector '[^']*': ([A-Za-z_][A-Za-z0-9_]*) ", message
    )
    return f"detector.{found.group(1)}" if found else "detector"


class DetectorSpec(BaseModel):
    """A streaming change detector fed each sample of the rule's metric: ``{kind: page_hinkley, ...params}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(min_length=1)

    @property
    def params(self) -> dict[str, Any]:
        """The detector's parameters (every key but ``kind``)."""
        return dict(self.model_extra or {})

    def build(self) -> DriftDetector:
        """A new detector with this configuration."""
        return make_detector(self.kind, self.params)


class BaselineSpec(BaseModel):
    """Compare with the series' own baseline: the mean of its first ``samples`` values.

    The rule's value becomes the relative change ``(aggregate - baseline) / |baseline|``, so
    ``threshold: -0.15`` with ``comparator: "<"`` means "more than 15 % below the baseline". Each
    label group (e.g. each model version) has its own baseline; until it has ``samples`` values
    the rule does not fire for it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(200, ge=5, le=100_000)


class Rule(BaseModel):
    """A rule: ``aggregation(metric over window) comparator threshold`` held ``for`` seconds, or a detector.

    A threshold rule fires when the aggregated value breaks ``threshold`` for ``for`` seconds and
    resolves once the value is back on the safe side of ``resolve_threshold`` (default: the
    threshold itself, i.e. no value hysteresis) for ``resolve_for`` seconds (default 0). A
    detector rule feeds every sample to a streaming change detector and is breached while a
    change was detected within the last ``window`` seconds.

    Aggregations beside the usual ones: ``share`` is the fraction of samples above
    ``share_above``; ``error_share`` the fraction of the metric's events that carry an error
    instead of a value (a failed score: empty or unscorable response, scorer failure).
    With ``baseline``, the value compared is the relative change from the series' own baseline.

    ``on_no_data`` says what a window without enough samples (fewer than ``min_samples``) means:
    ``keep`` (default) leaves the alert as it is, since a stalled pipeline must not clear the
    alerts that should page someone; ``resolve`` treats it as safe; ``alert`` treats it as
    breached, which makes a "was sending and stopped" rule: a series that had data and then has
    none for ``window`` seconds (the minimum quiet time) goes pending, then firing after ``for``.

    >>> r = Rule(name="slow", metric="latency_ms", aggregation="p95", window_s=60, comparator=">", threshold=1000,
    ...          resolve_threshold=800)
    >>> r.breached(1500.0), r.breached(900.0), r.cleared(900.0), r.cleared(700.0)
    (True, False, False, True)
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    metric: str = Field(min_length=1)
    aggregation: Aggregation = "mean"
    window_s: float = Field(60.0, gt=0, le=86_400, alias="window")
    comparator: Comparator = ">"
    threshold: float | None = None
    resolve_threshold: float | None = None
    for_s: float = Field(0.0, ge=0, le=86_400, alias="for")
    resolve_for_s: float = Field(0.0, ge=0, le=86_400, alias="resolve_for")
    renotify_s: float | None = Field(None, ge=0, alias="renotify")
    min_samples: int = Field(1, ge=1)
    on_no_data: Literal["keep", "resolve", "alert"] = "keep"
    share_above: float | None = None
    baseline: BaselineSpec | None = None
    detector: DetectorSpec | None = None
    filter: dict[str, str] = Field(default_factory=dict)
    group_by: list[str] = Field(default_factory=lambda: ["model_version"])
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    action: Literal["retrain"] | None = None

    @field_validator("filter")
    @classmethod
    def _filter_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if k not in GROUPABLE]
        if bad:
            raise ValueError(f"unknown filter key(s) {bad}; use {list(GROUPABLE)}")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_keys(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if k not in GROUPABLE]
        if bad:
            raise ValueError(f"unknown group_by key(s) {bad}; use {list(GROUPABLE)}")
        return value

    @field_validator("detector")
    @classmethod
    def _detector_builds(cls, value: DetectorSpec | None) -> DetectorSpec | None:
        if value is not None:
            try:
                value.build()
            except ValueError as exc:
                raise ValueError(f"key '{_detector_key(str(exc))}': {exc}") from None
        return value

    @model_validator(mode="after")
    def _threshold_or_detector(self) -> Rule:
        # Errors start with "key '...'" so parse_rules can name the key of a cross-field problem.
        if self.detector is not None:
            given = [k for k in THRESHOLD_ONLY if k in self.model_fields_set]
            if given:
                raise ValueError(f"key '{given[0]}': not used by a detector rule (it has 'detector')")
            return self
        if self.threshold is None:
            raise ValueError("key 'threshold': Field required (or give a 'detector')")
        if (self.aggregation == "share") != (self.share_above is not None):
            if self.share_above is None:
                raise ValueError("key 'share_above': required by aggregation 'share' (the value a sample must exceed)")
            raise ValueError("key 'share_above': only used with aggregation 'share'")
        if self.resolve_threshold is not None:
            upward = self.comparator in (">", ">=")
            if (upward and self.resolve_threshold > self.threshold) or (
                not upward and self.resolve_threshold < self.threshold
            ):
                side = "at most" if upward else "at least"
                raise ValueError(
                    f"key 'resolve_threshold': must be {side} the threshold {self.threshold:g} "
                    f"for comparator '{self.comparator}' (it is where the alert clears)"
                )
        return self

    @property
    def is_detector(self) -> bool:
        """Whether a streaming detector, not a threshold, decides this rule."""
        return self.detector is not None

    def breached(self, value: float) -> bool:
        """Whether an aggregated value breaks the rule's threshold."""
        return self.threshold is not None and _compare(self.comparator, value, self.threshold)

    def cleared(self, value: float) -> bool:
        """Whether an open alert's value is back on the safe side of ``resolve_threshold``."""
        limit = self.resolve_threshold if self.resolve_threshold is not None else self.threshold
        return limit is None or not _compare(self.comparator, value, limit)


def _compare(comparator: str, value: float, limit: float) -> bool:
    match comparator:
        case ">":
            return value > limit
        case ">=":
            return value >= limit
        case "<":
            return value < limit
        case _:
            return value <= limit


def parse_rules(data: Any, source: str = "<rules>") -> list[Rule]:
    """Validate parsed YAML (``{"rules": [...]}``) into rules, or raise :class:`RuleError`.

    >>> try:
    ...     parse_rules({"rules": [{"name": "x", "metric": "cost", "threshold": "high"}]})
    ... except RuleError as exc:
    ...     print(exc)
    <rules>: rule 'x' (#1), key 'threshold': Input should be a valid number, unable to parse string as a number
    """
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RuleError(f"{source}: expected a mapping with a 'rules' list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(data["rules"], start=1):
        name = item.get("name", "?") if isinstance(item, dict) else "?"
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(_problem(e) for e in exc.errors())
            raise RuleError(f"{source}: rule '{name}' (#{i}), {problems}") from None
        if rule.name in seen:
            raise RuleError(f"{source}: rule '{rule.name}' (#{i}), key 'name': duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def _problem(error: Any) -> str:
    """``key 'x': what is wrong`` for one pydantic error."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error["loc"])
    if msg.startswith("key '"):
        return msg  # a check that names its key itself (cross-field, or a detector parameter)
    return f"key '{key or '-'}': {msg}"


def load_rules(path: Path | None = None) -> list[Rule]:
    """Rules from a YAML file, or the packaged default rules when ``path`` is None."""
    if path is None:
        text = resources.files("monitors").joinpath("default_rules.yaml").read_text()
        source = "default_rules.yaml"
    else:
        if not path.is_file():
            raise RuleError(f"rules file {path} not found; fix ATALAIA_RULES_FILE or create the file")
        text, source = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}: not valid YAML: {exc}") from None
    return parse_rules(data, source)
