"""Prometheus metrics of the inference service (one registry per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    """The service's Prometheus collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "atalaia_requests",
            "Chat completion requests by outcome",
            ["model_version", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "atalaia_request_latency_seconds",
            "Chat completion latency",
            ["model_version"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.tokens = Counter("atalaia_tokens", "Tokens processed", ["model_version", "kind"], registry=self.registry)
        self.cache_hits = Counter(
            "atalaia_cache_hits", "Responses served from the cache", ["kind"], registry=self.registry
        )
        self.spool_depth = Gauge("atalaia_spool_depth", "Events waiting on disk for Kafka", registry=self.registry)
        self.events_lost = Gauge(
            "atalaia_events_lost", "Events lost because the spool was unwritable", registry=self.registry
        )
        self.events_pending = Gauge(
            "atalaia_events_pending", "Events in memory not yet acknowledged by Kafka", registry=self.registry
        )
        self.events_dead_lettered = Gauge(
            "atalaia_events_dead_lettered",
            "Events Kafka can never take (too large, invalid topic), kept in the local dead-letter file",
            registry=self.registry,
        )
        self.events_trimmed = Gauge(
            "atalaia_events_trimmed", "Events whose metadata was replaced by a marker to fit", registry=self.registry
        )
        self.oldest_undelivered = Gauge(
            "atalaia_oldest_undelivered_age_seconds",
            "Age of the oldest event not yet acknowledged by Kafka (0: none waiting)",
            registry=self.registry,
        )
        self.kafka_reachable = Gauge(
            "atalaia_kafka_reachable", "1 while the broker answers the producer", registry=self.registry
        )
        self.model_events_refused = Counter(
            "atalaia_model_events_refused",
            "Deploy/rollback events refused by the authority checks (inference/authority.py), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.active_model = Gauge(
            "atalaia_active_model", "1 for the model version being served", ["model_version"], registry=self.registry
        )
