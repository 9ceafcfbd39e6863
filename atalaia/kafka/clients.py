"""The one place that builds Kafka clients: producers, consumers, admin clients and the faust app.

Every client takes its bootstrap servers and its security settings (SASL PLAIN/SCRAM, TLS) from
:class:`~atalaia.settings.Settings` here, so a setting added here applies everywhere. On top of
the clients sit the two ways services use Kafka:

* :func:`follow` — the consume loop of every non-faust consumer: connect (and reconnect after a
  broker outage), parse each message into an event, hand it over, commit, and one dead-letter
  policy: a message that does not parse, or that the handler refuses (:class:`Refused`), goes to
  ``<namespace>.deadletter`` with the reason, the consumer's name and the original bytes.
* :class:`Publisher` — the one way to publish an event: keyed by the event, ``acks=all``, and
  waited for, so the caller knows the broker has it. Control events (deploy, rollback, alerts,
  dead letters) use it rather than the SDK's spool: a command must either be confirmed now or
  fail loudly, never be replayed from disk hours later (a deploy replayed late would swap the
  model when nobody asked). Telemetry (inference and feedback events) goes through
  ``producers.EventProducer``, which never blocks the request and spools while Kafka is away.

A wrong SASL password or an unusable TLS file fails with :class:`KafkaAuthError` (a
:class:`~atalaia.settings.ConfigError`) naming the setting, instead of being retried for ever.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from atalaia.settings import ConfigError, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between reconnection attempts of :func:`follow` (doubling up to the maximum).
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
#: How long one connection attempt of :func:`follow` waits for a broker before retrying.
BOOTSTRAP_TIMEOUT_MS = 10_000


class KafkaAuthError(ConfigError):
    """The broker refused the configured credentials or TLS set-up; the message names the setting."""


# -- connection settings -------------------------------------------------------------------------


def client_options(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for the bootstrap servers and security settings.

    >>> from pydantic import SecretStr
    >>> opts = client_options(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
    ...                                kafka_sasl_password=SecretStr("p")))
    >>> opts["security_protocol"], opts["sasl_mechanism"], opts["sasl_plain_username"]
    ('SASL_PLAINTEXT', 'SCRAM-SHA-512', 'u')
    >>> client_options(Settings())
    {'bootstrap_servers': ['127.0.0.1:9092'], 'security_protocol': 'PLAINTEXT'}
    """
    protocol = settings.kafka_security_protocol
    opts: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers, "security_protocol": protocol}
    if protocol.startswith("SASL_"):
        opts |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    if protocol in ("SSL", "SASL_SSL"):
        opts["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        if settings.kafka_ssl_cafile:
            opts["ssl_cafile"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            opts["ssl_certfile"] = str(settings.kafka_ssl_certfile)
        if settings.kafka_ssl_keyfile:
            opts["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
        if settings.kafka_ssl_key_password.get_secret_value():
            opts["ssl_password"] = settings.kafka_ssl_key_password.get_secret_value()
    return opts


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of asyncio clients (faust/aiokafka), or None without TLS."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        context.check_hostname = settings.kafka_ssl_check_hostname
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
                settings.kafka_ssl_key_password.get_secret_value() or None,
            )
    except (OSError, ssl.SSLError) as exc:
        raise KafkaAuthError(
            f"cannot load the Kafka TLS files ({exc}). Fix: check ATALAIA_KAFKA_SSL_CAFILE, "
            "ATALAIA_KAFKA_SSL_CERTFILE, ATALAIA_KAFKA_SSL_KEYFILE and ATALAIA_KAFKA_SSL_KEY_PASSWORD"
        ) from None
    return context


def auth_error(exc: BaseException, settings: Settings) -> KafkaAuthError | None:
    """A :class:`KafkaAuthError` naming the settings when ``exc`` is an authentication or TLS failure."""
    from kafka.errors import SaslAuthenticationFailedError

    text = f"{type(exc).__name__}: {exc}"
    name = type(exc).__name__
    if isinstance(exc, SaslAuthenticationFailedError) or "Authentication" in name or "authentication" in text.lower():
        return KafkaAuthError(
            f"Kafka at {settings.kafka_bootstrap} refused the SASL credentials ({text}). Fix: check "
            f"ATALAIA_KAFKA_SASL_USERNAME={settings.kafka_sasl_username!r} and ATALAIA_KAFKA_SASL_PASSWORD "
            f"(mechanism ATALAIA_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism})"
        )
    if isinstance(exc, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in name:
        return KafkaAuthError(
            f"TLS with Kafka at {settings.kafka_bootstrap} failed ({text}). Fix: check ATALAIA_KAFKA_SSL_CAFILE, "
            "ATALAIA_KAFKA_SSL_CERTFILE, ATALAIA_KAFKA_SSL_KEYFILE and ATALAIA_KAFKA_SSL_CHECK_HOSTNAME"
        )
    return None


def _build(factory: Callable[..., T], settings: Settings, options: dict[str, Any]) -> T:
    try:
        return factory(**(client_options(settings) | options))
    except Exception as exc:
        problem = auth_error(exc, settings)
        if problem is not None:
            raise problem from None
        raise


# -- clients -------------------------------------------------------------------------------------


def producer(settings: Settings, client_id: str, **options: Any) -> Any:
    """A ``kafka.KafkaProducer`` (``acks=all`` unless ``options`` say otherwise)."""
    from kafka import KafkaProducer

    return _build(KafkaProducer, settings, {"client_id": client_id, "acks": "all"} | options)


def consumer(settings: Settings, *topics: str, client_id: str, **options: Any) -> Any:
    """A ``kafka.KafkaConsumer`` subscribed to ``topics`` (none: assign partitions yourself)."""
    from kafka import KafkaConsumer

    return _build(lambda **kw: KafkaConsumer(*topics, **kw), settings, {"client_id": client_id} | options)


def admin(settings: Settings, client_id: str = "atalaia-admin", **options: Any) -> Any:
    """A ``kafka.admin.KafkaAdminClient``."""
    from kafka.admin import KafkaAdminClient

    return _build(KafkaAdminClient, settings, {"client_id": client_id} | options)


def plaintext_admin(bootstrap: str, client_id: str, **options: Any) -> Any:
    """An admin client for a PLAINTEXT listener given by address, not settings: the local broker
    tooling probes its own loopback listener with it."""
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, **options)


def faust_credentials(settings: Settings) -> Any:
    """faust's ``broker_credentials`` for the security settings (None for PLAINTEXT)."""
    import faust

    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_app(settings: Settings, app_id: str, **options: Any) -> Any:
    """A ``faust.App`` connected to the configured brokers with the configured credentials."""
    import faust

    return faust.App(
        app_id,
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers],
        broker_credentials=faust_credentials(settings),
        **options,
    )


class _AuthFailures(logging.Handler):
    """Collects the authentication failures kafka-python logs while it retries its bootstrap:
    it gives up with a plain timeout, so the reason is only in its log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "AuthenticationFailed" in text or "SSLCertVerificationError" in text or "CERTIFICATE_VERIFY" in text:
            self.seen.append(text)


def check_connection(settings: Settings, timeout_s: float = 15.0) -> None:
    """Connect once with the configured credentials; raise :class:`KafkaAuthError` if they are
    refused and ``RuntimeError`` if no broker answers within ``timeout_s``."""
    timeout_ms = max(1000, int(timeout_s * 1000))
    net_log = logging.getLogger("kafka.net")
    failures, level = _AuthFailures(), net_log.level
    net_log.addHandler(failures)
    if net_log.getEffectiveLevel() > logging.WARNING:
        net_log.setLevel(logging.WARNING)
    try:
        client = admin(settings, "atalaia-check", request_timeout_ms=timeout_ms + 1000, bootstrap_timeout_ms=timeout_ms)
        try:
            client.describe_cluster()
        finally:
            client.close()
    except KafkaAuthError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to connect is explained below
        problem = auth_error(exc, settings) or next(
            (auth_error(RuntimeError(text), settings) for text in failures.seen), None
        )
        if problem is None and settings.kafka_security_protocol != "PLAINTEXT" and _port_answers(settings):
            # kafka-python sometimes sees only the closed socket, not the broker's refusal: a
            # listener that accepts TCP but never completes the handshake is refusing us.
            problem = KafkaAuthError(
                f"Kafka at {settings.kafka_bootstrap} accepts connections but the "
                f"{settings.kafka_security_protocol} handshake did not complete ({type(exc).__name__}: {exc}). "
                f"Fix: check ATALAIA_KAFKA_SASL_USERNAME={settings.kafka_sasl_username!r}, "
                f"ATALAIA_KAFKA_SASL_PASSWORD, ATALAIA_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism} and "
                f"ATALAIA_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} (and the ATALAIA_KAFKA_SSL_* "
                "files with TLS)"
            )
        if problem is not None:
            raise problem from None
        raise RuntimeError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}: {exc}); "
            "start it with `atalaia kafka start` or set ATALAIA_KAFKA_BOOTSTRAP"
        ) from None
    finally:
        net_log.removeHandler(failures)
        net_log.setLevel(level)


def _port_answers(settings: Settings) -> bool:
    """Whether any bootstrap server accepts a TCP connection."""
    import socket

    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return True
        except OSError:
            continue
    return False


def check_credentials(settings: Settings, timeout_s: float = 15.0) -> None:
    """With SASL or TLS configured, :func:`check_connection` but only authentication failures
    raise; an unreachable broker is logged and left to the client's own retries."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    try:
        check_connection(settings, timeout_s)
    except KafkaAuthError:
        raise
    except RuntimeError as exc:
        log.warning("kafka not reachable yet", extra={"error": str(exc)})


# -- publishing ----------------------------------------------------------------------------------


class Publisher:
    """Publishes events and waits for the broker's acknowledgement; the producer is made lazily
    and rebuilt after a failure. Not thread-safe: one per thread or guard it."""

    def __init__(self, settings: Settings, client_id: str, **options: Any) -> None:
        self.settings = settings
        self.client_id = client_id
        self.options = {"linger_ms": 5, "request_timeout_ms": 15_000} | options
        self._producer: Any = None

    def publish(self, event: Any, topic: str, *, key: bytes | None = None, timeout_s: float = 30.0) -> None:
        """Send ``event`` (an Atalaia event: ``to_json()``, ``key``) to the full ``topic`` name and
        wait for the acknowledgement; raise on failure (the producer is rebuilt next time)."""
        try:
            if self._producer is None:
                self._producer = producer(self.settings, self.client_id, **self.options)
            self._producer.send(topic, key=key if key is not None else event.key, value=event.to_json()).get(
                timeout=timeout_s
            )
        except KafkaAuthError:
            raise
        except Exception as exc:  # noqa: BLE001 - the producer is rebuilt; the error goes to the caller
            self._discard()
            raise (auth_error(exc, self.settings) or exc) from None

    def publish_retrying(
        self,
        event: Any,
        topic: str,
        *,
        key: bytes | None = None,
        stop: threading.Event | None = None,
        deadline_s: float | None = None,
        what: str = "publish",
    ) -> None:
        """:meth:`publish` with backoff until it succeeds, ``stop`` is set or ``deadline_s`` passes
        (then the last error is raised). Authentication errors are not retried."""
        delay, started = RETRY_INITIAL_S, time.monotonic()
        while True:
            try:
                return self.publish(event, topic, key=key)
            except KafkaAuthError:
                raise
            except Exception as exc:
                late = deadline_s is not None and time.monotonic() - started + delay > deadline_s
                if late or (stop is not None and stop.is_set()):
                    raise
                log.warning(
                    "retrying", extra={"what": what, "retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"}
                )
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _discard(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception:  # noqa: BLE001 - a broken producer is being thrown away
                pass
            self._producer = None

    def close(self) -> None:
        """Deliver what is queued and close the producer."""
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None


# -- following a topic ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Where a message came from, and its raw bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


class Refused(Exception):
    """Raised by a :func:`follow` handler for a well-formed event it will not act on: the message
    is dead-lettered with ``reason`` (and ``field``) and the loop goes on."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass
class FollowStats:
    """Counters of a :func:`follow` loop (read them from any thread)."""

    events: int = 0
    malformed: int = 0
    refused: int = 0
    dead_lettered: int = 0
    connects: int = 0
    #: Epoch seconds of the last commit of offsets (None: none yet).
    last_commit: float | None = None


def follow(
    settings: Settings,
    topic: str,
    event_type: type[T],
    handle: Callable[[T, Message], None],
    *,
    stop: threading.Event,
    client_id: str,
    start: Literal["committed", "latest", "beginning"] = "committed",
    group_id: str | None = None,
    dead_letter: bool = True,
    on_poll: Callable[[bool], None] | None = None,
    on_connect: Callable[[], None] | None = None,
    on_caught_up: Callable[[], None] | None = None,
    stats: FollowStats | None = None,
    max_records: int = 500,
    publisher: Publisher | None = None,
    parse: Callable[[bytes], Any] | None = None,
) -> None:
    """Consume the full ``topic`` name until ``stop`` is set, calling ``handle(event, message)``
    for each message parsed as ``event_type`` (or by ``parse``, for topics whose messages hold
    several events, such as ``metrics``' batches: ``handle`` then gets what ``parse`` returns).

    ``start``: ``committed`` — as consumer group ``group_id``, from its committed offsets (the
    earliest without), committing after each batch is handled, so a crash redelivers rather than
    loses; ``latest`` — no group, only messages sent from now on (every instance sees every
    message); ``beginning`` — no group, the whole topic again on every (re)connect
    (``on_caught_up`` is called once the messages present at connection time are read).

    After each poll ``on_poll(anything_polled)`` runs (periodic work), then the commit. A message
    that does not parse, or whose handler raises :class:`Refused`, is dead-lettered when
    ``dead_letter`` is true (consumers that re-read a topic from its beginning pass false and only
    log, so one message is not dead-lettered on every restart). Any other error — broker outage,
    a handler failing — closes the consumer and reconnects with backoff; uncommitted messages are
    delivered again. Authentication failures end the loop with :class:`KafkaAuthError`.
    """
    from atalaia.deadletter import dead_letter_for
    from atalaia.events import EventError, parse_event

    if start == "committed" and not group_id:
        raise ValueError("start='committed' needs a group_id")
    stats = stats if stats is not None else FollowStats()
    own_publisher = publisher is None
    dead_pub = publisher or Publisher(settings, f"{client_id}-deadletter")
    deadletter_topic = settings.topic("deadletter")
    kafka_consumer: Any = None
    ends: dict[Any, int] = {}
    caught_up = False
    delay = RETRY_INITIAL_S

    def to_dead_letter(msg: Message, reason: str, field: str | None) -> None:
        if not dead_letter:
            log.warning("ignored a message", extra={"topic": msg.topic, "offset": msg.offset, "reason": reason})
            return
        record = dead_letter_for(msg.value, reason, msg.topic, msg.partition, msg.offset, field, client_id)
        log.warning("dead-lettered", extra={"reason": reason, "topic": msg.topic, "offset": msg.offset})
        dead_pub.publish_retrying(record, deadletter_topic, stop=stop, what="publish dead letter")
        stats.dead_lettered += 1

    check_credentials(settings)  # a refused password ends the service at start, not after retries
    try:
        while not stop.is_set():
            try:
                if kafka_consumer is None:
                    kafka_consumer, ends = _connect(settings, topic, client_id, start, group_id)
                    caught_up = False
                    stats.connects += 1
                    if on_connect is not None:
                        on_connect()
                polled = kafka_consumer.poll(timeout_ms=500, max_records=max_records)
                for tp, records in polled.items():
                    for rec in records:
                        msg = Message(tp.topic, tp.partition, rec.offset, rec.value)
                        try:
                            if parse is not None:
                                event = parse(rec.value or b"")
                            else:
                                event = parse_event(rec.value or b"", event_type)  # type: ignore[arg-type]
                        except EventError as exc:
                            stats.malformed += 1
                            to_dead_letter(msg, exc.reason, exc.field)
                            continue
                        try:
                            handle(event, msg)
                            stats.events += 1
                        except Refused as exc:
                            stats.refused += 1
                            to_dead_letter(msg, exc.reason, exc.field)
                if on_poll is not None:
                    on_poll(bool(polled))
                if polled and start == "committed":
                    kafka_consumer.commit()
                    stats.last_commit = time.time()
                if on_caught_up is not None and not caught_up and ends:
                    if all(kafka_consumer.position(tp) >= end for tp, end in ends.items()):
                        caught_up = True
                        on_caught_up()
                delay = RETRY_INITIAL_S
            except KafkaAuthError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broker outage or a failing handler must not end the loop
                problem = auth_error(exc, settings)
                if problem is not None:
                    raise problem from None
                log.warning(
                    "topic unavailable; reconnecting",
                    extra={"topic": topic, "client_id": client_id, "retry_in_s": delay, "error": f"{exc}"},
                )
                _close(kafka_consumer)
                kafka_consumer = None
                stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
    finally:
        _close(kafka_consumer)
        if own_publisher:
            dead_pub.close()


def _connect(
    settings: Settings, topic: str, client_id: str, start: str, group_id: str | None
) -> tuple[Any, dict[Any, int]]:
    if start == "committed":
        c = consumer(
            settings,
            topic,
            client_id=client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        )
        return c, {}
    if start == "latest":
        return consumer(
            settings,
            topic,
            client_id=client_id,
            group_id=None,
            auto_offset_reset="latest",
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        ), {}
    from kafka import TopicPartition

    c = consumer(
        settings,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
    )
    try:
        partitions = c.partitions_for_topic(topic) or {0}
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        c.assign(assigned)
        c.seek_to_beginning()
        return c, c.end_offsets(assigned)
    except Exception:
        c.close()
        raise


def _close(kafka_consumer: Any) -> None:
    if kafka_consumer is not None:
        try:
            kafka_consumer.close()
        except Exception:  # noqa: BLE001 - closing a broken consumer
            pass
