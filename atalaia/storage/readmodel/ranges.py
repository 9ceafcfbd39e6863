"""Time ranges and buckets of the read model: look-backs, epoch times, bucket widths."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select

from atalaia.durations import parse_time
from atalaia.storage import tables as t
from atalaia.storage.repository import as_utc

#: Window length the workers materialize (``consumers.worker.WINDOW_S``).
DEFAULT_WINDOW_S = 60
#: Most points per dashboard series; longer ranges are averaged into coarser buckets.
MAX_POINTS = 720
#: Longest range a dashboard request may ask for.
MAX_RANGE = timedelta(days=31)
#: The report's most points per series; its bucket width grows with the range to stay under it.
REPORT_MAX_BUCKETS = 120
#: Requests per bucket wanted on average (percentiles and rates of fewer are noise).
MIN_EVENTS_PER_BUCKET = 5
#: The report's bucket widths, in seconds.
BUCKET_STEPS = (5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def parse_since(value: str | None, now: datetime, default: timedelta = timedelta(hours=1)) -> datetime:
    """Start of the range: a look-back (``90s``, ``30m``, ``6h``, ``2d``, bare seconds) or a timestamp.

    The range is capped at :data:`MAX_RANGE`. A timestamp without an offset is UTC.

    >>> from datetime import UTC
    >>> now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    >>> parse_since("30m", now).isoformat()
    '2026-01-02T11:30:00+00:00'
    >>> parse_since("3600", now).isoformat()
    '2026-01-02T11:00:00+00:00'
    >>> parse_since("2026-01-02T10:15:00", now).isoformat()
    '2026-01-02T10:15:00+00:00'
    >>> parse_since(None, now).isoformat()
    '2026-01-02T11:00:00+00:00'
    >>> parse_since("soon", now)
    Traceback (most recent call last):
    ...
    ValueError: since must be a duration like 30m, 6h, 2d or an ISO 8601 time, got 'soon'
    """
    if value is None or not value.strip():
        start = now - default
    else:
        try:
            start = parse_time(value, now)
        except ValueError:
            raise ValueError(f"since must be a duration like 30m, 6h, 2d or an ISO 8601 time, got {value!r}") from None
    return max(start, now - MAX_RANGE)


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the epoch of a stored time (naive SQLite times are UTC).

    >>> epoch_ms(datetime(1970, 1, 1, 0, 0, 1))
    1000
    """
    return int(as_utc(ts).timestamp() * 1000)


def downsample(points: Sequence[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """Average time-sorted points into at most ``max_points`` equal time buckets.

    >>> downsample([(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)], 2)
    [(0, 2.0), (2, 6.0)]
    >>> downsample([(0, 1.0)], 10)
    [(0, 1.0)]
    """
    if len(points) <= max_points or max_points < 1:
        return list(points)
    first, last = points[0][0], points[-1][0]
    width = (last - first) / max_points or 1
    buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for ts, value in points:
        buckets[min(int((ts - first) / width), max_points - 1)].append((ts, value))
    out = []
    for _, members in sorted(buckets.items()):
        out.append((members[0][0], sum(v for _, v in members) / len(members)))
    return out


def bucket_seconds(
    span_s: float,
    minimum: int = 1,
    max_buckets: int = MAX_POINTS,
    steps: Sequence[int] | None = None,
    events: int | None = None,
) -> int:
    """The bucket width for a range of ``span_s`` seconds: at least ``minimum`` seconds, at most
    ``max_buckets`` buckets.

    Without ``steps`` the width is a whole number of ``minimum`` (the dashboard: whole windows);
    with ``steps`` it is the smallest of them that fits, or the last (the report: round widths).
    With ``events`` (requests in the range), buckets also hold :data:`MIN_EVENTS_PER_BUCKET`
    requests on average, so a sparse stream is not drawn as a saw-tooth of 1s and 2s.

    >>> bucket_seconds(3600, 60), bucket_seconds(7 * 86400, 60)
    (60, 840)
    >>> def report(span, minimum=5, events=None):
    ...     return bucket_seconds(span, minimum, 120, BUCKET_STEPS, events)
    >>> report(600), report(3600), report(86400), report(600, 60)
    (5, 30, 900, 60)
    >>> report(1800, events=180), report(180, events=360)
    (60, 5)
    """
    if events:
        minimum = max(minimum, math.ceil(span_s * MIN_EVENTS_PER_BUCKET / events))
    if steps is None:
        return minimum * max(1, math.ceil(span_s / minimum / max_buckets))
    for step in steps:
        if step >= minimum and span_s / step <= max_buckets:
            return step
    return steps[-1]


def bucket_start(ts: datetime, start: datetime, width: int) -> datetime:
    """Start of the ``width``-second bucket holding ``ts``, buckets counted from ``start``."""
    offset = (ts - start).total_seconds()
    return start + timedelta(seconds=offset - offset % width)


def data_range(conn: Connection, since: datetime, until: datetime) -> tuple[datetime, datetime] | None:
    """First and last metric, alert or activation time within ``[since, until]``; ``None`` if nothing."""
    found: list[datetime] = []
    for column in (t.metrics.c.ts, t.alerts.c.ts, t.model_versions.c.activated_at):
        row = conn.execute(select(func.min(column), func.max(column)).where(column >= since, column <= until)).first()
        if row is not None and row[0] is not None:
            found.extend((as_utc(row[0]), as_utc(row[1])))
    if not found:
        return None
    return min(found), max(found)
