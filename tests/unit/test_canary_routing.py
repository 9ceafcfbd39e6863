"""The canary's traffic split in the service: share, stickiness, shadow answers, start and end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from atalaia.events import InferenceEvent, ModelEvent
from atalaia.model_signing import signing_payload
from atalaia.settings import Settings
from inference.app import create_app
from inference.models import ModelManager, ServedModel, SwapError
from inference.routing import bucket, choose, sticky_key
from tests.unit.test_hot_swap import NamedGenerator
from tests.unit.test_inference_api import RecordingProducer


def _app(tmp_path: Path) -> tuple[TestClient, RecordingProducer, ModelManager, Path]:
    settings = Settings(home=tmp_path)
    models = ModelManager(
        ServedModel(settings.model_version, NamedGenerator("base")), loader=lambda p: NamedGenerator(Path(p).name)
    )
    producer = RecordingProducer()
    folder = tmp_path / "cand"
    folder.mkdir()
    return TestClient(create_app(settings, models.active.generator, producer, models=models)), producer, models, folder


def _ask(client: TestClient, user: str | None, question: str = "hi") -> dict:
    body: dict = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": question}]}
    if user:
        body["user"] = user
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _inference(producer: RecordingProducer) -> list[InferenceEvent]:
    return [e for e in producer.events if isinstance(e, InferenceEvent)]


def test_the_split_sends_the_share_to_the_candidate_sticky_per_user(tmp_path: Path) -> None:
    client, producer, models, folder = _app(tmp_path)
    models.start_canary("m@2", str(folder), share=0.3)
    users = [f"user-{i}" for i in range(200)]
    first = {u: _ask(client, u)["model"] for u in users}
    assert set(first.values()) == {"m@2", models.active.version}  # both versions answer
    share = sum(v == "m@2" for v in first.values()) / len(users)
    assert 0.2 < share < 0.4, share
    # Sticky: the same user gets the same version, whatever the question.
    for u in users[:40]:
        assert _ask(client, u, "another question")["model"] == first[u]
    events = _inference(producer)
    assert {e.model_version for e in events} == {"m@2", models.active.version}
    assert all(not e.metadata.get("shadow") for e in events)
    health = client.get("/healthz").json()["model"]["canary"]
    assert health == {"version": "m@2", "share": 0.3, "mode": "split"}


def test_shadow_mode_returns_the_parent_and_emits_the_candidate_flagged(tmp_path: Path) -> None:
    client, producer, models, folder = _app(tmp_path)
    models.start_canary("m@2", str(folder), share=1.0, mode="shadow")
    body = _ask(client, "alice")
    assert body["model"] == models.active.version
    assert body["choices"][0]["message"]["content"] == "answer from base"
    deadline = time.monotonic() + 5
    while len(_inference(producer)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    events = _inference(producer)
    shadow = [e for e in events if e.metadata.get("shadow")]
    served = [e for e in events if not e.metadata.get("shadow")]
    assert [e.model_version for e in served] == [models.active.version]
    assert [e.model_version for e in shadow] == ["m@2"] and shadow[0].response == "answer from cand"
    assert shadow[0].event_id != served[0].event_id
    assert str(shadow[0].event_id) not in body["id"]  # the shadow answer is not the caller's


def test_promotion_reuses_the_loaded_candidate_and_rollback_ends_the_canary(tmp_path: Path) -> None:
    loads: list[str] = []
    models = ModelManager(ServedModel("m@1", "g1"), loader=lambda p: loads.append(p) or f"gen:{p}")
    with pytest.raises(SwapError):
        models.start_canary("m@1", str(tmp_path), share=0.5)  # the active version is no candidate
    with pytest.raises(SwapError):
        models.start_canary("m@2", str(tmp_path), share=0.0)
    with pytest.raises(SwapError):
        models.start_canary("m@2", str(tmp_path / "missing"), share=0.5)
    assert models.canary is None
    models.start_canary("m@2", str(tmp_path), share=0.5)
    assert loads == [str(tmp_path)]
    assert models.rollback("m@1").version == "m@1" and models.canary is None  # ended, parent kept
    models.start_canary("m@2", str(tmp_path), share=0.5)
    assert models.deploy("m@2", str(tmp_path)).version == "m@2"
    assert models.canary is None and models.previous is not None and models.previous.version == "m@1"
    assert len(loads) == 2  # the promotion did not load again


def test_routing_without_a_canary_and_key_order() -> None:
    parent = ServedModel("m@1", "g")
    assert choose(parent, None, "user:x").served is parent
    assert sticky_key("u", "c", []) == "user:u"
    assert sticky_key(None, None, [("user", "a")]) == sticky_key(None, None, [("user", "a")])
    assert sticky_key(None, None, [("user", "a")]) != sticky_key(None, None, [("user", "b")])
    # Buckets are uniform enough and differ between candidates (salted by version).
    values = [bucket(f"user:{i}", "m@2") for i in range(2000)]
    assert 0.45 < sum(v < 0.5 for v in values) / 2000 < 0.55
    assert sum((bucket(f"user:{i}", "m@2") < 0.2) != (bucket(f"user:{i}", "m@3") < 0.2) for i in range(500)) > 50


def test_canary_events_are_signed_with_their_share_and_mode() -> None:
    event = ModelEvent(type="canary", model_version="m@2", artefact_path="/m/2", canary_share=0.2, canary_mode="shadow")
    other = event.model_copy(update={"canary_share": 0.9})
    assert signing_payload(event) != signing_payload(other)
    assert signing_payload(event).endswith(b"\n0.2\nshadow")


def test_canary_events_pass_the_same_authority_checks_as_deploys(tmp_path: Path) -> None:
    from atalaia.kafka.clients import Refused
    from atalaia.storage.db import get_engine, upgrade
    from inference.authority import ModelEventAuthority
    from retrain import registry

    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    assert settings.models_dir is not None
    folder = settings.models_dir / "m2"
    folder.mkdir(parents=True)
    registry.register_candidate(
        engine, version="m@2", parent="m@1", path=folder, quantization=None, dataset_hash="-", metrics={}
    )
    authority = ModelEventAuthority(settings, engine)
    ok = ModelEvent(type="canary", model_version="m@2", artefact_path=str(folder), canary_share=0.2)
    authority.check(ok)
    for bad in (
        ok.model_copy(update={"artefact_path": str(tmp_path)}),  # outside ATALAIA_MODELS_DIR
        ok.model_copy(update={"artefact_path": None}),
        ok.model_copy(update={"model_version": "m@unregistered"}),
    ):
        with pytest.raises(Refused):
            authority.check(bad)
