"""Unit tests of composition.kafka.broker that need neither Java nor a running broker."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atalaia.settings import Settings
from composition.kafka import broker
from composition.kafka.broker import BrokerError, render_server_properties


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_render_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    props = _props(render_server_properties(broker_port=19092, controller_port=19093, log_dirs=tmp_path / "data"))

    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"].startswith("PLAINTEXT://127.0.0.1:19092")
    assert props["controller.listener.names"] == "CONTROLLER"
    # `format --standalone` needs the dynamic quorum setting and refuses static voters.
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props
    assert props["log.dirs"] == str(tmp_path / "data")
    # Nothing may bind beyond loopback.
    hosts = re.findall(r"://([^:,]*):", props["listeners"] + "," + props["advertised.listeners"])
    assert set(hosts) == {"127.0.0.1"}


def test_render_single_node_settings() -> None:
    props = _props(render_server_properties(broker_port=9092, controller_port=9093, log_dirs="/d"))

    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "1"
    assert int(props["log.retention.hours"]) <= 7 * 24
    assert int(props["log.retention.bytes"]) > 0


def test_render_extra_overrides_and_is_stable() -> None:
    text = render_server_properties(
        broker_port=9092, controller_port=9093, log_dirs="/d", retention_hours=2, extra={"num.partitions": 3}
    )
    props = _props(text)
    assert props["num.partitions"] == "3"
    assert props["log.retention.hours"] == "2"
    assert text == render_server_properties(
        broker_port=9092, controller_port=9093, log_dirs="/d", retention_hours=2, extra={"num.partitions": 3}
    )
    assert len(props) == len([line for line in text.splitlines() if line and not line.startswith("#")])


@pytest.mark.parametrize(("broker_port", "controller_port"), [(9092, 9092), (0, 9093), (9092, 70000)])
def test_render_rejects_bad_ports(broker_port: int, controller_port: int) -> None:
    with pytest.raises(ValueError):
        render_server_properties(broker_port=broker_port, controller_port=controller_port, log_dirs="/d")


def test_kafka_version_matches_pom() -> None:
    pom = broker.POM_FILE.read_text(encoding="utf-8")
    assert f"<kafka.version>{broker.KAFKA_VERSION}</kafka.version>" in pom


def test_log4j_template_logs_to_the_file_given_by_start() -> None:
    text = broker.LOG4J2_TEMPLATE.read_text(encoding="utf-8")
    assert "${sys:atalaia.kafka.log.file}" in text
    assert "rootLogger.level = WARN" in text
    assert "Console" not in text


def _settings(tmp_path: Path, port: int, controller_port: int, host: str = "127.0.0.1") -> Settings:
    return Settings(
        home=tmp_path / "home",
        cache_dir=tmp_path / "cache",
        kafka_bootstrap=f"{host}:{port}",
        kafka_controller_port=controller_port,
    )


def test_start_fails_clearly_when_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            free_port = free.getsockname()[1]
        settings = _settings(tmp_path, taken, free_port)
        with pytest.raises(BrokerError, match=rf"Port {taken} .* in use .*ATALAIA_KAFKA_BOOTSTRAP"):
            broker.start(settings)
    # Checked before anything slow: no jars were assembled.
    assert not (tmp_path / "cache").exists()


def test_start_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"ATALAIA_KAFKA_BOOTSTRAP=kafka\.example:9092"):
        broker.start(_settings(tmp_path, 9092, 9093, host="kafka.example"))
    with pytest.raises(BrokerError, match="ATALAIA_KAFKA_CONTROLLER_PORT"):
        broker.start(_settings(tmp_path, 19092, 19092))


def test_status_and_stop_without_a_broker(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 19092, 19093)
    st = broker.status(settings)
    assert (st.running, st.pid, st.bootstrap) == (False, None, "127.0.0.1:19092")
    assert st.data_dir == tmp_path / "home" / "kafka"
    assert st.version == broker.KAFKA_VERSION
    assert broker.stop(settings) is False


def test_stale_pid_file_never_signals_another_process(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 19092, 19093)
    data_dir = tmp_path / "home" / "kafka"
    data_dir.mkdir(parents=True)
    # A live process that is not our broker, as after a reboot reused the pid.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (data_dir / "broker.pid").write_text(f"{stranger.pid}\n")
        assert broker.status(settings).pid is None
        assert broker.stop(settings) is False
        assert stranger.poll() is None
        assert not (data_dir / "broker.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def _no_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend neither mvn nor java is installed."""
    monkeypatch.setattr(broker.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)


def test_assembled_jars_are_reused_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, 19092, 19093)
    libs = broker.libs_dir(settings)
    libs.mkdir(parents=True)
    jar = f"kafka_2.13-{broker.KAFKA_VERSION}.jar"
    (libs / jar).write_bytes(b"")
    marker = libs.parent / ".assembled.json"
    marker.write_text(
        json.dumps({"kafka_version": broker.KAFKA_VERSION, "pom_sha256": broker._pom_sha256(), "jars": [jar]})
    )
    _no_tools(monkeypatch)
    assert broker.assemble_jars(settings) == libs

    # A jar missing since (or an interrupted earlier attempt) means the assembly must be redone.
    (libs / jar).unlink()
    with pytest.raises(BrokerError, match="apt-get install maven"):
        broker.assemble_jars(settings)


def test_missing_java_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_tools(monkeypatch)
    monkeypatch.setattr(broker.shutil, "which", lambda name: "/usr/bin/mvn" if name == "mvn" else None)
    with pytest.raises(BrokerError, match="openjdk-17-jre-headless"):
        broker.assemble_jars(_settings(tmp_path, 19092, 19093))
