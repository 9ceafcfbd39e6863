"""Kafka over TLS end to end: a CA and a broker certificate made in the test (``cryptography``),
a second local broker with an SSL listener (the project's broker tooling on free ports, data under
the test's temporary folder; the shared broker on 9092 is not touched), the thin slice through it
(SDK producer -> topic -> faust worker -> PostgreSQL, and a follow loop) with
``ATALAIA_KAFKA_SSL_CAFILE``, and a client trusting another CA failing at start with a message
naming that setting.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atalaia.kafka import clients
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from composition.kafka import broker
from tests.integration.secured_slice import run_slice
from tests.integration.services import log_text, service
from tests.integration.test_kafka_broker import _free_ports, _require_java_and_maven

pytestmark = pytest.mark.integration

KEYSTORE_PASSWORD = "keystore-secret-1"


def _ca(name: str) -> tuple[Any, Any]:
    """A self-signed CA: (private key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _broker_cert(ca_key: Any, ca_cert: Any) -> tuple[Any, Any]:
    """A server certificate for 127.0.0.1 and localhost, signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(cert.public_bytes(Encoding.PEM))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, int, Path]]:
    """A broker with PLAINTEXT (for its own checks) and SSL listeners; yields the PLAINTEXT
    settings, the SSL port and the folder holding ``ca.pem`` and ``other-ca.pem``."""
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    _require_java_and_maven()
    certs = tmp_path_factory.mktemp("tls-certs")
    ca_key, ca_cert = _ca("atalaia test CA")
    key, cert = _broker_cert(ca_key, ca_cert)
    (certs / "ca.pem").write_bytes(_pem(ca_cert))
    (certs / "other-ca.pem").write_bytes(_pem(_ca("some other CA")[1]))
    keystore = certs / "broker.p12"
    keystore.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"broker", key, cert, [ca_cert], BestAvailableEncryption(KEYSTORE_PASSWORD.encode())
        )
    )
    port, controller_port, ssl_port = _free_ports(3)
    plain = Settings(
        home=tmp_path_factory.mktemp("tls-broker"),
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_controller_port=controller_port,
    )
    properties = {
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": KEYSTORE_PASSWORD,
        "ssl.key.password": KEYSTORE_PASSWORD,
        "ssl.client.auth": "none",
    }
    try:
        broker.start(plain, timeout=90, extra_listeners={"SSL": ssl_port}, properties=properties)
        yield plain, ssl_port, certs
    finally:
        broker.stop(plain, timeout=15)


def _tls(ssl_port: int, cafile: Path, tmp_path: Path, **overrides: Any) -> Settings:
    from tests.conftest import free_port

    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "home": tmp_path,
        "kafka_bootstrap": f"127.0.0.1:{ssl_port}",
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": cafile,
        "topic_namespace": f"tls-{tag}",
        "topic_partitions": 2,
        "worker_id": f"tls-worker-{tag}",
        "monitor_group": f"tls-monitor-{tag}",
        "scheduler_group": f"tls-scheduler-{tag}",
        "metric_groups": "operational",
        "worker_web_port": free_port(),
        "monitor_port": free_port(),
        "inference_port": free_port(),
    }
    return Settings(**(values | overrides))


def test_plaintext_clients_get_nothing_from_the_ssl_listener(tls_broker: tuple[Settings, int, Path]) -> None:
    plain, ssl_port, _ = tls_broker
    anonymous = Settings(home=plain.home, kafka_bootstrap=f"127.0.0.1:{ssl_port}")
    with pytest.raises((RuntimeError, clients.KafkaAuthError)):
        clients.check_connection(anonymous, timeout_s=5)


def test_slice_over_tls(tls_broker: tuple[Settings, int, Path], tmp_path: Path, fresh_pg: str) -> None:
    """SDK producer -> inference topic -> faust worker -> PostgreSQL, and a follow loop, over TLS
    with the broker's certificate checked against ATALAIA_KAFKA_SSL_CAFILE (hostname included)."""
    _, ssl_port, certs = tls_broker
    settings = _tls(ssl_port, certs / "ca.pem", tmp_path, database_url=fresh_pg)
    assert settings.kafka_ssl_check_hostname
    clients.check_connection(settings)
    assert len(ensure_topics(settings)) == 6

    run_slice(settings, fresh_pg, "TLS")


def test_wrong_ca_fails_at_start_naming_the_setting(
    tls_broker: tuple[Settings, int, Path], tmp_path: Path, fresh_pg: str
) -> None:
    _, ssl_port, certs = tls_broker
    settings = _tls(ssl_port, certs / "other-ca.pem", tmp_path, database_url=fresh_pg)
    with pytest.raises(clients.KafkaAuthError, match="ATALAIA_KAFKA_SSL_CAFILE"):
        clients.check_connection(settings, timeout_s=10)

    # The worker exits at start with the message (status 2) instead of retrying for ever.
    with service("worker", settings) as proc:
        code = proc.wait(90)
    text = log_text(settings, "worker")
    assert code == 2, text[-2000:]
    assert "ATALAIA_KAFKA_SSL_CAFILE" in text
