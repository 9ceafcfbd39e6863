"""Declarative alert rules, loaded from YAML and validated with errors that name the rule and key."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Aggregation = Literal["mean", "min", "max", "p50", "p95", "p99", "count", "rate", "sum"]
Comparator = Literal[">", ">=", "<", "<="]
GROUPABLE = ("model_version", "service")


class RuleError(ValueError):
    """A rule file is invalid; the message names the rule, the key and what is wrong."""


class Rule(BaseModel):
    """A threshold rule: ``aggregation(metric over window) comparator threshold`` held ``for`` seconds.

    >>> r = Rule(name="slow", metric="latency_ms", aggregation="p95", window_s=60, comparator=">", threshold=1000)
    >>> r.breached(1500.0), r.breached(900.0)
    (True, False)
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    metric: str = Field(min_length=1)
    aggregation: Aggregation = "mean"
    window_s: float = Field(60.0, gt=0, le=86_400, alias="window")
    comparator: Comparator = ">"
    threshold: float
    for_s: float = Field(0.0, ge=0, le=86_400, alias="for")
    min_samples: int = Field(1, ge=1)
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

    def breached(self, value: float) -> bool:
        """Whether an aggregated value breaks the rule."""
        match self.comparator:
            case ">":
                return value > self.threshold
            case ">=":
                return value >= self.threshold
            case "<":
                return value < self.threshold
            case _:
                return value <= self.threshold


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
            problems = "; ".join(
                f"key '{'.'.join(str(p) for p in e['loc']) or '-'}': {str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise RuleError(f"{source}: rule '{name}' (#{i}), {problems}") from None
        if rule.name in seen:
            raise RuleError(f"{source}: rule '{rule.name}' (#{i}), key 'name': duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return rules


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
