"""Kafka with credentials: a second local broker with a SASL_PLAINTEXT listener (SCRAM-SHA-512
users created by Kafka's own ``kafka-storage format --add-scram``, and PLAIN), the thin slice
through it (SDK producer -> topic -> faust worker -> database, a follow loop), and a wrong password
failing at start with a message naming the setting.

The broker is the project's tooling (``composition.kafka.broker``) on free ports with its data under
the test's temporary folder; the shared broker on 9092 is not touched.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from atalaia.events import ModelEvent
from atalaia.kafka import clients
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from composition.kafka import broker
from tests.integration.secured_slice import run_slice
from tests.integration.services import log_text, service
from tests.integration.test_kafka_broker import _free_ports, _require_java_and_maven

pytestmark = pytest.mark.integration

USER, PASSWORD = "atalaia-svc", "scram-secret-1"
PLAIN_USER, PLAIN_PASSWORD = "plain-svc", "plain-secret-1"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, int]]:
    """A broker with PLAINTEXT (for its own checks) and SASL_PLAINTEXT listeners; yields the
    PLAINTEXT settings and the SASL port."""
    _require_java_and_maven()
    port, controller_port, sasl_port = _free_ports(3)
    plain = Settings(
        home=tmp_path_factory.mktemp("sasl-broker"),
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_controller_port=controller_port,
    )
    properties = {
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{PLAIN_USER}="{PLAIN_PASSWORD}";'
        ),
    }
    try:
        broker.start(
            plain,
            timeout=90,
            extra_listeners={"SASL_PLAINTEXT": sasl_port},
            properties=properties,
            scram_users={USER: PASSWORD},
        )
        yield plain, sasl_port
    finally:
        broker.stop(plain, timeout=15)


def _secured(base: Settings, sasl_port: int, tmp_path: Any, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "home": tmp_path,
        "kafka_bootstrap": f"127.0.0.1:{sasl_port}",
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": SecretStr(PASSWORD),
        "topic_namespace": f"sec-{tag}",
        "topic_partitions": 2,
        "worker_id": f"sec-worker-{tag}",
        "monitor_group": f"sec-monitor-{tag}",
        "scheduler_group": f"sec-scheduler-{tag}",
        "metric_groups": "operational",
    }
    from tests.conftest import free_port

    values |= {"worker_web_port": free_port(), "monitor_port": free_port(), "inference_port": free_port()}
    return Settings(**(values | overrides))


def test_plaintext_clients_are_refused_on_the_sasl_listener(sasl_broker: tuple[Settings, int]) -> None:
    """The listener really requires credentials: a client without them gets no metadata."""
    plain, sasl_port = sasl_broker
    anonymous = Settings(home=plain.home, kafka_bootstrap=f"127.0.0.1:{sasl_port}")
    with pytest.raises((RuntimeError, clients.KafkaAuthError)):
        clients.check_connection(anonymous, timeout_s=5)


def test_slice_through_scram(sasl_broker: tuple[Settings, int], tmp_path: Any, fresh_pg: str) -> None:
    """SDK producer -> inference topic -> faust worker -> PostgreSQL, and a follow loop, all over
    SASL/SCRAM-SHA-512; topics created with the configured min.insync.replicas."""
    plain, sasl_port = sasl_broker
    settings = _secured(plain, sasl_port, tmp_path, database_url=fresh_pg, topic_min_insync_replicas=1)
    clients.check_connection(settings)
    created = ensure_topics(settings)
    assert len(created) == 6

    admin = clients.admin(settings)
    try:
        from kafka.admin import ConfigResource, ConfigResourceType

        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic("inference"))])
        (by_name,) = described.values()
        config = by_name[settings.topic("inference")]["min.insync.replicas"]
        assert str(config.get("value") if isinstance(config, dict) else config) == "1", config
    finally:
        admin.close()

    run_slice(settings, fresh_pg, "SASL")


def test_plain_mechanism(sasl_broker: tuple[Settings, int], tmp_path: Any) -> None:
    plain, sasl_port = sasl_broker
    settings = _secured(
        plain,
        sasl_port,
        tmp_path,
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=PLAIN_USER,
        kafka_sasl_password=SecretStr(PLAIN_PASSWORD),
    )
    clients.check_connection(settings)
    assert len(ensure_topics(settings)) == 6


def test_wrong_password_fails_at_start_naming_the_setting(
    sasl_broker: tuple[Settings, int], tmp_path: Any, fresh_pg: str
) -> None:
    plain, sasl_port = sasl_broker
    settings = _secured(
        plain, sasl_port, tmp_path, kafka_sasl_password=SecretStr("wrong-password"), database_url=fresh_pg
    )
    with pytest.raises(clients.KafkaAuthError, match="ATALAIA_KAFKA_SASL_PASSWORD") as err:
        clients.check_connection(settings)
    assert "wrong-password" not in str(err.value)

    # The follow loop of every non-faust service stops instead of retrying for ever.
    with pytest.raises(clients.KafkaAuthError, match="ATALAIA_KAFKA_SASL_PASSWORD"):
        clients.follow(
            settings,
            settings.topic("alerts"),
            ModelEvent,
            lambda *_: None,
            stop=threading.Event(),
            client_id="wrong",
            group_id="wrong",
        )

    # The services exit at start with the message (status 2), the password never printed.
    for name in ("worker", "monitor"):
        started = time.monotonic()
        with service(name, settings) as proc:
            code = proc.wait(90)
        text = log_text(settings, name)
        assert code == 2, text[-2000:]
        assert "ATALAIA_KAFKA_SASL_PASSWORD" in text and "wrong-password" not in text
        assert time.monotonic() - started < 90
