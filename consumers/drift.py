"""Embedding drift per model version, over the embeddings stored in the database.

The embeddings table is the detector's memory: the reference is the first ``reference_size``
prompt embeddings of a model version, the window the latest ``window_size``. The calibrated
detector (reference, bandwidth, threshold) and the count at the last test are kept in
``drift_state``, so a restarted worker, or a second worker of the group, resumes the same test
sequence. Every worker sees the whole stream this way, not only its partitions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Connection, func, select

from atalaia.drift.mmd import MMDDriftDetector, mmd2
from atalaia.events import MetricEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import tables as t

log = logging.getLogger(__name__)

KIND = "prompt"
#: Bound on the tests of one run, so a backlog cannot stall a batch.
MAX_TESTS_PER_RUN = 20


@dataclass
class DriftTest:
    """The outcome of one drift test."""

    model_version: str
    score: float
    threshold: float
    drift: bool
    n_tests: int
    last_event_id: str
    last_ts: datetime
    service: str


def _vectors(rows: list[bytes], dim: int) -> np.ndarray:
    return np.frombuffer(b"".join(rows), dtype=np.float32).reshape(len(rows), dim).astype(np.float64)


class DriftRunner:
    """Runs due drift tests after each stored batch (call :meth:`run` inside the batch's transaction)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._detectors: dict[str, MMDDriftDetector] = {}

    def _detector(self, conn: Connection, model_version: str, count: int) -> tuple[MMDDriftDetector, int, int] | None:
        row = (
            conn.execute(
                select(t.drift_state).where(
                    t.drift_state.c.model_version == model_version, t.drift_state.c.kind == KIND
                )
            )
            .mappings()
            .first()
        )
        if row is not None:
            det = self._detectors.get(model_version)
            if det is None:
                det = self._detectors[model_version] = MMDDriftDetector.from_bytes(row["state"])
            return det, int(row["last_count"]), int(row["n_tests"])
        size = self.settings.drift_reference_size
        if count < size:
            return None
        rows = conn.execute(
            select(t.embeddings.c.vector, t.embeddings.c.dim)
            .where(t.embeddings.c.model_version == model_version, t.embeddings.c.kind == KIND)
            .order_by(t.embeddings.c.ts, t.embeddings.c.event_id)
            .limit(size)
        ).all()
        reference = _vectors([r.vector for r in rows], rows[0].dim)
        det = MMDDriftDetector(
            window_size=min(self.settings.drift_window_size, size - 2),
            stride=self.settings.drift_stride,
            target_arl=self.settings.drift_target_arl,
            reference_confidence=self.settings.drift_reference_confidence,
            reference=reference,
            seed=0,
        )
        self._detectors[model_version] = det
        self._save(conn, model_version, det, last_count=size, n_tests=0, insert=True)
        log.info("drift reference calibrated", extra={"model_version": model_version, "threshold": det.threshold})
        return det, size, 0

    def _save(
        self,
        conn: Connection,
        model_version: str,
        det: MMDDriftDetector,
        last_count: int,
        n_tests: int,
        insert: bool = False,
    ) -> None:
        values = {
            "state": det.to_bytes(),
            "n_tests": n_tests,
            "last_count": last_count,
            "threshold": float(det.threshold),
            "updated_at": utcnow(),
        }
        if insert:
            from atalaia.storage.repository import insert_ignoring_duplicates

            insert_ignoring_duplicates(conn, t.drift_state, [{"model_version": model_version, "kind": KIND, **values}])
        else:
            conn.execute(
                t.drift_state.update()
                .where(t.drift_state.c.model_version == model_version, t.drift_state.c.kind == KIND)
                .values(**values)
            )

    def run(self, conn: Connection, model_versions: set[str]) -> list[DriftTest]:
        """Test every model version whose stream grew by ``stride`` since its last test."""
        done = []
        for version in sorted(model_versions):
            count = int(
                conn.execute(
                    select(func.count())
                    .select_from(t.embeddings)
                    .where(t.embeddings.c.model_version == version, t.embeddings.c.kind == KIND)
                ).scalar_one()
            )
            found = self._detector(conn, version, count)
            if found is None:
                continue
            det, last_count, n_tests = found
            window, stride = det.window_size, self.settings.drift_stride
            first_end = max(last_count + stride, det.reference_size + window)
            if count < first_end:
                continue
            # One test per `stride` new embeddings, even when a batch brings many strides at once.
            ends = list(range(first_end, count + 1, stride))[-MAX_TESTS_PER_RUN:]
            offset = ends[0] - window
            rows = conn.execute(
                select(t.embeddings.c.vector, t.embeddings.c.dim, t.embeddings.c.event_id, t.embeddings.c.ts)
                .where(t.embeddings.c.model_version == version, t.embeddings.c.kind == KIND)
                .order_by(t.embeddings.c.ts, t.embeddings.c.event_id)
                .offset(offset)
                .limit(ends[-1] - offset)
            ).all()
            vectors = _vectors([r.vector for r in rows], rows[0].dim)
            reference = det.reference
            assert reference is not None
            for end in ends:
                lo, hi = end - window - offset, end - offset
                score = mmd2(vectors[lo:hi], reference, bandwidth=det.bandwidth)
                n_tests += 1
                last = rows[hi - 1]
                service = (
                    conn.execute(
                        select(t.inference_events.c.service).where(t.inference_events.c.event_id == last.event_id)
                    ).scalar()
                    or ""
                )
                done.append(
                    DriftTest(
                        version,
                        float(score),
                        float(det.threshold),
                        bool(score > det.threshold),
                        n_tests,
                        last.event_id,
                        last.ts,
                        service,
                    )
                )
            self._save(conn, version, det, last_count=ends[-1], n_tests=n_tests)
        return done


def drift_metrics(test: DriftTest, sample_fraction: float = 1.0) -> list[MetricEvent]:
    """The metric rows of a drift test, keyed on the newest event of the tested window.

    ``sample_fraction`` is the share of prompts embedded when the test ran (the embedding
    group's time-stratified sample under the scoring budget)."""
    import uuid

    from atalaia.storage.repository import as_utc

    source = uuid.UUID(test.last_event_id)
    labels = {"threshold": f"{test.threshold:.6g}", "test": str(test.n_tests)}
    out = []
    for name, value in (
        ("embedding_drift", test.score),
        ("embedding_drift_flag", 1.0 if test.drift else 0.0),
        ("embedding_drift_threshold", test.threshold),
    ):
        out.append(
            MetricEvent(
                event_id=MetricEvent.id_for(source, name),
                source_event_id=source,
                source_ts=as_utc(test.last_ts),
                service=test.service,
                model_version=test.model_version,
                name=name,
                value=value,
                labels=labels,
                sample_fraction=sample_fraction,
            )
        )
    return out
