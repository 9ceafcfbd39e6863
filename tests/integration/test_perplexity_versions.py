"""Perplexity under the producing version, for real: the registry in PostgreSQL, two real model
versions (SmolLM2 float32 and its ONNX Runtime GenAI int4 export), each event scored under its own."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from atalaia.events import ChatMessage, InferenceEvent
from atalaia.models.ortgenai import ort_dir_for, prepare_ort
from atalaia.models.prepare import prepare_generator
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine
from consumers.scoring import BatchScorer

pytestmark = pytest.mark.integration

ANSWER = "Employees get thirty days of paid annual leave per calendar year."


def _event(version: str) -> InferenceEvent:
    return InferenceEvent(
        service="svc",
        model_version=version,
        messages=[ChatMessage(role="user", content="How many vacation days do I get?")],
        response=ANSWER,
        latency_ms=100.0,
        prompt_tokens=10,
        completion_tokens=12,
        cost=0.0,
    )


def test_events_of_two_versions_are_scored_under_their_own_folders(fresh_pg: str, models_dir: Path) -> None:
    settings = Settings(database_url=fresh_pg, models_dir=models_dir, metric_groups="operational,perplexity")
    base = prepare_generator(settings, console=Console(file=io.StringIO()))
    int4 = prepare_ort(base, ort_dir_for(models_dir, settings.generator_model, "int4"), precision="int4")
    with get_engine(fresh_pg).begin() as conn:
        conn.execute(
            t.model_versions.insert().values(
                version="smollm2@int4",
                parent=settings.model_version,
                status="candidate",
                artefact_path=str(int4),
                quantization="ort-int4",
                dataset_hash=None,
                metrics={},
                size_bytes=None,
                created_at=datetime.now(UTC),
                activated_at=None,
            )
        )
    events = [_event(settings.model_version), _event("smollm2@int4"), _event("someone-else@1")]
    scorer = BatchScorer(settings)
    batch = scorer.score(events)
    ppl = {m.source_event_id: m.value for m in batch.metrics if m.name == "perplexity"}
    assert set(ppl) == {events[0].event_id, events[1].event_id}  # the unknown version gets none
    fp32, q4 = ppl[events[0].event_id], ppl[events[1].event_id]
    assert fp32 is not None and q4 is not None and 1.0 < fp32 < 1000.0 and 1.0 < q4 < 1000.0
    assert not math.isclose(fp32, q4, rel_tol=1e-4)  # the same answer, two models: two perplexities
    assert scorer._versions.loaded() == [base, int4]
