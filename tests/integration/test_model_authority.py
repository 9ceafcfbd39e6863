"""Model events with authority, on real Kafka and a real registry (SQLite) and real folders.

Before this check, inference applied any ``deploy`` event on the models topic: a forged,
unsigned, replayed or path-escaping event swapped the served model. Here each is sent by a plain
producer and must be refused, dead-lettered with its reason and counted, while a signed event for
a registered version in the models folder is applied. The model loader is a stand-in (loading
SmolLM2 for each deploy would only slow the test; the hot swap itself is tested in
test_inference_service.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, insert

from atalaia.events import DeadLetterEvent, ModelEvent, parse_event, utcnow
from atalaia.kafka import clients
from atalaia.model_signing import sign, signature_of
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.topics import ensure_topics
from inference.authority import ModelEventAuthority, count_refusals
from inference.models import ModelManager, ServedModel, follow_model_events
from inference.telemetry import ServiceMetrics
from tests.integration.services import wait_until

pytestmark = pytest.mark.integration

SECRET = "model-events-secret-1"


def _register(engine: Any, version: str, path: Path) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(t.model_versions).values(
                version=version, status="candidate", artefact_path=str(path), metrics={}, created_at=utcnow()
            )
        )


def _dead_letters(settings: Settings, n: int, timeout: float = 60) -> list[DeadLetterEvent]:
    consumer = clients.consumer(
        settings,
        settings.topic("deadletter"),
        client_id="probe",
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    out: list[DeadLetterEvent] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for rec in consumer:
                out.append(parse_event(rec.value, DeadLetterEvent))
    finally:
        consumer.close()
    return out


def test_forged_unsigned_replayed_and_escaping_events_are_refused(isolated_settings: Settings, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "m2").mkdir(parents=True)
    (models / "m9").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, models / "link")
    settings = isolated_settings.model_copy(
        update={
            "models_dir": models,
            "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
            "model_events_secret": SecretStr(SECRET),
        }
    )
    upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    _register(engine, "m@2", models / "m2")
    _register(engine, "m@link", models / "link")
    _register(engine, "m@dots", models / "m2")
    ensure_topics(settings)

    loaded: list[str] = []
    manager = ModelManager(ServedModel("m@1", "gen-1"), loader=lambda path: loaded.append(path) or f"gen:{path}")
    authority = ModelEventAuthority(settings)
    metrics = ServiceMetrics()
    count_refusals(authority, metrics)  # as `atalaia serve` wires it: refusals in /metrics
    stats = clients.FollowStats()
    stop = threading.Event()
    follower = threading.Thread(
        target=follow_model_events, args=(manager, settings, stop, authority, stats), daemon=True
    )
    follower.start()
    publisher = clients.Publisher(settings, "attacker")
    topic = settings.topic("models")
    try:
        # The follower reads from the end: send unsigned probes until one is seen (and refused).
        def probed() -> bool:
            publisher.publish(ModelEvent(type="deploy", model_version="m@2", artefact_path=str(models / "m2")), topic)
            time.sleep(1)
            return stats.refused >= 1

        wait_until(probed, 60, "the follower to read the topic")
        wait_until(lambda: stats.dead_lettered >= stats.refused, 30, "the probes' dead letters")
        probes = stats.refused
        base = Settings(model_events_secret=SecretStr(SECRET))

        forged = ModelEvent(type="deploy", model_version="m@2", artefact_path=str(models / "m2"))
        forged = forged.model_copy(update={"signature": signature_of(forged, "guessed-secret")})
        unsigned = ModelEvent(type="deploy", model_version="m@2", artefact_path=str(models / "m2"))
        escape_dots = sign(
            ModelEvent(
                type="deploy", model_version="m@dots", artefact_path=str(models / "m2" / ".." / ".." / "outside")
            ),
            base,
        )
        escape_link = sign(ModelEvent(type="deploy", model_version="m@link", artefact_path=str(models / "link")), base)
        unregistered = sign(ModelEvent(type="deploy", model_version="m@9", artefact_path=str(models / "m9")), base)
        stale = sign(
            ModelEvent(
                type="deploy", model_version="m@2", artefact_path=str(models / "m2"), ts=utcnow() - timedelta(hours=1)
            ),
            base,
        )
        valid = sign(ModelEvent(type="deploy", model_version="m@2", artefact_path=str(models / "m2")), base)
        for event in (forged, unsigned, escape_dots, escape_link, unregistered, stale, valid):
            publisher.publish(event, topic)
        wait_until(lambda: manager.active.version == "m@2", 60, "the signed, registered deploy to be applied")
        assert loaded == [str(models / "m2")]  # nothing else was ever loaded

        publisher.publish(valid, topic)  # the same signed event again: a replay
        wait_until(lambda: stats.refused == probes + 7, 60, f"7 refusals (stats: {stats})")
    finally:
        publisher.close()
        stop.set()
        follower.join(30)

    dead = _dead_letters(settings, probes + 7)
    reasons = [d.reason for d in dead]  # the dead-letter topic has several partitions: no global order
    assert Counter(r.split(":")[0] for r in reasons) == {
        "unsigned model event": probes + 1,
        "bad signature": 1,
        "path escape": 2,
        "unregistered version": 1,
        "stale model event": 1,
        "replayed model event": 1,
    }, reasons
    assert all(d.consumer == f"inference-{settings.inference_port}-models" for d in dead)
    escapes = [r for r in reasons if r.startswith("path escape")]
    assert any("contains '..'" in r for r in escapes), escapes
    assert any("link' resolves to" in r and "outside ATALAIA_MODELS_DIR" in r for r in escapes), escapes
    assert authority.refused["path escape"] == 2 and sum(authority.refused.values()) == probes + 7
    from prometheus_client import generate_latest

    exposed = generate_latest(metrics.registry).decode()
    assert 'atalaia_model_events_refused_total{reason="path escape"} 2.0' in exposed
    assert f'atalaia_model_events_refused_total{{reason="unsigned model event"}} {probes + 1}.0' in exposed
    assert manager.active.version == "m@2"
