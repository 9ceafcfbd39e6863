"""Canary check after a deploy: live metrics of the new version vs its parent's.

Two ways, by ``ATALAIA_CANARY_SHARE``:

- **Traffic split** (share > 0, the default 0.1): the run publishes a ``canary`` model event;
  inference serves the candidate beside its parent to that share of callers
  (:mod:`inference.routing`, or in shadow with ``ATALAIA_CANARY_MODE=shadow``), and both are scored
  live in the same period. :func:`concurrent_compare` runs an anytime-valid sequential test
  (:mod:`retrain.sequential`) on the difference of each metric's mean, candidate minus parent,
  over the same period: ``promote`` once every metric is not worse than its margin with
  confidence, ``rollback`` as soon as one is worse than its margin with confidence, and
  ``timeout`` (the parent is kept: fail closed) when the split reaches its horizon without a
  verdict. The horizon counts samples, so that low traffic takes longer instead of failing: it is
  reached once both arms have ``ATALAIA_CANARY_MAX_SAMPLES`` samples of every metric still
  undecided, or at the latest after ``ATALAIA_CANARY_MAX_S`` (72 h). The confidence sequence
  holds at any stopping time, so ending on a sample count (or on the clock) does not weaken the
  verdicts reached before. The margins: ``canary_max_drop`` (relative, of the parent's mean) for
  ROUGE-L and reference similarity, ``canary_max_toxicity_increase`` (absolute) for toxicity,
  ``canary_max_latency_ratio - 1`` (relative) for the speed metrics.
- **Deploy at once** (share 0): the new version serves everything, and :func:`compare` judges
  its live metrics against the parent's before the deploy, as below, for
  ``ATALAIA_CANARY_WINDOW_S``.

Speed is judged per phase, from the inference events (cache hits excluded), so that answer
length does not decide: time to first token per prompt token (the prefill, plus retrieval and
queueing) and time per generated token after the first, ``(latency - ttft) / (completion - 1)``.
Each regresses when the live median exceeds ``canary_max_latency_ratio`` × the parent's median.
Events without a time to first token (schema version 1, before the service measured it) leave
these empty, and the canary falls back to the latency p95 of the ``metrics`` table.

The comparison (:func:`compare`) is pure; :func:`check_canary` reads the ``metrics`` table and
:func:`settle_canary` acts on the verdict: a regression publishes ``rollback`` on the models topic
and marks the version ``rolled_back`` in the registry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, select

from atalaia.events import ModelEvent, utcnow
from atalaia.metrics.stats import percentile
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine
from atalaia.storage.repository import as_utc
from retrain import registry
from retrain.publish import publish_model_event
from retrain.sequential import confidence_interval, decide, mean_and_variance

log = logging.getLogger(__name__)

#: Metrics the canary compares, and which direction is better.
HIGHER_IS_BETTER = ("rougeL", "similarity_reference")
LOWER_IS_BETTER_ABS = ("toxicity_response",)
LATENCY = "latency_ms"
CANARY_METRICS = (*HIGHER_IS_BETTER, *LOWER_IS_BETTER_ABS, LATENCY)
#: Speed per phase, derived from inference events (see :func:`speed_samples`); lower is better.
TTFT_PER_PROMPT_TOKEN = "ttft_ms_per_prompt_token"
MS_PER_OUTPUT_TOKEN = "ms_per_output_token"
SPEED_METRICS = (TTFT_PER_PROMPT_TOKEN, MS_PER_OUTPUT_TOKEN)
_SPEED_LABELS = {
    TTFT_PER_PROMPT_TOKEN: "time to first token per prompt token",
    MS_PER_OUTPUT_TOKEN: "time per generated token",
}


@dataclass
class CanaryVerdict:
    """``rollback`` (regression), ``pass`` (no regression, or the window ran out) or ``wait``; with a
    traffic split also ``promote`` (not worse, with confidence) and ``timeout`` (no verdict by the
    horizon, the sample budget or the time limit: the parent is kept).
    """

    decision: Literal["pass", "rollback", "wait", "promote", "timeout"]
    reasons: list[str] = field(default_factory=list)
    live: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    #: Traffic split only: per metric, the confidence interval on candidate - parent, its margin,
    #: the samples per arm and the metric's outcome (``ok``, ``worse``, ``undecided``).
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Traffic split only: samples per arm (``candidate``, ``parent``) of each metric the parent has,
    #: judged yet or not: the progress towards the sample budget.
    samples: dict[str, dict[str, int]] = field(default_factory=dict)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare(
    live: dict[str, list[float]],
    baseline: dict[str, list[float]],
    *,
    min_events: int,
    max_drop: float,
    max_latency_ratio: float,
    max_toxicity_increase: float,
    window_over: bool = False,
    alpha: float = 0.05,
) -> CanaryVerdict:
    """Decide from live and baseline samples per metric.

    A quality metric regresses when its live mean falls more than ``max_drop`` (relative) below
    the baseline mean; toxicity when its mean rises more than ``max_toxicity_increase``
    (absolute); either only when the samples also show the live mean worse than the baseline's
    with confidence (the confidence sequence of :func:`concurrent_compare`, level ``alpha`` over
    the metrics): eight noisy samples a side that happen to differ by 12 % are no regression,
    and rolling back on them would undo a better model by chance. A speed metric
    (``ttft_ms_per_prompt_token``, ``ms_per_output_token``) regresses when its live median
    exceeds ``max_latency_ratio`` × the baseline median. Latency (p95 against
    ``max_latency_ratio`` × the baseline p95) is judged only when the baseline has neither speed
    metric (events from before the time to first token was measured).
    A metric is judged once both sides have ``min_events`` samples; until every available metric
    is judged the verdict is ``wait`` — or ``pass`` when ``window_over``.

    Examples
    --------
    >>> base = {"rougeL": [0.4] * 50, "latency_ms": [100.0] * 50}
    >>> compare({"rougeL": [0.2] * 50, "latency_ms": [100.0] * 50}, base, min_events=30,
    ...         max_drop=0.1, max_latency_ratio=1.5, max_toxicity_increase=0.05).decision
    'rollback'
    >>> compare({"rougeL": [0.41] * 50, "latency_ms": [110.0] * 50}, base, min_events=30,
    ...         max_drop=0.1, max_latency_ratio=1.5, max_toxicity_increase=0.05).decision
    'pass'
    >>> compare({"rougeL": [0.41] * 5}, base, min_events=30, max_drop=0.1,
    ...         max_latency_ratio=1.5, max_toxicity_increase=0.05).decision
    'wait'

    Eight noisy samples a side, 12 % apart: no evidence of a regression.

    >>> noisy = [0.45, 0.70, 0.38, 0.62, 0.55, 0.41, 0.66, 0.53]
    >>> compare({"similarity_reference": [v * 0.88 for v in noisy]}, {"similarity_reference": noisy},
    ...         min_events=8, max_drop=0.1, max_latency_ratio=1.5, max_toxicity_increase=0.05).decision
    'pass'

    Longer answers raise latency, not the time per token:

    >>> base = {"ms_per_output_token": [60.0] * 50, "latency_ms": [1000.0] * 50}
    >>> compare({"ms_per_output_token": [58.0] * 50, "latency_ms": [3000.0] * 50}, base, min_events=30,
    ...         max_drop=0.1, max_latency_ratio=1.5, max_toxicity_increase=0.05).decision
    'pass'
    """
    verdict = CanaryVerdict("pass")
    pending = []
    # Per-phase speed replaces latency whenever the baseline has it (latency mixes in answer length).
    by_speed = any(len(baseline.get(name, [])) >= min_events for name in SPEED_METRICS)
    for name in (*CANARY_METRICS, *SPEED_METRICS):
        if name == LATENCY and by_speed:
            continue
        live_v, base_v = live.get(name, []), baseline.get(name, [])
        if len(base_v) < min_events:
            continue  # no baseline for this metric: it cannot regress against nothing
        if len(live_v) < min_events:
            pending.append(name)
            continue
        if name in SPEED_METRICS:
            lv, bv = percentile(live_v, 50), percentile(base_v, 50)
            verdict.live[f"{name}_p50"], verdict.baseline[f"{name}_p50"] = lv, bv
            if bv > 0 and lv > max_latency_ratio * bv:
                verdict.reasons.append(
                    f"{_SPEED_LABELS[name]} median {lv:.2f} ms > {max_latency_ratio:g} x baseline {bv:.2f} ms"
                )
            continue
        if name == LATENCY:
            lv, bv = percentile(live_v, 95), percentile(base_v, 95)
            verdict.live[f"{name}_p95"], verdict.baseline[f"{name}_p95"] = lv, bv
            if bv > 0 and lv > max_latency_ratio * bv:
                verdict.reasons.append(f"latency p95 {lv:.0f} ms > {max_latency_ratio:g} x baseline {bv:.0f} ms")
            continue
        lv, bv = _mean(live_v), _mean(base_v)
        verdict.live[name], verdict.baseline[name] = lv, bv
        level = alpha / len(CANARY_METRICS)
        if (
            name in HIGHER_IS_BETTER
            and lv < bv * (1 - max_drop)
            and _confidently_worse(live_v, base_v, level, max_drop * abs(bv), higher_is_better=True)
        ):
            verdict.reasons.append(f"{name} mean {lv:.3f} fell more than {100 * max_drop:.0f}% below baseline {bv:.3f}")
        if (
            name in LOWER_IS_BETTER_ABS
            and lv > bv + max_toxicity_increase
            and _confidently_worse(live_v, base_v, level, max_toxicity_increase, higher_is_better=False)
        ):
            verdict.reasons.append(
                f"{name} mean {lv:.3f} rose more than {max_toxicity_increase:g} above baseline {bv:.3f}"
            )
    if verdict.reasons:
        verdict.decision = "rollback"
    elif pending and not window_over:
        verdict.decision = "wait"
        verdict.reasons.append(f"waiting for {min_events} live samples of {', '.join(pending)}")
    elif pending:
        verdict.reasons.append(f"canary window over with too little traffic for {', '.join(pending)}; kept")
    return verdict


def _samples(
    engine: Engine, version: str, *, after: Any = None, before: Any = None, limit: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with engine.connect() as conn:
        for name in CANARY_METRICS:
            query = select(t.metrics.c.value).where(
                t.metrics.c.model_version == version, t.metrics.c.name == name, t.metrics.c.value.is_not(None)
            )
            if after is not None:
                query = query.where(t.metrics.c.ts >= after).order_by(t.metrics.c.ts.asc())
            if before is not None:
                query = query.where(t.metrics.c.ts < before).order_by(t.metrics.c.ts.desc())
            out[name] = [float(r[0]) for r in conn.execute(query.limit(limit))]
    out.update(speed_samples(engine, version, after=after, before=before, limit=limit))
    return out


def speed_samples(
    engine: Engine, version: str, *, after: Any = None, before: Any = None, limit: int
) -> dict[str, list[float]]:
    """Per-request speed of ``version`` from its inference events (cache hits and events without ttft skipped).

    Returns
    -------
    dict
        ``ttft_ms_per_prompt_token``: time to first token over prompt tokens; ``ms_per_output_token``:
        ``(latency - ttft) / (completion_tokens - 1)``, for answers of at least two tokens (the first
        token's time is in the time to first token).
    """
    ev = t.inference_events
    query = select(ev.c.latency_ms, ev.c.time_to_first_token_ms, ev.c.prompt_tokens, ev.c.completion_tokens).where(
        ev.c.model_version == version, ev.c.cache_hit.is_(False), ev.c.time_to_first_token_ms.is_not(None)
    )
    if after is not None:
        query = query.where(ev.c.ts >= after).order_by(ev.c.ts.asc())
    if before is not None:
        query = query.where(ev.c.ts < before).order_by(ev.c.ts.desc())
    prefill: list[float] = []
    per_token: list[float] = []
    with engine.connect() as conn:
        for row in conn.execute(query.limit(limit)):
            latency, ttft, prompt, completion = float(row[0]), float(row[1]), int(row[2]), int(row[3])
            if prompt > 0:
                prefill.append(ttft / prompt)
            if completion >= 2:
                per_token.append(max(latency - ttft, 0.0) / (completion - 1))
    return {TTFT_PER_PROMPT_TOKEN: prefill, MS_PER_OUTPUT_TOKEN: per_token}


#: Metrics of the sequential test: (name, higher is better, margin kind). Latency is judged only
#: when neither speed metric has samples (events from before time to first token was measured).
SEQUENTIAL_METRICS: tuple[tuple[str, bool, str], ...] = (
    ("rougeL", True, "relative_drop"),
    ("similarity_reference", True, "relative_drop"),
    ("toxicity_response", False, "absolute"),
    (TTFT_PER_PROMPT_TOKEN, False, "ratio"),
    (MS_PER_OUTPUT_TOKEN, False, "ratio"),
    (LATENCY, False, "ratio"),
)
#: Floor on a metric's per-sample variance: a handful of identical values is not certainty.
_MIN_VARIANCE = 1e-6


def _confidently_worse(
    live: list[float], base: list[float], alpha: float, margin: float, *, higher_is_better: bool
) -> bool:
    """Whether ``live``'s mean is worse than ``base``'s with confidence ``1 - alpha`` (the interval
    of the difference excludes 0 on the worse side; constant samples that differ always are)."""
    spread = math.sqrt(max(mean_and_variance(live)[1], mean_and_variance(base)[1]))
    tau = max(margin, 0.25 * spread, 1e-6)
    interval = confidence_interval(live, base, alpha=alpha, tau=tau, min_variance=_MIN_VARIANCE)
    return interval.upper < 0 if higher_is_better else interval.lower > 0


def concurrent_compare(
    candidate: dict[str, list[float]],
    parent: dict[str, list[float]],
    *,
    min_events: int,
    alpha: float,
    max_drop: float,
    max_latency_ratio: float,
    max_toxicity_increase: float,
    window_over: bool = False,
    max_samples: int | None = None,
    window: str = "the canary window",
) -> CanaryVerdict:
    """Sequential verdict on samples of the candidate and its parent from the same period.

    Each metric with ``min_events`` samples on both arms gets a confidence-sequence interval on
    ``mean(candidate) - mean(parent)`` at level ``alpha / k`` (``k`` the metrics that can be
    judged: the error bound holds for all of them together, at every check). ``rollback`` when
    any metric is worse than its margin; ``promote`` when every metric with parent samples is
    not worse than its margin; otherwise ``wait``, or ``timeout`` (the parent is kept) at the
    horizon: once both arms have ``max_samples`` (at least ``min_events``) samples of every
    metric still undecided, or once ``window_over`` (``window`` names that limit in the reason).
    The reason of a timeout says which limit ended the canary and the samples of each arm.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> parent = {"rougeL": [rng.gauss(0.4, 0.1) for _ in range(2000)]}
    >>> worse = {"rougeL": [rng.gauss(0.2, 0.1) for _ in range(500)]}
    >>> same = {"rougeL": [rng.gauss(0.4, 0.1) for _ in range(500)]}
    >>> kw = dict(min_events=30, alpha=0.05, max_drop=0.1, max_latency_ratio=1.5, max_toxicity_increase=0.05)
    >>> concurrent_compare(worse, parent, **kw).decision
    'rollback'
    >>> concurrent_compare(same, parent, **kw).decision
    'promote'
    >>> concurrent_compare({"rougeL": same["rougeL"][:10]}, parent, **kw).decision
    'wait'
    >>> concurrent_compare({"rougeL": same["rougeL"][:10]}, parent, window_over=True, **kw).decision
    'timeout'

    A candidate within noise of the margin stays undecided; the sample budget ends it, and the
    reason gives each arm's samples:

    >>> close = {"rougeL": [rng.gauss(0.36, 0.1) for _ in range(200)]}
    >>> concurrent_compare(close, parent, **kw).decision
    'wait'
    >>> ended = concurrent_compare(close, parent, max_samples=200, **kw)
    >>> ended.decision, ended.samples
    ('timeout', {'rougeL': {'candidate': 200, 'parent': 2000}})
    >>> limit, counts = ended.reasons[0].split(" on ")
    >>> print(limit)
    no verdict at the sample budget of 200 per arm (ATALAIA_CANARY_MAX_SAMPLES)
    >>> print(counts)
    rougeL (candidate 200 / parent 2000 samples); the parent is kept
    """
    verdict = CanaryVerdict("wait")
    by_speed = any(len(parent.get(n, [])) >= min_events for n in SPEED_METRICS)
    metrics = [m for m in SEQUENTIAL_METRICS if not (m[0] == LATENCY and by_speed)]
    level = alpha / len(metrics)
    pending: list[str] = []
    worse: list[str] = []
    for name, higher, kind in metrics:
        cand_v, par_v = candidate.get(name, []), parent.get(name, [])
        if len(par_v) < max(min_events, 2):
            continue  # the parent has no such metric in this period: nothing to compare with
        verdict.samples[name] = {"candidate": len(cand_v), "parent": len(par_v)}
        verdict.baseline[name] = _mean(par_v)
        if cand_v:
            verdict.live[name] = _mean(cand_v)
        if len(cand_v) < max(min_events, 2):
            pending.append(name)
            continue
        base = verdict.baseline[name]
        if kind == "absolute":
            margin = max_toxicity_increase
        elif kind == "ratio":
            margin = (max_latency_ratio - 1) * abs(base)
        else:
            margin = max_drop * abs(base)
        # The mixture's scale: differences of the margin's size, or of a quarter of the metric's
        # spread when the margin is tiny next to it (a near-zero parent mean).
        spread = math.sqrt(max(mean_and_variance(cand_v)[1], mean_and_variance(par_v)[1]))
        tau = max(margin, 0.25 * spread, 1e-6)
        interval = confidence_interval(cand_v, par_v, alpha=level, tau=tau, min_variance=_MIN_VARIANCE)
        outcome = decide(interval, margin, higher_is_better=higher)
        verdict.tests[name] = {
            "difference": interval.difference,
            "lower": interval.lower,
            "upper": interval.upper,
            "margin": margin,
            "n_candidate": interval.n_a,
            "n_parent": interval.n_b,
            "alpha": level,
            "outcome": outcome,
        }
        if outcome == "worse":
            worse.append(
                f"{name}: candidate - parent = {interval.difference:+.4g} "
                f"(confidence [{interval.lower:+.4g}, {interval.upper:+.4g}]) is worse than the margin {margin:.4g}"
            )
        elif outcome == "undecided":
            pending.append(name)
    if worse:
        verdict.decision, verdict.reasons = "rollback", worse
    elif verdict.tests and not pending:
        verdict.decision = "promote"
        verdict.reasons = [f"not worse than the parent beyond the margins on {', '.join(verdict.tests)}"]
    elif (budget := _budget_reached(verdict.samples, pending, max_samples, min_events)) or window_over:
        verdict.decision = "timeout"
        counts = ", ".join(
            f"{n} (candidate {verdict.samples[n]['candidate']} / parent {verdict.samples[n]['parent']} samples)"
            for n in pending
        )
        if budget:
            limit = f"no verdict at the sample budget of {max_samples} per arm (ATALAIA_CANARY_MAX_SAMPLES)"
        else:
            limit = f"{window} ended without a verdict"
        verdict.reasons = [f"{limit} on {counts or 'any metric'}; the parent is kept"]
    else:
        verdict.reasons = [f"waiting for evidence on {', '.join(pending) if pending else 'any metric'}"]
    return verdict


def _budget_reached(
    samples: dict[str, dict[str, int]], pending: list[str], max_samples: int | None, min_events: int
) -> bool:
    """Whether both arms have the sample budget of every undecided metric (none undecided: no)."""
    if max_samples is None or not pending:
        return False
    budget = max(max_samples, min_events)
    return all(min(samples[n]["candidate"], samples[n]["parent"]) >= budget for n in pending)


def canary_state(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The running traffic split of a registry row (``metrics["canary"]`` with ``state: running``)."""
    state = ((row or {}).get("metrics") or {}).get("canary")
    return state if isinstance(state, dict) and state.get("state") == "running" else None


def check_split_canary(engine: Engine, settings: Settings, row: dict[str, Any]) -> CanaryVerdict:
    """The sequential verdict of a running traffic split: both versions' samples since it started."""
    state = canary_state(row)
    assert state is not None and row["parent"]
    started = as_utc(datetime.fromisoformat(state["started_at"]))
    # Both arms over the same period; the parent has (1 - share) / share times more samples. Twice
    # the budget, so that a metric some answers lack (time per token of one-token answers) still
    # reaches it.
    limit = max(settings.canary_baseline_events * 20, 2 * settings.canary_max_samples)
    candidate = _samples(engine, row["version"], after=started, limit=limit)
    parent = _samples(engine, row["parent"], after=started, limit=limit)
    over = (utcnow() - started).total_seconds() >= settings.canary_max_s
    return concurrent_compare(
        candidate,
        parent,
        min_events=settings.canary_min_events,
        alpha=settings.canary_alpha,
        max_drop=settings.canary_max_drop,
        max_latency_ratio=settings.canary_max_latency_ratio,
        max_toxicity_increase=settings.canary_max_toxicity_increase,
        window_over=over,
        max_samples=settings.canary_max_samples,
        window=f"the time limit of {settings.canary_max_s / 3600:g} h (ATALAIA_CANARY_MAX_S)",
    )


def horizon(settings: Settings, started_at: str) -> dict[str, Any]:
    """When a traffic split started at ``started_at`` (ISO 8601) ends without a verdict: the sample
    budget per arm and the time limit (shown by the dashboard and the report).

    Examples
    --------
    >>> horizon(Settings(canary_max_samples=400, canary_max_s=7200), "2026-01-01T00:00:00+00:00")
    {'max_samples': 400, 'max_s': 7200.0, 'ends_by': '2026-01-01T02:00:00+00:00'}
    """
    ends = as_utc(datetime.fromisoformat(started_at)) + timedelta(seconds=settings.canary_max_s)
    return {"max_samples": settings.canary_max_samples, "max_s": settings.canary_max_s, "ends_by": ends.isoformat()}


def start_canary(settings: Settings, engine: Engine, version: str, path: str, parent: str, reason: str) -> ModelEvent:
    """Publish a ``canary`` event for a registered candidate and record the split in the registry."""
    event = ModelEvent(
        type="canary",
        model_version=version,
        artefact_path=path,
        previous_version=parent,
        reason=reason,
        canary_share=settings.canary_share,
        canary_mode=settings.canary_mode,
    )
    publish_model_event(settings, event)
    started = utcnow().isoformat()
    registry.update_metrics(
        engine,
        version,
        {
            "canary": {
                "state": "running",
                "started_at": started,
                "share": settings.canary_share,
                "mode": settings.canary_mode,
                "parent": parent,
                "horizon": horizon(settings, started),
            }
        },
    )
    return event


def check_canary(engine: Engine, settings: Settings, version: str) -> CanaryVerdict:
    """A running traffic split: :func:`check_split_canary`. Otherwise compare ``version``'s live
    metrics since activation with its parent's before it."""
    row = registry.get_version(engine, version)
    if row is not None and row["parent"] and canary_state(row) is not None:
        return check_split_canary(engine, settings, row)
    if row is None or row["status"] != "active" or not row["parent"] or row["activated_at"] is None:
        return CanaryVerdict("pass", [f"{version} is not an active fine-tuned version; nothing to check"])
    activated = as_utc(row["activated_at"])
    live = _samples(engine, version, after=activated, limit=settings.canary_baseline_events)
    baseline = _samples(engine, row["parent"], before=activated, limit=settings.canary_baseline_events)
    over = (utcnow() - activated).total_seconds() >= settings.canary_window_s
    return compare(
        live,
        baseline,
        min_events=settings.canary_min_events,
        max_drop=settings.canary_max_drop,
        max_latency_ratio=settings.canary_max_latency_ratio,
        max_toxicity_increase=settings.canary_max_toxicity_increase,
        window_over=over,
        alpha=settings.canary_alpha,
    )


def settle_canary(settings: Settings, version: str, engine: Engine | None = None) -> CanaryVerdict:
    """Check once and act: roll back on regression, record a pass; ``wait`` does nothing."""
    engine = engine or get_engine(settings.database_url)
    verdict = check_canary(engine, settings, version)
    row = registry.get_version(engine, version)
    split = canary_state(row)
    summary: dict[str, Any] = {
        "decision": verdict.decision,
        "reasons": verdict.reasons,
        "live": verdict.live,
        "baseline": verdict.baseline,
    }
    if split is not None:
        # The horizon as this check applied it (settings are read at every check).
        summary.update(
            state=split,
            tests=verdict.tests,
            samples=verdict.samples,
            horizon=horizon(settings, split["started_at"]),
            checked_at=utcnow().isoformat(),
        )
        if verdict.decision == "wait":
            registry.update_metrics(engine, version, {"canary_progress": summary})
            return verdict
        return _settle_split(settings, engine, row or {}, verdict, summary)
    if verdict.decision == "wait":
        return verdict
    if verdict.decision == "rollback" and row is not None and row["parent"]:
        reason = "canary regression: " + "; ".join(verdict.reasons)
        publish_model_event(
            settings, ModelEvent(type="rollback", model_version=row["parent"], previous_version=version, reason=reason)
        )
        registry.roll_back(engine, version, row["parent"], reason)
        log.warning(
            "canary rolled back a version", extra={"version": version, "to": row["parent"], "reasons": verdict.reasons}
        )
    elif verdict.decision == "pass":
        log.info("canary passed", extra={"version": version, "reasons": verdict.reasons})
    registry.update_metrics(engine, version, {"canary": summary})
    return verdict


def _settle_split(
    settings: Settings, engine: Engine, row: dict[str, Any], verdict: CanaryVerdict, summary: dict[str, Any]
) -> CanaryVerdict:
    """End a traffic split: promote (``deploy`` of the loaded candidate) or keep the parent."""
    version, parent = str(row["version"]), str(row["parent"])
    summary["state"] = {**summary["state"], "state": "ended", "ended_at": utcnow().isoformat()}
    if verdict.decision == "promote":
        publish_model_event(
            settings,
            ModelEvent(
                type="deploy",
                model_version=version,
                artefact_path=row.get("artefact_path"),
                previous_version=parent,
                reason="canary promoted: " + "; ".join(verdict.reasons),
            ),
        )
        registry.activate(engine, version)
        log.warning("canary promoted a version", extra={"version": version, "parent": parent})
    else:  # rollback or timeout: the parent keeps serving everything (fail closed)
        reason = ("canary regression: " if verdict.decision == "rollback" else "canary timeout: ") + "; ".join(
            verdict.reasons
        )
        publish_model_event(
            settings, ModelEvent(type="rollback", model_version=parent, previous_version=version, reason=reason)
        )
        registry.roll_back(engine, version, parent, reason)
        log.warning(
            "canary kept the parent",
            extra={"version": version, "parent": parent, "decision": verdict.decision, "reasons": verdict.reasons},
        )
    registry.update_metrics(engine, version, {"canary": summary})
    return verdict
