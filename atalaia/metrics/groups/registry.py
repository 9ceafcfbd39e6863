"""The metric groups Atalaia knows, in scoring order. Adding a group: its module, one line here.

>>> [g.name for g in GROUPS][:3]
['operational', 'text', 'meteor']
>>> "toxicity" in sampled_group_names() and "operational" not in sampled_group_names()
True
"""

from __future__ import annotations

from atalaia.metrics.groups.base import Chart, Metric, MetricGroup
from atalaia.metrics.groups.drift import DriftGroup
from atalaia.metrics.groups.embedding import EmbeddingGroup
from atalaia.metrics.groups.length import LengthGroup
from atalaia.metrics.groups.meteor import MeteorGroup
from atalaia.metrics.groups.operational import OperationalGroup
from atalaia.metrics.groups.perplexity import PerplexityGroup
from atalaia.metrics.groups.text import TextGroup
from atalaia.metrics.groups.toxicity import ToxicityGroup

GROUPS: tuple[type[MetricGroup], ...] = (
    OperationalGroup,
    TextGroup,
    MeteorGroup,
    EmbeddingGroup,
    ToxicityGroup,
    PerplexityGroup,
    DriftGroup,
    LengthGroup,
)
GROUPS_BY_NAME: dict[str, type[MetricGroup]] = {g.name: g for g in GROUPS}
#: Where the dashboard shows charts (by key); charts of new groups follow these.
CHART_ORDER = ("requests", "latency", "cost", "toxicity", "rougeL", "perplexity", "drift")


def group_names() -> tuple[str, ...]:
    """Every group name, in scoring order."""
    return tuple(g.name for g in GROUPS)


def default_group_names() -> tuple[str, ...]:
    """Groups a worker computes when ``ATALAIA_METRIC_GROUPS`` is not set."""
    return tuple(g.name for g in GROUPS if g.default)


def sampled_group_names() -> tuple[str, ...]:
    """Groups that ``ATALAIA_SAMPLE_RATES`` may sample (the expensive ones)."""
    return tuple(g.name for g in GROUPS if g.cost == "expensive")


def all_metrics() -> dict[str, Metric]:
    """Every metric by name (drift's, which the worker computes from stored vectors, included)."""
    return {m.name: m for g in GROUPS for m in g.metrics}


def charts() -> tuple[Chart, ...]:
    """Every group's charts, those of :data:`CHART_ORDER` first."""
    found = [c for g in GROUPS for c in g.charts]
    rank = {key: i for i, key in enumerate(CHART_ORDER)}
    return tuple(sorted(found, key=lambda c: rank.get(c.key, len(rank))))


def docs_table() -> str:
    """The metrics table of docs/architecture.md (a test keeps the two equal)."""
    lines = ["| group | metrics | model / method | when |", "|---|---|---|---|"]
    for g in GROUPS:
        names = ", ".join(f"`{m.name}`" for m in g.metrics)
        lines.append(f"| `{g.name}` | {names} | {g.method} | {g.when} |")
        for row in getattr(g, "doc_rows", ()):
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def metric_table() -> str:
    """Every metric with its unit, better direction and meaning (docs/architecture.md)."""
    lines = ["| metric | group | unit | better | meaning |", "|---|---|---|---|---|"]
    for g in GROUPS:
        for m in g.metrics:
            lines.append(f"| `{m.name}` | `{g.name}` | {m.unit} | {m.direction} | {m.description} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - `python -m atalaia.metrics.groups.registry`
    print(docs_table() + "\n\n" + metric_table())
