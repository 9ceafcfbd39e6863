"""The canary with a traffic split on real parts: Kafka, PostgreSQL, SmolLM2, the inference
service and the scoring worker.

A ``canary`` model event makes inference load the candidate beside the active model; callers are
split sticky per user, both versions answer and the worker scores both (ROUGE-L against the
reference, speed per phase); the sequential test on the same period's metrics then promotes a
better candidate and rolls back a worse one.

"Worse" is the same SmolLM2 weights with a broken setting: ``rope_theta`` 1.0 instead of 100000
in ``config.json`` (the weights and tokenizer are links to the prepared model), which scrambles
the positions and turns answers into punctuation. The better candidate is the prepared model
itself, canaried against such a broken parent; the worse one is a broken copy canaried against
it after its promotion.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from atalaia.settings import Settings
from atalaia.storage.db import get_engine
from atalaia.topics import ensure_topics
from inference.routing import bucket, sticky_key
from retrain import registry
from retrain.canary import CanaryVerdict, settle_canary, start_canary
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

QA = [json.loads(line) for line in (Path(__file__).resolve().parents[2] / "data" / "qa" / "train.jsonl").open()]
FILES = (
    "chat_template.jinja",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _folder(models: Path, name: str, source: Path, rope_theta: float | None = None) -> Path:
    """A model folder under ``models`` linking the prepared model's files, with its own config."""
    folder = models / name
    folder.mkdir()
    for f in (*FILES, "atalaia-model.json"):
        (folder / f).symlink_to(source / f)
    config = json.loads((source / "config.json").read_text())
    if rope_theta is not None:
        config["rope_parameters"]["rope_theta"] = rope_theta
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _register(settings: Settings, version: str, folder: Path, parent: str | None, status: str) -> None:
    engine = get_engine(settings.database_url)
    registry.register_candidate(
        engine, version=version, parent=parent or "", path=folder, quantization=None, dataset_hash="-", metrics={}
    )
    if status == "active":
        registry.activate(engine, version)


def _ask(base: str, user: str, item: dict[str, str]) -> str:
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": item["question"]}],
            "max_tokens": 16,
            "temperature": 0,
            "user": user,
            "metadata": {"reference": item["answer"]},
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["model"])


def _traffic(base: str, users: list[str], round_: int) -> dict[str, str]:
    """Each user asks one question (a different one each round); the version that answered, per user."""
    with ThreadPoolExecutor(2) as pool:
        answers = pool.map(lambda iu: _ask(base, iu[1], QA[(iu[0] + round_) % 40]), enumerate(users))
        return dict(zip(users, answers, strict=True))


def _health(base: str) -> dict:
    try:
        return dict(httpx.get(f"{base}/healthz", timeout=5).json()["model"])
    except (httpx.HTTPError, KeyError, ValueError):
        return {}


def _balanced_users(candidate: str, share: float, per_arm: int = 8) -> list[str]:
    """Users half of whom fall in the candidate's share, alternating: both arms get samples at the
    same rate (the split itself is random by hash; a handful of users could leave one arm nearly
    empty), and the two requests in flight go to different models, so that neither arm's time to
    first token includes waiting for its own model more than the other's."""
    inside, outside = [], []
    for i in range(1000):
        user = f"user-{i}"
        side = inside if bucket(sticky_key(user, None, []), candidate) < share else outside
        if len(side) < per_arm:
            side.append(user)
    return [user for pair in zip(inside, outside, strict=True) for user in pair]


def _run_canary(
    settings: Settings, base: str, candidate: str, parent: str, folder: Path
) -> tuple[CanaryVerdict, dict[str, str]]:
    """Start a canary of ``candidate``, send traffic until the sequential test decides; the
    verdict, and the version that answered each user."""
    engine = get_engine(settings.database_url)
    start_canary(settings, engine, candidate, str(folder), parent, "test")
    wait_until(lambda: (_health(base).get("canary") or {}).get("version") == candidate, 300, f"canary of {candidate}")
    users = _balanced_users(candidate, settings.canary_share)
    first = _traffic(base, users, 0)
    assert set(first.values()) == {candidate, parent}, first  # both versions answer
    verdict = settle_canary(settings, candidate)
    for round_ in range(1, 16):
        if verdict.decision != "wait":
            break
        # Sticky: each user stays on its version, whatever the question.
        assert _traffic(base, users, round_) == first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # let the worker store this round's metrics
            time.sleep(3)
            verdict = settle_canary(settings, candidate)
            if verdict.decision != "wait":
                break
    return verdict, first


@pytest.mark.timeout(2400)
def test_the_canary_splits_traffic_promotes_a_better_and_rolls_back_a_worse_candidate(
    isolated_settings: Settings, fresh_pg: str, models_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    source = models_dir / isolated_settings.generator_model
    broken_parent = _folder(models, "broken-parent", source, rope_theta=1.0)
    good = _folder(models, "good", source)
    broken = _folder(models, "broken", source, rope_theta=1.0)
    settings = isolated_settings.model_copy(
        update={
            "database_url": fresh_pg,
            "models_dir": models,
            "metric_groups": "operational,text",
            "rag_enabled": False,
            "cache_enabled": False,
            "canary_share": 0.5,
            "canary_min_events": 8,
            # The horizon stays out of the way: the test sends traffic until the test decides.
            "canary_max_s": 3600,
            "canary_max_samples": 1000,
            # The test is about quality; both arms run interleaved on one shared CI machine, whose
            # timing noise would need far more requests to bound the speed metrics at 1.5x.
            "canary_max_latency_ratio": 2.0,
        }
    )
    ensure_topics(settings)
    v_broken_parent, v_good, v_broken = "smollm2@broken-parent", "smollm2@good", "smollm2@broken"
    _register(settings, v_broken_parent, broken_parent, None, "active")
    _register(settings, v_good, good, v_broken_parent, "candidate")
    _register(settings, v_broken, broken, v_good, "candidate")
    base = f"http://127.0.0.1:{settings.inference_port}"
    engine = get_engine(settings.database_url)
    with service("worker", settings), service("serve", settings):
        try:
            wait_until(
                lambda: _health(base).get("version") == v_broken_parent, 300, "inference on the registry's version"
            )

            better, _ = _run_canary(settings, base, v_good, v_broken_parent, good)
            assert better.decision == "promote", better
            assert better.tests["rougeL"]["outcome"] == "ok" and better.tests["rougeL"]["difference"] > 0
            wait_until(lambda: _health(base).get("version") == v_good, 120, "inference to serve the promoted version")
            assert _health(base)["canary"] is None
            assert registry.get_version(engine, v_good)["status"] == "active"  # type: ignore[index]
            assert registry.get_version(engine, v_broken_parent)["status"] == "retired"  # type: ignore[index]

            worse, answered = _run_canary(settings, base, v_broken, v_good, broken)
            assert worse.decision == "rollback", worse
            assert worse.tests["rougeL"]["outcome"] == "worse", worse.tests
            wait_until(lambda: _health(base).get("canary") is None, 120, "inference to end the canary")
            assert _health(base)["version"] == v_good
            # The users the candidate answered are served by the parent again.
            exposed = [user for user, version in answered.items() if version == v_broken][:2]
            assert [_ask(base, user, QA[0]) for user in exposed] == [v_good, v_good]
            row = registry.get_version(engine, v_broken)
            assert row is not None and row["status"] == "rolled_back"
            assert row["metrics"]["canary"]["decision"] == "rollback"
            # Each arm's samples and the horizon are recorded with the verdict (dashboard, report).
            samples = row["metrics"]["canary"]["samples"]["rougeL"]
            assert (
                samples["candidate"] >= settings.canary_min_events and samples["parent"] >= settings.canary_min_events
            )
            assert row["metrics"]["canary"]["horizon"]["max_samples"] == 1000
        except AssertionError:
            print(log_text(settings, "serve")[-4000:])
            print(log_text(settings, "worker")[-3000:])
            raise
