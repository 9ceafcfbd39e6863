"""One retraining run, start to finish: dataset → LoRA → merge + quantize → gate → register → deploy.

Every step is recorded in ``retrain_runs`` as it happens. The run holds the database lock
(:mod:`retrain.lock`) from start to finish; the first thing a run does once it holds the lock is to
close runs a crashed process left open and delete half-written model folders, so a crash at any
step leaves no stuck lock and no half-registered version, and the next run starts clean.

The machine-learning steps live in :class:`Steps` so that tests can swap them for fakes; the
default implementation calls :mod:`retrain.dataset`, :mod:`retrain.train`,
:mod:`retrain.quantize` and :mod:`retrain.evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from atalaia.events import ModelEvent, utcnow
from atalaia.models.speed import FLOAT32, slowdown_reasons
from atalaia.settings import Settings
from atalaia.storage.db import get_engine
from atalaia.storage.repository import as_utc
from retrain import registry
from retrain.lock import DbLock, LockHeld
from retrain.publish import publish_model_event
from retrain.runs import RunRecorder, last_run, mark_crashed_runs

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """How a run ended: ``deployed``, ``rejected``, ``skipped`` or ``failed``."""

    run_id: str
    status: str
    reason: str = ""
    candidate_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Steps(Protocol):
    """The machine-learning steps of a run (real ones in :class:`ModelSteps`)."""

    def count_new_data(self, engine: Engine, settings: Settings, since: Any) -> int:
        """Feedback rows with corrected answers since ``since``."""
        ...

    def dataset(self, engine: Engine, settings: Settings, out_root: Path) -> Any:
        """Build the versioned dataset; the result has ``content_hash`` and ``path``."""
        ...

    def train(self, base_dir: Path, dataset: Any, out_dir: Path, settings: Settings) -> Any:
        """LoRA fine-tuning + merge; the result has ``merged_dir``."""
        ...

    def quantize(self, merged_dir: Path, out_dir: Path, settings: Settings) -> Any:
        """Quantize the merged model into ``out_dir``; the result has ``method`` and ``path``."""
        ...

    def evaluate(self, model_dir: Path, settings: Settings) -> dict[str, float]:
        """Holdout scores of a model folder (the gate's inputs)."""
        ...

    def reference_perplexity(self, model_dir: Path, settings: Settings) -> float:
        """Perplexity of the holdout's reference answers under a model (the quantization check)."""
        ...

    def gate(self, candidate: dict[str, float], active: dict[str, float], settings: Settings) -> tuple[bool, list[str]]:
        """Promote or not, with the reasons."""
        ...

    def speed(self, candidate_dir: Path, active_dir: Path, settings: Settings) -> dict[str, Any]:
        """Probe both models side by side on the served workload (:func:`atalaia.models.speed.probe_folders`
        with names ``candidate`` and ``active``); the result has ``ratios["candidate"]``."""
        ...


def _plain(value: Any) -> Any:
    """JSON-safe copy of step results (dataclasses, paths)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.loads(json.dumps(value, default=str))


def new_version_name(settings: Settings, parent: str, run_id: str) -> str:
    """``<family>@ft-<UTC timestamp>-<run>``, e.g. ``smollm2-135m-instruct@ft-20261129T051502-3f2a9c``."""
    family = parent.split("@", 1)[0] or settings.generator_model
    return f"{family}@ft-{utcnow().strftime('%Y%m%dT%H%M%S')}-{run_id[:6]}"


def eval_cache_key(settings: Settings) -> str:
    """The registry key of holdout scores: ``holdout:<limit>:<rag|norag>:<digest>``.

    The digest covers the holdout file's bytes and the generation budget, so that scores cached
    under another holdout (``ATALAIA_QA_HOLDOUT_FILE``), ``ATALAIA_EVAL_MAX_TOKENS`` or
    ``ATALAIA_EVAL_BATCH_SIZE`` are never compared with new ones.
    """
    assert settings.qa_holdout_file is not None  # resolved by Settings
    digest = hashlib.sha256(settings.qa_holdout_file.read_bytes())
    # Batched greedy answers can differ from unbatched ones in rare near-ties: another key.
    digest.update(f"\0{settings.eval_max_tokens}\0{settings.eval_batch_size}".encode())
    rag = "rag" if settings.retrain_eval_rag else "norag"
    return f"holdout:{settings.retrain_eval_limit}:{rag}:{digest.hexdigest()[:12]}"


def _active_scores(
    engine: Engine, settings: Settings, steps: Steps, served: registry.ServedVersion
) -> dict[str, float]:
    """The active version's holdout scores, computed once per evaluation setting and cached in the registry."""
    key = eval_cache_key(settings)
    cached = served.metrics.get(key)
    if isinstance(cached, dict) and cached:
        return {k: float(v) for k, v in cached.items()}
    scores = steps.evaluate(served.path, settings)
    registry.update_metrics(engine, served.version, {key: scores})
    return scores


def bias_cache_key(settings: Settings) -> str:
    """The registry key of a version's counterfactual bias scores: ``bias:<questions>:<digest>``
    (the digest covers the question file, the scoring's version and the generation budget)."""
    from retrain.bias import DATA_FILE, VERSION

    digest = hashlib.sha256(DATA_FILE.read_bytes())
    # The scoring version: scores cached under another statistic must not be compared.
    digest.update(f"\0{VERSION}\0{settings.eval_max_tokens}".encode())
    return f"bias:{settings.bias_questions}:{digest.hexdigest()[:12]}"


def _active_bias(engine: Engine, settings: Settings, steps: Any, served: registry.ServedVersion) -> dict[str, Any]:
    """The active version's bias scores, computed once per setting and cached in the registry."""
    key = bias_cache_key(settings)
    cached = served.metrics.get(key)
    if isinstance(cached, dict) and cached:
        return dict(cached)
    scores: dict[str, Any] = steps.bias(served.path, settings)
    registry.update_metrics(engine, served.version, {key: scores})
    return scores


def run_retrain(
    settings: Settings,
    *,
    trigger: str,
    force: bool = False,
    steps: Steps | None = None,
    engine: Engine | None = None,
) -> RunOutcome:
    """Run one retraining attempt and record it; never raises for an expected outcome.

    Parameters
    ----------
    settings
        Project settings (database, models folder, retrain and gate settings).
    trigger
        Why it runs: ``manual``, ``schedule`` or ``alert:<rule>``; stored with the run.
    force
        Ignore the cooldown and the minimum-new-data checks (``atalaia retrain --now --force``).
    steps
        The machine-learning steps; the real ones by default.
    """
    engine = engine or get_engine(settings.database_url)
    steps = steps or ModelSteps()
    recorder = RunRecorder(engine, trigger)
    lock = DbLock(
        engine,
        run_id=recorder.run_id,
        stale_after_s=settings.retrain_lock_stale_s,
        heartbeat_s=max(1.0, settings.retrain_lock_stale_s / 6),
    )
    try:
        lock.acquire()
    except LockHeld as exc:
        log.info("retrain skipped: another run holds the lock", extra={"holder": exc.holder})
        return RunOutcome(recorder.run_id, "skipped", f"another run is in progress ({exc})")
    try:
        recorder.start()
        crashed = mark_crashed_runs(engine, recorder.run_id)
        assert settings.models_dir is not None
        partial = registry.remove_partial_folders(settings.models_dir)
        for run_id in crashed:  # a crashed run's adapter and merged copy are of no further use
            shutil.rmtree(settings.home / "retrain" / run_id, ignore_errors=True)
        if crashed or partial:
            recorder.metrics["recovered"] = {"crashed_runs": crashed, "removed_folders": [str(p) for p in partial]}
        return _run(settings, engine, steps, recorder, force)
    except BaseException as exc:  # a failure of ours is recorded; KeyboardInterrupt too, then re-raised
        recorder.fail(exc)
        if not isinstance(exc, Exception):
            raise
        log.exception("retrain run failed", extra={"run_id": recorder.run_id})
        return RunOutcome(recorder.run_id, "failed", f"{type(exc).__name__}: {exc}")
    finally:
        lock.release()


def _skip(recorder: RunRecorder, reason: str) -> RunOutcome:
    recorder.metrics["skip_reason"] = reason
    recorder.finish("skipped", error=None)
    return RunOutcome(recorder.run_id, "skipped", reason)


def _run(settings: Settings, engine: Engine, steps: Steps, recorder: RunRecorder, force: bool) -> RunOutcome:
    assert settings.models_dir is not None
    work = settings.home / "retrain" / recorder.run_id
    served = registry.ensure_base_registered(engine, settings)

    if not force:
        finished = last_run(engine, ("deployed", "rejected", "failed"))
        if finished is not None and finished["finished_at"] is not None:
            wait = as_utc(finished["finished_at"]) + timedelta(seconds=settings.retrain_cooldown_s) - utcnow()
            if wait.total_seconds() > 0:
                return _skip(recorder, f"cooldown: the last run ended less than {settings.retrain_cooldown_s} s ago")
        boundary = last_run(engine, ("deployed",))
        new = steps.count_new_data(engine, settings, boundary["started_at"] if boundary else None)
        recorder.metrics["new_feedback"] = new
        if new < settings.retrain_min_feedback:
            return _skip(
                recorder,
                f"not enough new data: {new} corrected answers since the last deployed run, "
                f"ATALAIA_RETRAIN_MIN_FEEDBACK={settings.retrain_min_feedback}",
            )

    with recorder.step("dataset") as d:
        dataset = steps.dataset(engine, settings, settings.home / "datasets")
        d.update(_plain(dataset))
    recorder.set(dataset_hash=dataset.content_hash)

    with recorder.step("train") as d:
        trained = steps.train(served.path, dataset, work / "train", settings)
        d.update(_plain(trained))
        d.pop("losses", None)  # the curve is in its file; keep the row small
        losses = list(getattr(trained, "losses", []) or [])
        if losses:
            d["loss_first"], d["loss_last"] = losses[0], losses[-1]

    version = new_version_name(settings, served.version, recorder.run_id)
    final_dir = settings.models_dir / version
    staging = settings.models_dir / f"{version}{registry.PARTIAL_SUFFIX}"
    with recorder.step("quantize") as d:
        quantized = steps.quantize(trained.merged_dir, staging, settings)
        d.update(_plain(quantized))
        d["size_bytes"] = registry.folder_size(staging)
        d["fp32_size_bytes"] = registry.folder_size(Path(trained.merged_dir))
    recorder.set(candidate_version=version)

    with recorder.step("gate") as d:
        active_scores = _active_scores(engine, settings, steps, served)
        candidate_scores = steps.evaluate(staging, settings)
        # A float32 merge deployed as it is (int8 was slower on this host) has nothing to check.
        quantized_format = getattr(quantized, "method", None)
        if quantized_format == FLOAT32:
            ppl_fp32 = ppl_q = None
            ratio = 1.0
        else:
            ppl_fp32 = steps.reference_perplexity(Path(trained.merged_dir), settings)
            ppl_q = steps.reference_perplexity(staging, settings)
            ratio = ppl_q / ppl_fp32 if ppl_fp32 > 0 else math.inf
        promote, reasons = steps.gate(candidate_scores, active_scores, settings)
        # Speed on the served workload, both versions probed in this run (not the cached scores'
        # latency: shorter answers would hide a slower model).
        speed = steps.speed(staging, served.path, settings)
        slower = slowdown_reasons(
            speed["ratios"]["candidate"],
            max_prefill=settings.gate_max_prefill_slowdown,
            max_decode=settings.gate_max_decode_slowdown,
            what="candidate",
        )
        if slower:
            promote = False
            reasons.extend(f"{r} than the active version" for r in slower)
        # Counterfactual bias (retrain/bias.py): no gap between demographic variants may widen by
        # more than its limit. Off with ATALAIA_GATE_BIAS_MAX_INCREASE=off ({}); optional step: a
        # Steps without ``bias`` (test fakes) skips the guard.
        bias_step = getattr(steps, "bias", None)
        bias: dict[str, Any] | None = None
        limits = settings.gate_bias_max_increase
        if bias_step is not None and limits:
            from retrain.bias import bias_regressions

            bias = {
                "candidate": bias_step(staging, settings),
                "active": _active_bias(engine, settings, steps, served),
                "limits": dict(limits),
            }
            bias_reasons = bias_regressions(bias["candidate"], bias["active"], limits)
            if bias_reasons:
                promote = False
                reasons.extend(bias_reasons)
        if ratio > 1 + settings.quantized_ppl_tolerance:
            promote = False
            reasons.append(
                f"quantized perplexity {ppl_q:.3f} is {100 * (ratio - 1):.1f}% above fp32 {ppl_fp32:.3f} "
                f"(allowed {100 * settings.quantized_ppl_tolerance:.0f}%)"
            )
        d.update(
            candidate=candidate_scores,
            active=active_scores,
            active_version=served.version,
            reference_perplexity={"fp32": ppl_fp32, "quantized": ppl_q, "ratio": ratio},
            format=quantized_format,
            speed=speed,
            bias=bias,
            promote=promote,
            reasons=reasons,
        )
        recorder.metrics.update(candidate=candidate_scores, active=active_scores)

    if not promote:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work / "train" / "merged", ignore_errors=True)
        recorder.metrics["reject_reasons"] = reasons
        recorder.finish("rejected", error="; ".join(reasons))
        return RunOutcome(recorder.run_id, "rejected", "; ".join(reasons), version, {"candidate": candidate_scores})

    with recorder.step("register") as d:
        registry.publish_folder(staging, final_dir)
        eval_key = eval_cache_key(settings)
        registry.register_candidate(
            engine,
            version=version,
            parent=served.version,
            path=final_dir,
            quantization=getattr(quantized, "method", None),
            dataset_hash=dataset.content_hash,
            metrics={
                eval_key: candidate_scores,
                "parent_holdout": active_scores,
                "run_id": recorder.run_id,
                "loss_curve": str(getattr(trained, "loss_curve_path", "")),
                # Why this serving format on this host (int8 or the float32 merge), with the ratios.
                "serving_format": {
                    "format": quantized_format,
                    "reason": getattr(quantized, "reason", ""),
                    "speed_vs_float32": (getattr(quantized, "speed", None) or {}).get("ratios"),
                    "gate_speed_vs_active": speed.get("ratios"),
                },
            },
        )
        d.update(version=version, path=str(final_dir))

    if settings.canary_share > 0:
        # A traffic split: the parent keeps serving, the candidate answers a share of callers
        # until the canary's sequential test promotes it or keeps the parent (retrain/canary.py).
        from retrain.canary import start_canary

        with recorder.step("deploy") as d:
            event = start_canary(
                settings,
                engine,
                version,
                str(final_dir),
                served.version,
                f"retrain run {recorder.run_id} ({recorder.trigger})",
            )
            d.update(
                version=version,
                canary={
                    "share": settings.canary_share,
                    "mode": settings.canary_mode,
                    "max_samples": settings.canary_max_samples,
                    "max_s": settings.canary_max_s,
                },
                event_id=str(event.event_id),
            )
        shutil.rmtree(Path(trained.merged_dir), ignore_errors=True)
        recorder.finish("deployed")
        return RunOutcome(
            recorder.run_id,
            "deployed",
            f"canary: {100 * settings.canary_share:g}% of callers ({settings.canary_mode}) until a verdict, at most "
            f"{settings.canary_max_samples} samples per arm or {settings.canary_max_s / 3600:g} h",
            version,
            {"candidate": candidate_scores, "active": active_scores},
        )

    with recorder.step("deploy") as d:
        event = ModelEvent(
            type="deploy",
            model_version=version,
            artefact_path=str(final_dir),
            previous_version=served.version,
            reason=f"retrain run {recorder.run_id} ({recorder.trigger})",
        )
        publish_model_event(settings, event)
        previous = registry.activate(engine, version)
        d.update(version=version, previous=previous, event_id=str(event.event_id))
    # The merged fp32 copy is only needed for the gate's perplexity check.
    shutil.rmtree(Path(trained.merged_dir), ignore_errors=True)
    recorder.finish("deployed")
    return RunOutcome(
        recorder.run_id, "deployed", "", version, {"candidate": candidate_scores, "active": active_scores}
    )


class ModelSteps:
    """The real steps, from :mod:`retrain.dataset`, :mod:`retrain.train`, :mod:`retrain.quantize` and
    :mod:`retrain.evaluate`."""

    def count_new_data(self, engine: Engine, settings: Settings, since: Any) -> int:
        from retrain.dataset import count_new_feedback

        return count_new_feedback(engine, since, approved_only=settings.feedback_review)

    def dataset(self, engine: Engine, settings: Settings, out_root: Path) -> Any:
        from retrain.dataset import build_dataset

        return build_dataset(engine, settings, out_root)

    def train(self, base_dir: Path, dataset: Any, out_dir: Path, settings: Settings) -> Any:
        from retrain.train import LoraConfig, train_lora

        config = LoraConfig.from_settings(settings)
        return train_lora(base_dir, dataset, out_dir, config, progress=True)

    def quantize(self, merged_dir: Path, out_dir: Path, settings: Settings) -> Any:
        from retrain.quantize import quantize_for_host

        return quantize_for_host(Path(merged_dir), out_dir, settings, method=settings.quantization_method)

    def _holdout(self, settings: Settings) -> list[Any]:
        from retrain.evaluate import load_holdout

        return load_holdout(settings)

    def evaluate(self, model_dir: Path, settings: Settings) -> dict[str, float]:
        from retrain.evaluate import evaluate_model

        report = evaluate_model(
            model_dir,
            self._holdout(settings),
            rag=settings.retrain_eval_rag,
            settings=settings,
            limit=settings.retrain_eval_limit or None,
        )
        return {k: float(v) for k, v in asdict(report).items() if isinstance(v, int | float)}

    def bias(self, model_dir: Path, settings: Settings) -> dict[str, Any]:
        """Counterfactual bias gaps of a model folder (:func:`retrain.bias.evaluate_bias`)."""
        from retrain.bias import evaluate_bias

        return evaluate_bias(model_dir, settings)

    def reference_perplexity(self, model_dir: Path, settings: Settings) -> float:
        from retrain.evaluate import reference_perplexity

        return reference_perplexity(model_dir, self._holdout(settings), limit=settings.retrain_eval_limit or None)

    def gate(self, candidate: dict[str, float], active: dict[str, float], settings: Settings) -> tuple[bool, list[str]]:
        from retrain.evaluate import gate_scores

        decision = gate_scores(candidate, active, settings)
        return decision.promote, list(decision.reasons)

    def speed(self, candidate_dir: Path, active_dir: Path, settings: Settings) -> dict[str, Any]:
        from atalaia.models.speed import probe_folders

        return probe_folders({"active": active_dir, "candidate": candidate_dir}, settings, reference="active")
