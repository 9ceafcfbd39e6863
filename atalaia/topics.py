"""Topic names and their creation with explicit partition counts, replication factor and
``min.insync.replicas`` (``ATALAIA_TOPIC_REPLICATION_FACTOR``, ``ATALAIA_TOPIC_MIN_INSYNC_REPLICAS``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from atalaia.settings import Settings

log = logging.getLogger(__name__)

#: Logical topic names; the full name is ``{ATALAIA_TOPIC_NAMESPACE}.{name}``.
TOPICS: tuple[str, ...] = ("inference", "feedback", "metrics", "alerts", "models", "deadletter")


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: full name and partition count."""

    name: str
    partitions: int


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every Atalaia topic with its partition count.

    ``models`` has a single partition: deploy/rollback commands must stay totally ordered.

    >>> from atalaia.settings import Settings
    >>> [(t.name, t.partitions) for t in topic_specs(Settings(topic_partitions=4))][-2:]
    [('atalaia.models', 1), ('atalaia.deadletter', 4)]
    """
    return [TopicSpec(settings.topic(name), 1 if name == "models" else settings.topic_partitions) for name in TOPICS]


def topic_configs(settings: Settings) -> dict[str, str]:
    """Topic-level configs of the topics Atalaia creates.

    Retention bounds how long erased or expired personal data can remain in a topic
    (``ATALAIA_TOPIC_RETENTION_HOURS``; docs/operations.md, "Privacy").

    >>> topic_configs(Settings(topic_replication_factor=3, topic_min_insync_replicas=2, topic_retention_hours=24))
    {'retention.ms': '86400000', 'min.insync.replicas': '2'}
    >>> topic_configs(Settings(topic_retention_hours=168))
    {'retention.ms': '604800000'}
    """
    configs = {"retention.ms": str(settings.topic_retention_hours * 3_600_000)}
    if settings.topic_min_insync_replicas:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    return configs


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the names created. Existing topics are left as they are.

    A partition count that differs from the configured one is logged, not changed: shrinking is
    impossible in Kafka and growing reshuffles keys, which is the operator's decision.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from atalaia.kafka import clients

    deadline = time.monotonic() + timeout
    admin = None
    last: Exception | None = None
    while admin is None:
        try:
            admin = clients.admin(settings, "atalaia-admin")
        except clients.KafkaAuthError:
            raise
        except Exception as exc:
            last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot reach Kafka at {settings.kafka_bootstrap} ({last}); "
                    "start it with `atalaia kafka start` or set ATALAIA_KAFKA_BOOTSTRAP"
                ) from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        wanted = topic_specs(settings)
        configs = topic_configs(settings)
        missing = [
            NewTopic(t.name, t.partitions, settings.topic_replication_factor, topic_configs=configs)
            for t in wanted
            if t.name not in existing
        ]
        created: list[str] = []
        if missing:
            try:
                admin.create_topics(missing)
                created = [t.name for t in missing]
            except TopicAlreadyExistsError:
                pass  # another process created them concurrently; that is fine
        described = admin.describe_topics([t.name for t in wanted])
        for desc in described:
            spec = next(t for t in wanted if t.name == desc.get("name", desc.get("topic")))
            count = len(desc.get("partitions") or [])
            if count and count != spec.partitions:
                log.warning(
                    "topic partition count differs",
                    extra={"topic": spec.name, "actual": count, "configured": spec.partitions},
                )
        if created:
            log.info("topics created", extra={"topics": created})
        return created
    finally:
        admin.close()
