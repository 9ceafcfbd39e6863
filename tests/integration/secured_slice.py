"""The thin slice over a secured listener, shared by the SASL and TLS tests: SDK producer ->
inference topic -> faust worker -> PostgreSQL, then a follow loop reading a published model event."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import create_engine, func, select

from atalaia.events import ChatMessage, InferenceEvent, ModelEvent
from atalaia.kafka import clients
from atalaia.settings import Settings
from atalaia.storage import tables as t
from producers import EventProducer
from tests.integration.services import log_text, service, wait_until


def run_slice(settings: Settings, database_url: str, label: str) -> None:
    """Three events through the SDK and a real worker into ``database_url``, and one model event
    through :func:`atalaia.kafka.clients.follow`; ``label`` names the clients and the failure."""
    engine = create_engine(database_url)
    producer = EventProducer(settings, client_id=f"{label.lower()}-test")
    events = [
        InferenceEvent(
            service=f"{label.lower()}-test",
            model_version="m@1",
            messages=[ChatMessage(role="user", content=f"question {i}")],
            response=f"answer {i}",
            latency_ms=10.0 + i,
            prompt_tokens=5,
            completion_tokens=3,
            cost=0.0001,
        )
        for i in range(3)
    ]
    with service("worker", settings):
        for event in events:
            producer.emit(event)
        assert producer.flush(30), f"the SDK did not deliver over {label}"
        assert producer.connected and producer.spool_depth == 0

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(t.inference_events)).scalar_one())

        wait_until(lambda: stored() == 3, 120, "3 events stored by the worker\n" + log_text(settings, "worker")[-3000:])
    producer.close()

    # A follow loop (as the services use) reads a published event over the same listener.
    stop = threading.Event()
    seen: list[ModelEvent] = []

    def on_event(event: ModelEvent, _msg: Any) -> None:
        seen.append(event)
        stop.set()

    follower = threading.Thread(
        target=clients.follow,
        args=(settings, settings.topic("models"), ModelEvent, on_event),
        kwargs={"stop": stop, "client_id": f"{label.lower()}-follow", "start": "beginning"},
        daemon=True,
    )
    follower.start()
    publisher = clients.Publisher(settings, f"{label.lower()}-publish")
    sent = ModelEvent(type="rollback", model_version="m@1")
    publisher.publish(sent, settings.topic("models"))
    publisher.close()
    follower.join(60)
    assert [e.event_id for e in seen] == [sent.event_id]
