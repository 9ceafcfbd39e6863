"""Embedding drift: an MMD test of recent prompt embeddings against the version's reference.

The test runs in the worker's write transaction (``consumers/drift.py``, it reads stored
vectors); this group declares its metrics and asks the embedding group for the vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

from atalaia.events import InferenceEvent
from atalaia.metrics.groups.base import Chart, Collector, Metric, MetricGroup


class DriftGroup(MetricGroup):
    """MMD² of the latest prompt-embedding window, its calibrated threshold and the 0/1 flag."""

    name = "drift"
    cost = "expensive"
    #: Groups that must run for this one: the embedding group stores every prompt's vector.
    requires = ("embedding",)
    metrics = (
        Metric("embedding_drift", "MMD²", "lower", "MMD² of the latest window against the reference"),
        Metric("embedding_drift_flag", "0/1", "lower", "1 when the MMD² is above its calibrated threshold"),
        Metric("embedding_drift_threshold", "MMD²", "neither", "the calibrated threshold of the test"),
    )
    method = "MMD, RBF kernel, calibrated threshold; keyed on the newest event of the tested window"
    when = "every `ATALAIA_DRIFT_STRIDE` prompt embeddings per model version"
    charts = (
        Chart(
            "drift",
            "Embedding drift (MMD²)",
            "MMD²",
            "embedding_drift",
            ("score", "threshold"),
            source="drift",
            alert_metrics=("embedding_drift", "embedding_drift_flag", "embedding_drift_threshold"),
        ),
    )

    def warm_up(self) -> None:
        self.models.embedder  # noqa: B018 - loads the model

    def score(self, events: Sequence[InferenceEvent], out: Collector) -> None:
        """Nothing per batch: the test runs on stored vectors (see the module docstring)."""
