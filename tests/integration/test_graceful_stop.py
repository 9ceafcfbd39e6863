"""SIGTERM (``docker stop``, systemd, Kubernetes) stops a service the way Ctrl-C does: the
events it accepted are delivered or spooled, never dropped with the process.

uvicorn (≥ 0.29) re-raises the signal it caught once its own shutdown is done; with SIGTERM's
default action that killed the process before the service's ``finally`` closed its event
producer, so events still queued for Kafka were lost. Here Kafka is unreachable, so every
accepted event must end in the spool, and the service must log its orderly stop.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from atalaia.settings import Settings
from producers.spool import Spool
from tests.conftest import free_port
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

SPANS = 20


def _genai_traces(n: int) -> dict[str, object]:
    def attr(key: str, value: object) -> dict[str, object]:
        typed = {"intValue": str(value)} if isinstance(value, int) else {"stringValue": str(value)}
        return {"key": key, "value": typed}

    spans = [
        {
            "traceId": f"{i + 1:032x}",
            "spanId": f"{i + 1:016x}",
            "name": "chat gpt-4o-mini",
            "kind": 3,
            "startTimeUnixNano": "1765000000000000000",
            "endTimeUnixNano": "1765000001250000000",
            "attributes": [
                attr("gen_ai.operation.name", "chat"),
                attr("gen_ai.provider.name", "openai"),
                attr("gen_ai.request.model", "gpt-4o-mini"),
                attr("gen_ai.usage.input_tokens", 12),
                attr("gen_ai.usage.output_tokens", 30),
            ],
        }
        for i in range(n)
    ]
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [attr("service.name", "stop-test")]},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
            }
        ]
    }


def test_sigterm_spools_what_the_otlp_receiver_accepted(isolated_settings: Settings) -> None:
    settings = isolated_settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{free_port()}",  # nothing listens: events wait for the spool
            "otlp_port": free_port(),
        }
    )
    url = f"http://127.0.0.1:{settings.otlp_port}"
    with service("otlp", settings) as proc:
        wait_until(lambda: _up(f"{url}/healthz"), 60, "the OTLP receiver")
        r = httpx.post(
            f"{url}/v1/traces",
            content=json.dumps(_genai_traces(SPANS)),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    log = log_text(settings, "otlp")
    assert "otlp receiver stopped" in log, log[-3000:]
    assert settings.spool_dir is not None
    spools = list(Path(settings.spool_dir).glob("otlp-*.jsonl"))
    assert len(spools) == 1, spools
    assert len(Spool(spools[0])) == SPANS


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
