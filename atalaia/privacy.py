"""Data-subject rights (LGPD arts. 18, GDPR arts. 15-17) and retention: the logic behind
``atalaia privacy export|erase|retention`` and the scheduler's retention job.

**Subject id.** The inference service never stores the request's ``user`` as it came: events carry
``subject_id = HMAC-SHA256(pepper, user)`` (:func:`subject_id`). The pepper is
``ATALAIA_SUBJECT_PEPPER``, or a random key generated once in ``ATALAIA_HOME/secrets/`` (mode 0600)
when that is empty; without it nobody can recompute a subject id from a guessed e-mail address. The
caller identity (``caller``, the API key's name) is a different column and is never mixed in.

**Erasure** removes, for one subject: their inference events, every metric and embedding of those
events, their feedback (by subject id or by the events it rates) and its metrics, the events still
waiting in the local spool (dead-letter records in the spool included), and the inference cache
(through ``POST /admin/cache/clear``: cached answers are shared between users and keyed by the
question, so the whole cache is cleared). It lists the retraining data sets that hold the
subject's corrections and the model versions trained on them. Every request, export or erasure,
writes one row of ``privacy_requests`` (the audit table) holding the subject id (never the plain
user), what was done and how many rows went. Kafka topics cannot delete one record: erased data
stays in a topic until its retention (``retention.ms``, see ``atalaia.topics``) expires.

**Retention** (:func:`apply_retention`) deletes rows older than ``ATALAIA_RETENTION_DAYS`` from the
tables holding personal data (events, metrics, embeddings, feedback), and from the aggregate tables
named in ``ATALAIA_RETENTION_TABLE_DAYS``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, or_, select
from sqlalchemy import table as sa_table

from atalaia.events import utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.subjects import subject_id, subject_pepper

log = logging.getLogger(__name__)

__all__ = [
    "RETENTION_TABLES",
    "ErasureReport",
    "apply_retention",
    "erase_subject",
    "export_subject",
    "subject_id",
    "subject_pepper",
]

#: Tables the retention job prunes, with the time column it reads. The first four hold personal
#: data and follow ATALAIA_RETENTION_DAYS; the others only when ATALAIA_RETENTION_TABLE_DAYS names them.
RETENTION_TABLES: dict[str, str] = {
    "inference_events": "ts",
    "metrics": "ts",
    "embeddings": "ts",
    "feedback": "ts",
    "metric_windows": "window_start",
    "alerts": "ts",
    "alert_deliveries": "created_at",
}
PERSONAL_TABLES = ("inference_events", "metrics", "embeddings", "feedback")
#: Id of the scheduler's retention job (``atalaia scheduler``, ``ATALAIA_RETENTION_CRON``).
RETENTION_JOB = "privacy-retention"


def resolve_subject(settings: Settings, subject: str | None = None, subject_hash: str | None = None) -> str:
    """The subject id to act on: given directly (``--subject-id``) or computed from the user id."""
    if subject_hash:
        return subject_hash.strip().lower()
    if not subject:
        raise ValueError("give the subject's user id (--subject) or their subject id (--subject-id)")
    return subject_id(subject, subject_pepper(settings))


# -- finding a subject's data -------------------------------------------------------------------
def _event_ids(conn: Any, sid: str) -> list[str]:
    return list(
        conn.execute(select(t.inference_events.c.event_id).where(t.inference_events.c.subject_id == sid)).scalars()
    )


def _feedback_filter(sid: str, event_ids: list[str]) -> Any:
    by_event = t.feedback.c.inference_event_id.in_(event_ids) if event_ids else None
    return or_(t.feedback.c.subject_id == sid, by_event) if by_event is not None else t.feedback.c.subject_id == sid


def _chunks(items: list[str], size: int = 5_000) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _jsonable(row: Any) -> dict[str, Any]:
    out = {}
    for key, value in row._mapping.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        out[key] = value
    return out


def _spool_files(settings: Settings) -> list[Path]:
    assert settings.spool_dir is not None
    return sorted(settings.spool_dir.glob("*.jsonl")) if settings.spool_dir.exists() else []


def _mentions(payload: Any, sid: str, ids: set[str]) -> bool:
    """Whether a spooled message (an event, or a dead-letter record wrapping one) is the subject's."""
    if not isinstance(payload, dict):
        return False
    if payload.get("subject_id") == sid:
        return True
    for key in ("event_id", "inference_event_id"):
        if payload.get(key) in ids:
            return True
    original = payload.get("original")
    if isinstance(original, str):  # a dead-letter record: the original message's text or base64
        text = original
        if payload.get("original_encoding") == "base64":
            try:
                text = base64.b64decode(original).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return sid in original
        try:
            return _mentions(json.loads(text), sid, ids)
        except json.JSONDecodeError:
            return sid in text or any(i in text for i in ids)
    return False


def _spool_messages(path: Path) -> list[tuple[str, Any]]:
    """(line, decoded event or None) of each line of a spool file."""
    out: list[tuple[str, Any]] = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                payload = json.loads(base64.b64decode(json.loads(line)["value"]))
            except (ValueError, KeyError, TypeError):
                payload = None
            out.append((line, payload))
    return out


def _datasets_with(settings: Settings, feedback_ids: set[str]) -> list[str]:
    """Content hashes of the retraining data sets holding one of these feedback events."""
    root = settings.home / "datasets"
    if not feedback_ids or not root.exists():
        return []
    wanted = {f"fb-{i}" for i in feedback_ids}
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for split in ("train.jsonl", "val.jsonl"):
            path = folder / split
            if path.exists() and any(json.loads(line).get("id") in wanted for line in path.open(encoding="utf-8")):
                found.append(folder.name)
                break
    return found


def _trained_on(engine: Engine, hashes: list[str]) -> list[str]:
    if not hashes:
        return []
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(t.model_versions.c.version).where(t.model_versions.c.dataset_hash.in_(hashes))
            ).scalars()
        )


def _audit(engine: Engine, action: str, sid: str | None, requested_by: str, details: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(t.privacy_requests).values(
                ts=utcnow(), action=action, subject_id=sid, requested_by=requested_by, details=details
            )
        )


# -- export -------------------------------------------------------------------------------------
def export_subject(engine: Engine, settings: Settings, sid: str, *, requested_by: str = "cli") -> dict[str, Any]:
    """Everything held about subject ``sid``: rows of every table, spooled events, data sets.

    Writes an ``export`` row to ``privacy_requests``. Embedding vectors are base64 float32.
    """
    with engine.connect() as conn:
        ids = _event_ids(conn, sid)
        events = [
            _jsonable(r) for r in conn.execute(select(t.inference_events).where(t.inference_events.c.subject_id == sid))
        ]
        fb = [_jsonable(r) for r in conn.execute(select(t.feedback).where(_feedback_filter(sid, ids)))]
        scored = ids + [f["event_id"] for f in fb]
        metrics, embeddings = [], []
        for chunk in _chunks(scored):
            metrics += [_jsonable(r) for r in conn.execute(select(t.metrics).where(t.metrics.c.event_id.in_(chunk)))]
            embeddings += [
                _jsonable(r) for r in conn.execute(select(t.embeddings).where(t.embeddings.c.event_id.in_(chunk)))
            ]
        audit = [
            _jsonable(r) for r in conn.execute(select(t.privacy_requests).where(t.privacy_requests.c.subject_id == sid))
        ]
    id_set = set(scored)
    spooled = [
        {"file": path.name, "event": payload}
        for path in _spool_files(settings)
        for _, payload in _spool_messages(path)
        if _mentions(payload, sid, id_set)
    ]
    datasets = _datasets_with(settings, {f["event_id"] for f in fb})
    out = {
        "subject_id": sid,
        "exported_at": utcnow().isoformat(),
        "inference_events": events,
        "metrics": metrics,
        "embeddings": embeddings,
        "feedback": fb,
        "spool": spooled,
        "datasets": datasets,
        "model_versions": _trained_on(engine, datasets),
        "privacy_requests": audit,
    }
    counts = {k: len(v) for k, v in out.items() if isinstance(v, list)}
    _audit(engine, "export", sid, requested_by, {"counts": counts})
    log.info("privacy export", extra={"subject_id": sid, "counts": counts})
    return out


# -- erasure ------------------------------------------------------------------------------------
@dataclass
class ErasureReport:
    """What one erasure removed, and what it could not."""

    subject_id: str
    deleted: dict[str, int] = field(default_factory=dict)
    spool: int = 0
    cache: str = "not attempted"
    datasets: list[str] = field(default_factory=list)
    model_versions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the audit row's details)."""
        return {
            "deleted": self.deleted,
            "spool": self.spool,
            "cache": self.cache,
            "datasets": self.datasets,
            "model_versions": self.model_versions,
            "seconds": round(self.seconds, 3),
        }


def _erase_spool(settings: Settings, sid: str, ids: set[str]) -> int:
    """Blank the subject's messages in every spool file, in place; returns how many went.

    Each such line is overwritten with spaces of the same byte length: the spool's read offset
    (segment, byte) stays valid, a producer appending at the same moment loses nothing, and the
    spool's readers skip blank lines. A line is matched whole, so a torn tail is left alone.
    """
    removed = 0
    for path in _spool_files(settings):
        with path.open("rb") as fh:
            data = fh.read()
        spans: list[tuple[int, int]] = []
        pos = 0
        for raw in data.splitlines(keepends=True):
            start, pos = pos, pos + len(raw)
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            try:
                payload = json.loads(base64.b64decode(json.loads(raw)["value"]))
            except (ValueError, KeyError, TypeError):
                continue
            if _mentions(payload, sid, ids):
                spans.append((start, pos))
        if not spans:
            continue
        with path.open("r+b") as fh:
            for start, end in spans:
                fh.seek(start)
                fh.write(b" " * (end - start - 1) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        removed += len(spans)
    return removed


def clear_inference_cache(settings: Settings, url: str | None = None, timeout: float = 5.0) -> str:
    """Ask the inference service to clear its response cache; returns what happened, in words."""
    import httpx

    if not settings.admin_token:
        return "skipped: ATALAIA_ADMIN_TOKEN is empty (cached answers expire after ATALAIA_CACHE_TTL_S)"
    base = url or f"http://{settings.inference_host}:{settings.inference_port}"
    try:
        resp = httpx.post(
            f"{base}/admin/cache/clear",
            headers={"Authorization": f"Bearer {settings.admin_token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        return f"failed: {type(exc).__name__} (cached answers expire after ATALAIA_CACHE_TTL_S)"
    if resp.status_code != 200:
        return f"failed: HTTP {resp.status_code}"
    return f"cleared {resp.json().get('cleared', 0)} entries"


def erase_subject(
    engine: Engine,
    settings: Settings,
    sid: str,
    *,
    requested_by: str = "cli",
    clear_cache: bool = True,
    inference_url: str | None = None,
) -> ErasureReport:
    """Delete everything held about subject ``sid`` in one transaction; audit it; report it."""
    started = time.perf_counter()
    report = ErasureReport(subject_id=sid)
    with engine.begin() as conn:
        ids = _event_ids(conn, sid)
        fb_ids: list[str] = list(
            conn.execute(select(t.feedback.c.event_id).where(_feedback_filter(sid, ids))).scalars()
        )
        report.datasets = _datasets_with(settings, set(fb_ids))
        scored = ids + fb_ids
        counts = dict.fromkeys(("metrics", "embeddings", "feedback", "inference_events"), 0)
        for chunk in _chunks(scored):
            counts["metrics"] += conn.execute(delete(t.metrics).where(t.metrics.c.event_id.in_(chunk))).rowcount
            counts["embeddings"] += conn.execute(
                delete(t.embeddings).where(t.embeddings.c.event_id.in_(chunk))
            ).rowcount
        for chunk in _chunks(fb_ids):
            counts["feedback"] += conn.execute(delete(t.feedback).where(t.feedback.c.event_id.in_(chunk))).rowcount
            # The review decisions of erased corrections (a reviewer's reason may quote them).
            conn.execute(delete(t.feedback_reviews).where(t.feedback_reviews.c.feedback_event_id.in_(chunk)))
        counts["inference_events"] = conn.execute(
            delete(t.inference_events).where(t.inference_events.c.subject_id == sid)
        ).rowcount
        report.deleted = counts
    report.spool = _erase_spool(settings, sid, set(scored))
    if clear_cache:
        report.cache = clear_inference_cache(settings, inference_url)
    report.model_versions = _trained_on(engine, report.datasets)
    report.seconds = time.perf_counter() - started
    _audit(engine, "erase", sid, requested_by, report.as_dict())
    log.info("privacy erasure", extra={"subject_id": sid, **report.as_dict()})
    return report


# -- retention ----------------------------------------------------------------------------------
def retention_plan(settings: Settings) -> dict[str, int]:
    """Days kept per table (tables absent are kept for ever).

    >>> s = Settings(home="/tmp/atalaia-doc", retention_days=30, retention_table_days={"metrics": 7})
    >>> retention_plan(s)
    {'inference_events': 30, 'metrics': 7, 'embeddings': 30, 'feedback': 30}
    >>> retention_plan(Settings(home="/tmp/atalaia-doc", retention_days=0))
    {}
    """
    plan = {name: settings.retention_days for name in PERSONAL_TABLES if settings.retention_days > 0}
    for name, days in settings.retention_table_days.items():
        if days > 0:
            plan[name] = days
        else:
            plan.pop(name, None)
    return {name: plan[name] for name in RETENTION_TABLES if name in plan}


def apply_retention(engine: Engine, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """Delete rows older than each table's retention; returns rows deleted per table (logged).

    On PostgreSQL the time-partitioned tables (``inference_events``, ``metrics``) first lose every
    weekly partition wholly older than the cutoff (``DROP TABLE``: no row-by-row delete, no bloat);
    the ``DELETE`` then only meets the rows of the partition the cutoff falls in. The job also
    creates the partitions of the weeks ahead.
    """
    from sqlalchemy import func, select

    from atalaia.storage.partitions import drop_partitions_before, ensure_partitions, partitions

    now = now or datetime.now(UTC)
    deleted: dict[str, int] = {}
    with engine.begin() as conn:
        ensure_partitions(conn, now=datetime.now(UTC))
    for name, days in retention_plan(settings).items():
        table = t.metadata.tables[name]
        column = table.c[RETENTION_TABLES[name]]
        cutoff = now - timedelta(days=days)
        with engine.begin() as conn:
            dropped = 0
            if column.name == "ts":
                for part, (_, end) in partitions(conn, name).items():
                    if end <= cutoff:
                        dropped += int(conn.execute(select(func.count()).select_from(sa_table(part))).scalar_one())
                drop_partitions_before(conn, name, cutoff)
            deleted[name] = dropped + conn.execute(delete(table).where(and_(column < cutoff))).rowcount
    log.info("retention applied", extra={"deleted": deleted, "plan": retention_plan(settings)})
    if deleted:
        _audit(engine, "retention", None, "retention", {"deleted": deleted, "days": retention_plan(settings)})
    return deleted


def retention_job() -> dict[str, int]:
    """The scheduler's cron job: :func:`apply_retention` with the process settings."""
    from atalaia.settings import get_settings
    from atalaia.storage.db import get_engine

    settings = get_settings()
    return apply_retention(get_engine(settings.database_url), settings)
