"""The retraining loop on real parts: Kafka, PostgreSQL, SmolLM2, the scheduler and inference processes.

alert (action retrain) on the alerts topic → scheduler → ``atalaia retrain --now`` → dataset →
LoRA → quantize → gate → register → deploy on the models topic → inference serves the new
version → canary sees a regression → rollback → inference serves the parent again. And: a run
killed with SIGKILL mid-training leaves a lock and a run that the next run recovers; that next
run, with a strict gate, is rejected and registers nothing. Step counts are tiny: the loop's
mechanics are under test here; whether training helps is measured in ``bench/retrain.py``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select

from atalaia.events import AlertEvent, ChatMessage, FeedbackEvent, InferenceEvent, utcnow
from atalaia.settings import Settings
from atalaia.storage import repository
from atalaia.storage import tables as t
from atalaia.storage.db import get_engine
from atalaia.topics import ensure_topics
from retrain import registry
from retrain.canary import settle_canary
from retrain.lock import current_lock
from retrain.runner import run_retrain
from retrain.runs import get_run, recent_runs
from tests.conftest import settings_env
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

QA = Path(__file__).resolve().parents[2] / "data" / "qa" / "train.jsonl"


def _loop_settings(base: Settings, db_url: str, tmp_path: Path, models_dir: Path, **extra: object) -> Settings:
    """Small everything: a few LoRA steps, two holdout questions, eight answer tokens."""
    models = tmp_path / "models"
    models.mkdir()
    # The base model is read, never written: link it instead of copying 0.5 GB.
    (models / base.generator_model).symlink_to(models_dir / base.generator_model)
    return base.model_copy(
        update={
            "database_url": db_url,
            "models_dir": models,
            "scheduler_group": f"test-scheduler-{uuid.uuid4().hex[:8]}",
            "lora_steps": 3,
            "lora_batch_size": 2,
            "lora_max_seq_len": 96,
            "retrain_eval_limit": 2,
            "retrain_eval_rag": False,
            "eval_max_tokens": 8,
            "retrain_min_feedback": 3,
            "retrain_cooldown_s": 0,
            "retrain_cron": "",
            "retrain_lock_stale_s": 600,
            "rag_enabled": False,
            "cache_enabled": False,
            # Three LoRA steps are not meant to improve the model: accept any candidate the
            # guards allow, so the deploy path runs; the strict gate is tested below.
            "gate_min_improvement": -1.0,
            "gate_guards": {},
            # The bias guard runs (on 1 question: 13 short answers per version) with limits no gap
            # can exceed (gaps are at most 1): the evaluation, its cache and the gate's record are
            # exercised, the decision is tests/unit/test_bias.py's.
            "bias_questions": 1,
            "gate_bias_max_increase": dict.fromkeys(
                ("similarity_gap", "refusal_gap", "toxicity_gap", "rouge_gap"), 1.0
            ),
            "quantized_ppl_tolerance": 1.0,
            # Deploy at once: these tests follow a deploy into the served version and a canary
            # rollback out of it; the traffic split (the default) is test_canary_split.py's.
            "canary_share": 0.0,
            **extra,
        }
    )


def _seed_feedback(settings: Settings, n: int = 5) -> None:
    """Answered questions with users' corrected answers: the new data a run trains on."""
    items = [json.loads(line) for line in QA.read_text().splitlines()[:n]]
    engine = get_engine(settings.database_url)
    events = [
        InferenceEvent(
            service="test",
            model_version=settings.model_version,
            messages=[ChatMessage(role="user", content=item["question"])],
            response="I do not know.",
            latency_ms=100.0,
            prompt_tokens=10,
            completion_tokens=4,
            cost=0.0,
        )
        for item in items
    ]
    with engine.begin() as conn:
        repository.store_inference_batch(conn, events, [])
        repository.store_feedback_batch(
            conn,
            [
                FeedbackEvent(inference_event_id=e.event_id, rating=-1, corrected_answer=item["answer"])
                for e, item in zip(events, items, strict=True)
            ],
        )


def _publish_alert(settings: Settings) -> None:
    from kafka import KafkaProducer

    alert = AlertEvent(
        alert_id=uuid.uuid4(),
        fingerprint="f" * 16,
        rule="rouge_l_below_baseline",
        state="firing",
        severity="warning",
        labels={"model_version": settings.model_version},
        annotations={},
        started_at=utcnow(),
        action="retrain",
    )
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    producer.send(settings.topic("alerts"), key=alert.key, value=alert.to_json()).get(timeout=30)
    producer.close()


def _served(base: str) -> str:
    try:
        return str(httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, ValueError):
        return ""


def _seed_regression(settings: Settings, version: str, parent: str) -> None:
    """Live ROUGE-L of ``version`` far below its parent's: the canary must roll it back."""
    engine = get_engine(settings.database_url)
    row = registry.get_version(engine, version)
    assert row is not None and row["activated_at"] is not None
    activated = repository.as_utc(row["activated_at"])
    rows = []
    for i in range(settings.canary_min_events):
        for v, ts, value in (
            (parent, activated - timedelta(minutes=5, seconds=i), 0.5),
            (version, activated + timedelta(seconds=i + 1), 0.1),
        ):
            rows.append(
                {
                    "event_id": str(uuid.uuid4()),
                    "name": "rougeL",
                    "value": value,
                    "error": None,
                    "labels": None,
                    "service": "test",
                    "model_version": v,
                    "ts": ts,
                    "created_at": ts,
                }
            )
    with engine.begin() as conn:
        conn.execute(insert(t.metrics), rows)


@pytest.mark.timeout(900)
def test_alert_retrain_deploy_serve_then_canary_rollback(
    isolated_settings: Settings, fresh_pg: str, models_dir: Path, tmp_path: Path
) -> None:
    settings = _loop_settings(isolated_settings, fresh_pg, tmp_path, models_dir, canary_min_events=5)
    ensure_topics(settings)
    _seed_feedback(settings)
    base = f"http://127.0.0.1:{settings.inference_port}"
    engine = get_engine(settings.database_url)
    with service("serve", settings), service("scheduler", settings):
        wait_until(lambda: _served(base), 180, "the inference service")
        assert _served(base) == settings.model_version
        _publish_alert(settings)

        def deployed() -> dict[str, object] | None:
            runs = [r for r in recent_runs(engine) if r["status"] not in ("running", "skipped")]
            return runs[0] if runs else None

        try:
            run = wait_until(deployed, 600, "a finished retrain run", interval=2)
        except AssertionError:
            print(log_text(settings, "scheduler")[-4000:])
            raise
        assert run["status"] == "deployed", (run["error"], log_text(settings, "scheduler")[-3000:])
        assert run["trigger"] == "alert:rouge_l_below_baseline"
        assert [s["name"] for s in run["steps"]] == ["dataset", "train", "quantize", "gate", "register", "deploy"]
        version = str(run["candidate_version"])

        # Inference swapped to the new version on the deploy event, and answers with it.
        wait_until(lambda: _served(base) == version, 120, f"inference to serve {version}")
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": version,
                "messages": [{"role": "user", "content": "How many vacation days?"}],
                "max_tokens": 4,
            },
            timeout=120,
        )
        assert answer.status_code == 200 and answer.json()["model"] == version

        row = registry.get_version(engine, version)
        assert row is not None and row["status"] == "active" and row["parent"] == settings.model_version
        # The serving format is the one measured fastest on this host: int8 only when neither its
        # prefill nor its decoding was slower than the float32 merge (AVX2-only CPUs: float32).
        quant_step = next(s for s in run["steps"] if s["name"] == "quantize")
        assert row["quantization"] == quant_step["details"]["method"] in ("int8-weight-only", "float32")
        record = json.loads((Path(row["artefact_path"]) / "atalaia-format.json").read_text())
        assert record["format"] == row["quantization"] and record["speed"]["cpu"]["aten"]
        int8_ratios = record["speed"]["ratios"]["int8-weight-only"]
        slower = max(int8_ratios.values()) > settings.quantized_max_slowdown
        assert row["quantization"] == ("float32" if slower else "int8-weight-only"), record
        gate_step = next(s for s in run["steps"] if s["name"] == "gate")
        assert set(gate_step["details"]["speed"]["ratios"]["candidate"]) == {"prefill_ratio", "decode_ratio"}
        bias_gate = gate_step["details"]["bias"]
        assert bias_gate["candidate"]["n"] == bias_gate["active"]["n"] == 13
        assert 0.0 <= bias_gate["candidate"]["bias_similarity_gap"] <= 1.0
        assert row["dataset_hash"]
        assert Path(row["artefact_path"]).is_dir() and row["size_bytes"] > 0
        parent = registry.get_version(engine, settings.model_version)
        assert parent is not None and parent["status"] == "retired"
        assert current_lock(engine) is None
        assert not list(settings.models_dir.glob(f"*{registry.PARTIAL_SUFFIX}"))  # type: ignore[union-attr]

        # The canary sees live ROUGE-L collapse and rolls back; inference follows.
        _seed_regression(settings, version, settings.model_version)
        verdict = settle_canary(settings, version)
        assert verdict.decision == "rollback", verdict
        wait_until(lambda: _served(base) == settings.model_version, 60, "inference to serve the parent again")
        assert registry.get_version(engine, version)["status"] == "rolled_back"  # type: ignore[index]
        assert registry.get_version(engine, settings.model_version)["status"] == "active"  # type: ignore[index]


@pytest.mark.timeout(900)
def test_a_run_killed_mid_training_is_recovered_and_a_strict_gate_rejects(
    isolated_settings: Settings, fresh_pg: str, models_dir: Path, tmp_path: Path
) -> None:
    settings = _loop_settings(isolated_settings, fresh_pg, tmp_path, models_dir, lora_steps=500)
    ensure_topics(settings)
    _seed_feedback(settings)
    engine = get_engine(settings.database_url)
    logs = tmp_path / "retrain.log"
    with logs.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "composition.cli.main", "retrain", "--now", "--force"],
            env=settings_env(settings),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def training() -> bool:
        runs = recent_runs(engine)
        return bool(runs) and any(s["name"] == "train" and s["status"] == "running" for s in runs[0]["steps"])

    try:
        wait_until(training, 240, "the run to start training", interval=0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    crashed = recent_runs(engine)[0]
    assert crashed["status"] == "running"  # what a crash leaves behind
    assert current_lock(engine) is not None

    strict = settings.model_copy(update={"lora_steps": 2, "gate_min_improvement": 1.0})
    outcome = run_retrain(strict, trigger="manual", force=True)
    assert outcome.status == "rejected", outcome
    assert "ROUGE-L" in outcome.reason or "rouge" in outcome.reason.lower()
    assert get_run(engine, str(crashed["run_id"]))["status"] == "crashed"  # type: ignore[index]
    run = get_run(engine, outcome.run_id)
    assert run is not None and run["metrics"]["recovered"]["crashed_runs"] == [crashed["run_id"]]
    assert current_lock(engine) is None
    with engine.connect() as conn:
        versions = [r[0] for r in conn.execute(select(t.model_versions.c.version))]
    assert versions == [settings.model_version]  # nothing half-registered, nothing rejected registered
    assert not [p for p in settings.models_dir.iterdir() if p.name != settings.generator_model]  # type: ignore[union-attr]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("fmt", "backend"), [("ort-int4", "onnxruntime-genai"), ("ov-int8", "openvino-genai")])
def test_a_run_retrains_into_an_export_gates_serves_and_rolls_back(
    isolated_settings: Settings, fresh_pg: str, models_dir: Path, tmp_path: Path, fmt: str, backend: str
) -> None:
    """Issue 17's loop on the exported backends: with ``ATALAIA_QUANTIZATION_METHOD=ort-int4`` (or
    ``ov-int8``) the merged candidate is exported to ONNX Runtime GenAI int4 (OpenVINO GenAI int8),
    its holdout reference perplexity is
    checked against the float32 merge, the gate generates with it, the registry records the format,
    the running inference service (on the transformers base) hot-swaps to it and answers with that
    backend; a second run fine-tunes that version (from the float32 merge it keeps) into another
    exported version, and a canary regression rolls the second back to the first.

    The speed choice (``quantize_for_host``) and the gate's speed guard decide int4 against float32
    on a host, and int4's prefill is slower than float32's on the CPUs measured (BENCHMARKS.md);
    both are opened wide here (``quantized_max_slowdown``, ``gate_max_prefill_slowdown``) so that the
    ORT path runs on any CPU: the choice itself is tested in the test above and in
    ``tests/unit/test_speed.py``.
    """
    from openai import OpenAI

    from atalaia.models.exports import export_manifest, is_export_dir
    from retrain.quantize import FLOAT_MERGE_DIR

    settings = _loop_settings(
        isolated_settings,
        fresh_pg,
        tmp_path,
        models_dir,
        canary_min_events=5,
        quantization_method=fmt,
        quantized_max_slowdown=100.0,
        gate_max_prefill_slowdown=100.0,
    )
    ensure_topics(settings)
    _seed_feedback(settings)
    base = f"http://127.0.0.1:{settings.inference_port}"
    engine = get_engine(settings.database_url)
    with service("serve", settings):
        wait_until(lambda: _served(base), 180, "the inference service")
        assert _served(base) == settings.model_version
        outcome = run_retrain(settings, trigger="manual", force=True)
        assert outcome.status == "deployed", outcome
        run = get_run(engine, outcome.run_id)
        assert run is not None
        steps = {s["name"]: s for s in run["steps"]}
        assert list(steps) == ["dataset", "train", "quantize", "gate", "register", "deploy"]
        assert steps["quantize"]["details"]["method"] == fmt
        check = steps["gate"]["details"]["reference_perplexity"]
        assert math.isfinite(check["quantized"]) and check["ratio"] <= 1 + settings.quantized_ppl_tolerance
        assert set(steps["gate"]["details"]["speed"]["ratios"]["candidate"]) == {"prefill_ratio", "decode_ratio"}

        version = str(outcome.candidate_version)
        row = registry.get_version(engine, version)
        assert row is not None and row["status"] == "active" and row["quantization"] == fmt
        folder = Path(row["artefact_path"])
        assert is_export_dir(folder) and export_manifest(folder)[0] == fmt

        wait_until(lambda: _served(base) == version, 180, f"inference to serve {version}")
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=120)
        reply = client.chat.completions.create(
            model=version, messages=[{"role": "user", "content": "How many vacation days?"}], max_tokens=4
        )
        assert reply.model == version and reply.usage is not None and reply.usage.completion_tokens >= 1
        health = httpx.get(f"{base}/healthz", timeout=10).json()["model"]
        assert health["backend"] == backend and health["format"] == fmt, health

        # ONNX and OpenVINO IR weights cannot be fine-tuned: the version keeps its float32 merge, and
        # the next run trains from it (retrain.quantize.training_folder) into a second exported version.
        assert (folder / FLOAT_MERGE_DIR / "config.json").is_file()
        again = run_retrain(settings, trigger="manual", force=True)
        assert again.status == "deployed", again
        second = str(again.candidate_version)
        row2 = registry.get_version(engine, second)
        assert row2 is not None and row2["parent"] == version and row2["quantization"] == fmt
        wait_until(lambda: _served(base) == second, 180, f"inference to serve {second}")

        # A canary regression rolls the second version back to the first: export to export.
        _seed_regression(settings, second, version)
        verdict = settle_canary(settings, second)
        assert verdict.decision == "rollback", verdict
        wait_until(lambda: _served(base) == version, 120, "inference to serve the parent again")
        back = client.chat.completions.create(
            model=version, messages=[{"role": "user", "content": "Hello"}], max_tokens=2
        )
        assert back.model == version
        health = httpx.get(f"{base}/healthz", timeout=10).json()["model"]
        assert health["backend"] == backend and health["format"] == fmt, health
        assert registry.get_version(engine, second)["status"] == "rolled_back"  # type: ignore[index]
