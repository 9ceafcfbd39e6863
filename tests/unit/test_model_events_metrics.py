"""Refused model events are counted in the inference service's Prometheus /metrics by reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from atalaia.events import ModelEvent
from atalaia.kafka.clients import Refused
from atalaia.model_signing import sign
from atalaia.settings import Settings
from atalaia.storage.db import upgrade
from inference.app import create_app
from inference.authority import ModelEventAuthority, count_refusals
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer


def test_refusals_show_in_prometheus_by_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    settings = Settings(home=tmp_path, database_url=url, model_events_secret=SecretStr("s3cret"))
    app = create_app(settings, FakeGenerator(), RecordingProducer())
    client = TestClient(app)
    assert "atalaia_model_events_refused_total{" not in client.get("/metrics").text
    authority = ModelEventAuthority(settings)
    count_refusals(authority, app.state.metrics)

    unsigned = ModelEvent(type="deploy", model_version="m@2", artefact_path="m2")
    unregistered = sign(ModelEvent(type="deploy", model_version="m@9", artefact_path="m9"), settings)
    for event in (unsigned, unsigned, unregistered):
        with pytest.raises(Refused):
            authority.check(event)

    text = client.get("/metrics").text
    assert 'atalaia_model_events_refused_total{reason="unsigned model event"} 2.0' in text
    assert 'atalaia_model_events_refused_total{reason="unregistered version"} 1.0' in text
    assert sum(authority.refused.values()) == 3
