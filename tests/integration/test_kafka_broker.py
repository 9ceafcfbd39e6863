"""Integration test of the local Kafka broker: start, reuse, produce/consume, status, stop.

Needs Java 17+ and Maven (jars are assembled once into the machine-wide cache, ~30 s the first
time; later runs take about 15-20 s in all). Uses a temporary ATALAIA_HOME and free ports, so it does
not touch a broker you run on the default ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atalaia.settings import Settings
from composition.kafka import broker
from composition.kafka.broker import BrokerError, BrokerInfo

pytestmark = pytest.mark.integration


def _require_java_and_maven() -> None:
    """Skip without Java or Maven, except under ATALAIA_REQUIRE_SERVICES=1 (CI), where it fails."""
    missing = [pkg for tool, pkg in (("java", "openjdk-17-jre-headless"), ("mvn", "maven")) if not shutil.which(tool)]
    if not missing:
        return
    message = f"the local Kafka broker needs {' and '.join(missing)} (scripts/system-deps.sh demo installs them)"
    if os.environ.get("ATALAIA_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _free_ports(count: int) -> list[int]:
    """Ports free right now; all sockets are held until every port is picked so they differ."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, BrokerInfo]]:
    _require_java_and_maven()
    port, controller_port = _free_ports(2)
    # cache_dir stays the configured one (ATALAIA_CACHE_DIR or ~/.cache/atalaia) so jars are reused.
    settings = Settings(
        home=tmp_path_factory.mktemp("atalaia-home"),
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_controller_port=controller_port,
    )
    try:
        info = broker.start(settings, timeout=60)
        yield settings, info
    finally:
        # Whatever failed, never leave a JVM behind.
        broker.stop(settings, timeout=10)


def test_start_binds_loopback_ports(running: tuple[Settings, BrokerInfo]) -> None:
    settings, info = running
    assert info.started is True
    assert info.bootstrap == settings.kafka_bootstrap
    assert info.controller_port == settings.kafka_controller_port
    assert info.data_dir == settings.home / "kafka"
    assert (info.data_dir / "data" / "meta.properties").is_file()
    assert (info.data_dir / "broker.pid").read_text().strip() == str(info.pid)
    assert info.log_file.is_file()
    assert _port_open(settings.kafka_controller_port)


def test_second_start_reuses_the_running_broker(running: tuple[Settings, BrokerInfo]) -> None:
    settings, info = running
    again = broker.start(settings)
    assert again.pid == info.pid
    assert again.started is False
    assert again.startup_s < 5


def test_topic_produce_consume(running: tuple[Settings, BrokerInfo]) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    _, info = running
    topic = f"atalaia.it-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=info.bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        assert topic in admin.list_topics()
        (described,) = admin.describe_topics([topic])
        assert len(described["partitions"]) == 3
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=info.bootstrap, acks="all")
    try:
        meta = producer.send(topic, key=b"k", value=b"hello atalaia", partition=2).get(timeout=15)
        assert (meta.partition, meta.offset) == (2, 0)
    finally:
        producer.close()

    # A consumer group, so the internal __consumer_offsets topic (replication factor 1) is used too.
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=info.bootstrap,
        group_id=f"it-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
    )
    try:
        received = []
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(records)
        assert [(r.partition, r.key, r.value) for r in received] == [(2, b"k", b"hello atalaia")]
        consumer.commit()
    finally:
        consumer.close()


def test_status_reports_running(running: tuple[Settings, BrokerInfo]) -> None:
    settings, info = running
    st = broker.status(settings)
    assert st.running is True
    assert st.pid == info.pid
    assert st.bootstrap == info.bootstrap
    assert st.data_dir == info.data_dir
    assert st.log_file == info.log_file
    assert st.version == broker.KAFKA_VERSION


def test_stop_closes_ports_and_is_idempotent(running: tuple[Settings, BrokerInfo]) -> None:
    settings, info = running
    assert broker.stop(settings) is True
    assert not _port_open(int(info.bootstrap.rpartition(":")[2]))
    assert not _port_open(info.controller_port)
    assert not (info.data_dir / "broker.pid").exists()
    assert broker.status(settings).running is False
    assert broker.stop(settings) is False


def test_failed_start_reports_the_broker_log(running: tuple[Settings, BrokerInfo]) -> None:
    settings, info = running
    assert broker.status(settings).pid is None  # stopped by the previous test
    meta: Path = info.data_dir / "data" / "meta.properties"
    original = meta.read_text()
    meta.write_text(original.replace("node.id=1", "node.id=7"))
    try:
        with pytest.raises(BrokerError, match=r"exited during start-up(.|\n)*Stored node id 7"):
            broker.start(settings, timeout=30)
    finally:
        meta.write_text(original)
    assert broker.status(settings).pid is None
    assert not (info.data_dir / "broker.pid").exists()
