"""Monitoring apps Atalaia does not host, on the real stack (Kafka, PostgreSQL, worker, monitor):

* an app on the official `openai` client instrumented with OpenTelemetry
  (``opentelemetry-instrumentation-openai-v2``), calling Atalaia's own serve, its spans sent to
  ``atalaia otlp``, with content capture off, on the span, and as log events;
* apps on the official `openai` and `anthropic` clients pointed at ``atalaia gateway`` (upstreams:
  Atalaia's serve, and a local server speaking the Anthropic Messages wire format).

The apps are the copy-paste snippets of docs/integrations.md. Every call becomes a stored event
with its metrics, and alert rules on those services fire and show on the dashboard's API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import free_port
from tests.helpers_anthropic import API_KEY, running
from tests.helpers_anthropic import create_app as create_anthropic
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"
RULES = """
rules:
  - name: otel_app_calls
    metric: latency_ms
    aggregation: count
    window: 3600
    comparator: ">="
    threshold: 2
    filter: {service: my-otel-app}
    severity: info
  - name: claude_app_cost
    metric: cost
    aggregation: sum
    window: 3600
    comparator: ">"
    threshold: 0
    filter: {service: claude}
    severity: info
"""


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _run_snippet(name: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, str(SNIPPETS / name)],
        env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPENAI_", "ANTHROPIC_"))} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_otel_and_gateway_apps_are_monitored(isolated_settings: Settings, fresh_pg: str, models_dir: Path) -> None:
    rules = isolated_settings.home / "rules.yaml"
    rules.write_text(RULES)
    anthropic_port = free_port()
    settings = isolated_settings.model_copy(
        update={
            "database_url": fresh_pg,
            "cache_enabled": False,
            "rag_enabled": False,
            "rules_file": rules,
            # Perplexity needs the producing model, which Atalaia does not host for these apps.
            "metric_groups": "operational,text,embedding,toxicity",
            "otlp_port": free_port(),
            "gateway_port": free_port(),
            "gateway_upstreams": {
                "openai": {"base_url": f"http://127.0.0.1:{isolated_settings.inference_port}/v1", "protocol": "openai"},
                "claude": {"base_url": f"http://127.0.0.1:{anthropic_port}", "protocol": "anthropic"},
            },
        }
    )
    ensure_topics(settings)
    engine = create_engine(fresh_pg)
    serve_url = f"http://127.0.0.1:{settings.inference_port}"
    otlp_url = f"http://127.0.0.1:{settings.otlp_port}"
    gateway_url = f"http://127.0.0.1:{settings.gateway_port}"

    def rows(source: str) -> list[Any]:
        with engine.connect() as conn:
            return [
                r
                for r in conn.execute(select(t.inference_events)).mappings()
                if (r["metadata"] or {}).get("source") == source
            ]

    def metric_names(event_id: str) -> set[str]:
        with engine.connect() as conn:
            q = select(t.metrics.c.name).where(t.metrics.c.event_id == event_id, t.metrics.c.error.is_(None))
            return {r[0] for r in conn.execute(q)}

    with (
        running(create_anthropic(), anthropic_port),
        service("serve", settings),
        service("otlp", settings),
        service("gateway", settings),
        service("worker", settings),
        service("monitor", settings),
    ):
        wait_until(lambda: _healthy(serve_url + "/healthz"), 180, "serve\n" + log_text(settings, "serve")[-2000:])
        wait_until(lambda: _healthy(otlp_url + "/healthz"), 60, "otlp\n" + log_text(settings, "otlp")[-2000:])
        wait_until(lambda: _healthy(gateway_url + "/healthz"), 60, "gateway\n" + log_text(settings, "gateway")[-2000:])

        # 1. The OpenTelemetry-instrumented app, content capture off / on the span / as log events.
        otel_env = {
            "OPENAI_BASE_URL": serve_url + "/v1",
            "OPENAI_API_KEY": "sk-not-needed-by-atalaia",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
            "OTEL_SERVICE_NAME": "my-otel-app",
            "MODEL": settings.model_version,
        }
        for mode in ("", "SPAN_ONLY", "EVENT_ONLY"):
            _run_snippet("otel_openai_app.py", otel_env | {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": mode})

        # 2. Apps behind the gateway.
        out = _run_snippet(
            "gateway_openai_app.py",
            {
                "ATALAIA_GATEWAY_URL": gateway_url + "/openai",
                "OPENAI_API_KEY": "sk-caller",
                "MODEL": settings.model_version,
            },
        )
        assert out.strip()
        out = _run_snippet(
            "gateway_anthropic_app.py",
            {"ATALAIA_GATEWAY_URL": gateway_url + "/claude", "ANTHROPIC_API_KEY": API_KEY},
        )
        assert "You said: How many vacation days do I get?" in out

        wait_until(lambda: len(rows("otlp")) == 6, 120, "six OTLP events stored\n" + log_text(settings, "otlp")[-2000:])
        wait_until(
            lambda: len(rows("gateway")) == 4, 60, "four gateway events\n" + log_text(settings, "gateway")[-2000:]
        )

        otel = rows("otlp")
        assert {r["service"] for r in otel} == {"my-otel-app"} and {r["provider"] for r in otel} == {"openai"}
        bare = [r for r in otel if not r["messages"]]
        full = [r for r in otel if r["messages"]]
        assert len(bare) == 2 and len(full) == 4  # capture off: operational data only
        assert all(r["model_version"] == settings.model_version for r in otel)
        assert all(r["response"] for r in full) and all(r["finish_reason"] for r in otel if r["prompt_tokens"])
        ops = {"latency_ms", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "cache_hit"}
        wait_until(lambda: all(ops <= metric_names(r["event_id"]) for r in otel), 120, "operational metrics")
        wait_until(
            lambda: all({"toxicity_prompt", "similarity_prompt"} <= metric_names(r["event_id"]) for r in full),
            180,
            "content metrics\n" + log_text(settings, "worker")[-3000:],
        )
        assert all(not ({"toxicity_prompt", "similarity_prompt"} & metric_names(r["event_id"])) for r in bare)

        gw = {(r["service"], bool(r["metadata"]["stream"])): r for r in rows("gateway")}
        assert set(gw) == {("openai", False), ("openai", True), ("claude", False), ("claude", True)}
        for key, r in gw.items():
            assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["latency_ms"] > 0, (key, dict(r))
            assert "sk-caller" not in str(dict(r)) and API_KEY not in str(dict(r))
        assert gw[("claude", True)]["provider"] == "anthropic" and gw[("claude", True)]["time_to_first_token_ms"] >= 0
        assert gw[("openai", True)]["time_to_first_token_ms"] is not None
        assert gw[("claude", False)]["cost"] > 0  # the shipped price of claude-haiku-4-5
        wait_until(lambda: all(ops <= metric_names(r["event_id"]) for r in gw.values()), 120, "gateway metrics")

        # 3. The alert rules on these services fire and the dashboard shows them.
        monitor = f"http://127.0.0.1:{settings.monitor_port}"

        def firing() -> set[str]:
            try:
                data = httpx.get(monitor + "/api/dashboard/alerts?since=1h", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                return set()
            return {a["rule"] for a in data.get("open", []) if a.get("state") == "firing"}

        wait_until(
            lambda: {"otel_app_calls", "claude_app_cost"} <= firing(),
            120,
            "alerts firing\n" + log_text(settings, "monitor")[-3000:],
        )
        series = httpx.get(monitor + "/api/dashboard/series?name=latency_ms&since=1h", timeout=10).json()
        assert series
