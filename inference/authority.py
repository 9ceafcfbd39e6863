"""Which model events inference obeys: the authority checks on ``deploy``/``rollback``/``canary`` events.

Every event read from the models topic passes :meth:`ModelEventAuthority.check` before the model
manager sees it. A refused event raises :class:`~atalaia.kafka.clients.Refused`: the follow loop
dead-letters it with the reason, and the refusals are counted by reason.

Checks, in order:

1. with ``ATALAIA_MODEL_EVENTS_SECRET`` set: a signature (unsigned events are refused), valid
   (forged or altered events are refused), a ``ts`` within ``ATALAIA_MODEL_EVENTS_MAX_AGE_S`` of
   this clock, and an ``event_id`` not applied before (replays are refused);
2. the version is in the model registry (``model_versions``); without a reachable registry no
   event is obeyed;
3. a deploy's (or canary's) ``artefact_path`` names a folder under ``ATALAIA_MODELS_DIR`` once resolved: no
   ``..`` component, no symbolic link leading out of it, and the registry's folder for the
   version when the registry records one.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from atalaia.events import ModelEvent, utcnow
from atalaia.kafka.clients import Refused
from atalaia.model_signing import verify
from atalaia.settings import Settings

log = logging.getLogger(__name__)


class ModelEventAuthority:
    """Decides whether a model event may be applied; thread-safe."""

    def __init__(self, settings: Settings, engine: Any = None) -> None:
        self.settings = settings
        self._engine = engine
        self._secret = settings.model_events_secret.get_secret_value()
        self._window = timedelta(seconds=settings.model_events_max_age_s)
        self._seen: dict[str, Any] = {}  # event_id -> ts of applied signed events, within the window
        self._lock = threading.Lock()
        #: Refused events by reason (the part of the reason before any detail).
        self.refused: Counter[str] = Counter()
        #: Called with that reason after each refusal (the service's Prometheus counter).
        self.on_refused: list[Callable[[str], None]] = []

    def check(self, event: ModelEvent) -> None:
        """Raise :class:`Refused` (and count it) unless ``event`` may be applied."""
        try:
            self._check(event)
        except Refused as exc:
            kind = exc.reason.split(":")[0]
            with self._lock:
                self.refused[kind] += 1
            for hook in self.on_refused:
                hook(kind)
            log.error(
                "model event refused",
                extra={
                    "type": event.type,
                    "model_version": event.model_version,
                    "artefact_path": event.artefact_path,
                    "reason": exc.reason,
                    "refused_total": sum(self.refused.values()),
                },
            )
            raise

    def _check(self, event: ModelEvent) -> None:
        if self._secret:
            self._check_signature(event)
        row = self._registry_row(event.model_version)
        if event.type in ("deploy", "canary"):  # both load a folder
            self._check_folder(event, row)
        if self._secret:
            with self._lock:
                self._seen[str(event.event_id)] = event.ts

    def _check_signature(self, event: ModelEvent) -> None:
        if not event.signature:
            raise Refused("unsigned model event: ATALAIA_MODEL_EVENTS_SECRET is set", "signature")
        if not verify(event, self._secret):
            raise Refused("bad signature: the event was not signed with ATALAIA_MODEL_EVENTS_SECRET", "signature")
        now = utcnow()
        if abs(now - event.ts) > self._window:
            raise Refused(
                f"stale model event: ts {event.ts.isoformat()} is outside ATALAIA_MODEL_EVENTS_MAX_AGE_S="
                f"{self._window.total_seconds():.0f}",
                "ts",
            )
        with self._lock:
            for key, ts in list(self._seen.items()):
                if now - ts > self._window:
                    del self._seen[key]
            if str(event.event_id) in self._seen:
                raise Refused(f"replayed model event: {event.event_id} was applied already", "event_id")

    def _registry_row(self, version: str) -> dict[str, Any]:
        from atalaia.storage import tables as t

        try:
            engine = self._engine
            if engine is None:
                from atalaia.storage.db import get_engine, has_schema

                if not has_schema(self.settings.database_url):
                    raise RuntimeError("the database has no tables (run `atalaia db upgrade`)")
                engine = self._engine = get_engine(self.settings.database_url)
            with engine.connect() as conn:
                row = conn.execute(select(t.model_versions).where(t.model_versions.c.version == version)).mappings()
                found = row.first()
        except Exception as exc:  # noqa: BLE001 - no registry, no authority: refuse
            raise Refused(f"model registry unavailable: {type(exc).__name__}: {exc}", "model_version") from None
        if found is None:
            raise Refused(f"unregistered version: {version!r} is not in the model registry", "model_version")
        return dict(found)

    def _check_folder(self, event: ModelEvent, row: dict[str, Any]) -> None:
        raw = event.artefact_path
        if not raw:
            raise Refused("no artefact_path: a deploy names the version's folder", "artefact_path")
        if ".." in Path(raw).parts:
            raise Refused(f"path escape: {raw!r} contains '..'", "artefact_path")
        assert self.settings.models_dir is not None
        root = self.settings.models_dir.resolve()
        base = Path(raw) if Path(raw).is_absolute() else root / raw
        resolved = base.resolve()  # follows symbolic links: a link out of the folder is caught below
        if not resolved.is_relative_to(root):
            raise Refused(f"path escape: {raw!r} resolves to {resolved}, outside ATALAIA_MODELS_DIR", "artefact_path")
        registered = row.get("artefact_path")
        if registered and Path(registered).resolve() != resolved:
            raise Refused(
                f"folder mismatch: {raw!r} is not the registry's folder of {event.model_version!r}", "artefact_path"
            )


def count_refusals(authority: ModelEventAuthority, metrics: Any) -> None:
    """Count ``authority``'s refusals in the service's Prometheus counter
    ``atalaia_model_events_refused_total{reason}`` (:class:`inference.telemetry.ServiceMetrics`)."""
    counter = metrics.model_events_refused
    authority.on_refused.append(lambda reason: counter.labels(reason).inc())
