"""Secrets and personal data on the real stack (``atalaia serve`` with SmolLM2, ``atalaia
worker``, the CLI), at DEBUG log level:

- the admin token and the database password (in ``ATALAIA_DATABASE_URL``) never appear in any
  service's log or any command's output, nor in an HTTP answer;
- with ``ATALAIA_REDACT_PII`` on, an email, a CPF, a card and a phone number typed into a prompt,
  a reference answer or a feedback comment reach neither Kafka, the database tables nor the logs.

The database is a private PostgreSQL server with trust authentication, so any password in the
URL works and a random one can be hunted for in the output.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer
from sqlalchemy import create_engine, func, select

from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.topics import ensure_topics
from tests.conftest import MAIN_SETTINGS, REQUIRE, free_port, settings_env
from tests.integration.faults import PrivatePostgres, private_postgres
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

PII = {
    "email": "ana.souza@example.com",
    "cpf": "123.456.789-09",
    "card": "4111 1111 1111 1111",
    "phone": "+55 11 91234-5678",
}


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    try:
        with private_postgres() as server:
            yield server
    except FileNotFoundError as exc:
        if REQUIRE:
            pytest.fail(f"a private PostgreSQL is required (ATALAIA_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(str(exc))


def _raw_messages(settings: Settings, *topics: str) -> list[bytes]:
    consumer = KafkaConsumer(
        *[settings.topic(name) for name in topics],
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_no_secret_and_no_personal_data_leaks(
    tmp_path: Path, kafka_bootstrap: str, pg: PrivatePostgres, models_dir: Path
) -> None:
    password = f"pw-{uuid.uuid4().hex[:16]}"
    token = f"tok-{uuid.uuid4().hex[:16]}"
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        home=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        topic_namespace=f"faults-{tag}",
        topic_partitions=2,
        worker_id=f"faults-worker-{tag}",
        models_dir=MAIN_SETTINGS.models_dir,
        inference_port=free_port(),
        worker_web_port=free_port(),
        database_url=pg.database(password=password),
        admin_token=token,
        redact_pii=True,
        metric_groups="operational,text",
        rag_enabled=False,
        cache_enabled=False,
        log_level="DEBUG",
    )
    ensure_topics(settings)
    base = f"http://127.0.0.1:{settings.inference_port}"
    engine = create_engine(settings.database_url)
    prompt = (
        f"My email is {PII['email']}, CPF {PII['cpf']}, card {PII['card']}, phone {PII['phone']}. "
        "Repeat them back to me."
    )
    bodies: list[str] = []
    with service("worker", settings), service("serve", settings):
        wait_until(
            lambda: _up(base),
            180,
            "the inference service\n" + log_text(settings, "serve")[-2000:],
        )
        with httpx.Client(base_url=base, timeout=120) as client:
            r = client.post(
                "/v1/chat/completions",
                json={
                    "model": settings.model_version,
                    "max_tokens": 24,
                    "messages": [{"role": "user", "content": prompt}],
                    "metadata": {"reference": f"Write to {PII['email']}", "note": PII["card"]},
                },
            )
            assert r.status_code == 200, r.text
            bodies.append(r.text)
            fb = client.post(
                "/v1/feedback",
                json={
                    "completion_id": r.json()["id"],
                    "rating": -1,
                    "corrected_answer": f"Call {PII['phone']}",
                    "comment": f"I am {PII['email']}, CPF {PII['cpf']}",
                },
            )
            assert fb.status_code == 202, fb.text
            for auth in ("Bearer wrong", f"Bearer {token}x", f"Basic {token}", f"Bearer {token}"):
                bodies.append(client.post("/admin/cache/clear", headers={"authorization": auth}).text)
            bodies += [client.get(path).text for path in ("/healthz", "/metrics", "/v1/models")]
        wait_until(lambda: _count(engine, t.inference_events) == 1, 90, "the event\n" + log_text(settings, "worker"))
        wait_until(lambda: _count(engine, t.feedback) == 1, 60, "the feedback")
    env = settings_env(settings)
    cli = [
        subprocess.run(
            [sys.executable, "-m", "composition.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
        )
        for args in (["status"], ["db", "upgrade"], ["deadletter", "list"])
    ]
    assert all(c.returncode == 0 for c in cli), [c.stderr[-500:] for c in cli]

    with engine.connect() as conn:
        rows = [
            str(dict(row))
            for table in (t.inference_events, t.feedback, t.metrics)
            for row in conn.execute(select(table)).mappings()
        ]
    engine.dispose()
    logs = log_text(settings, "serve") + log_text(settings, "worker")
    kafka = b"\n".join(_raw_messages(settings, "inference", "feedback", "metrics")).decode("utf-8", "replace")
    spools = "".join(p.read_text() for p in (tmp_path / "spool").glob("*.jsonl"))  # no folder: empty
    outputs = "".join(c.stdout + c.stderr for c in cli) + "".join(bodies)
    where = {"logs": logs, "database": "\n".join(rows), "kafka": kafka, "spool": spools, "output": outputs}

    for name, text in where.items():
        assert password not in text, f"the database password is in the {name}"
        assert token not in text, f"the admin token is in the {name}"
    for kind, value in PII.items():
        for name in ("logs", "database", "kafka", "spool"):
            assert value not in where[name], f"the {kind} reached the {name}"
    # Redaction happened (placeholders are there) and the DEBUG logs did log something.
    assert "[EMAIL]" in where["database"] and "[CPF]" in where["database"] and "[CARD]" in where["kafka"]
    assert '"level": "debug"' in logs or '"level": "info"' in logs


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _count(engine: object, table: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
