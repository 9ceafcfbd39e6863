"""Prometheus metrics of the worker's scoring: lag, budget, each group's cost and sampling fraction.

Served at the worker's ``/metrics`` (its faust web port). Gauges are set from the scorer's
:class:`~atalaia.metrics.budget.ScoringBudget` after each batch, so a scrape reads what the last
batch decided.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from atalaia.metrics.budget import GC, PIPELINE


class WorkerMetrics:
    """The worker's Prometheus collectors (one registry per worker, so tests can build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lag = Gauge(
            "atalaia_worker_lag_seconds",
            "Age of the newest event of the last scored batch (event time to scoring)",
            registry=self.registry,
        )
        self.rate = Gauge(
            "atalaia_worker_incoming_events_per_second",
            "Incoming event rate, measured on the events' own timestamps",
            registry=self.registry,
        )
        self.budget = Gauge(
            "atalaia_scoring_budget_cores", "CPU share of one core the scoring may use (0: off)", registry=self.registry
        )
        self.demand = Gauge(
            "atalaia_scoring_demand_cores",
            "CPU cores scoring every group on every event would need at the incoming rate",
            registry=self.registry,
        )
        self.cost = Gauge(
            "atalaia_scoring_cost_seconds",
            "CPU seconds per scored event of a metric group (moving average)",
            ["group"],
            registry=self.registry,
        )
        self.fraction = Gauge(
            "atalaia_scoring_sample_fraction",
            "Share of events a metric group scores",
            ["group"],
            registry=self.registry,
        )
        self.events = Counter("atalaia_worker_events", "Inference events scored and stored", registry=self.registry)

    def observe(self, scorer: Any, n_events: int) -> None:
        """Record a stored batch of ``n_events`` and the scorer's budget state after it."""
        budget = scorer.budget
        self.events.inc(n_events)
        self.lag.set(budget.lag_s)
        self.rate.set(budget.rate or 0.0)
        self.budget.set(budget.budget)
        self.demand.set(budget.demand() or 0.0)
        for group in scorer.active:
            if group.name in budget.costs:
                self.cost.labels(group.name).set(budget.costs[group.name])
            self.fraction.labels(group.name).set(scorer.fraction(group.name))
        # Parse, write and publish, and the collector's pauses: the worker's work beside scoring.
        for overhead in (PIPELINE, GC):
            if overhead in budget.costs:
                self.cost.labels(overhead).set(budget.costs[overhead])

    def render(self) -> bytes:
        """The exposition text of every collector."""
        return generate_latest(self.registry)
