"""Admin routes and hot swap: no request fails while the model changes, and only the token opens them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from atalaia.events import InferenceEvent, ModelEvent
from atalaia.models.generator import ChatResult
from atalaia.settings import Settings
from inference.app import create_app
from inference.models import ModelManager, ServedModel
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer

TOKEN = "s3cret-token"


class NamedGenerator(FakeGenerator):
    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name, self.delay = name, delay

    def chat(self, messages, max_tokens=128, temperature=0.0, top_p=1.0, stop=None) -> ChatResult:  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return ChatResult(f"answer from {self.name}", 5, 3, "stop")


def _app(tmp_path: Path, loader=None, token: str = TOKEN):  # type: ignore[no-untyped-def]
    settings = Settings(home=tmp_path, admin_token=token)
    models = ModelManager(
        ServedModel(settings.model_version, NamedGenerator("base", 0.05)),
        loader=loader or (lambda path: NamedGenerator(Path(path).name, 0.05)),
    )
    producer = RecordingProducer()
    return TestClient(create_app(settings, models.active.generator, producer, models=models)), producer, settings


def _ask(client: TestClient, model: str) -> dict:
    r = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_admin_routes_need_the_token(tmp_path: Path) -> None:
    client, producer, _ = _app(tmp_path)
    (tmp_path / "v2").mkdir()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
    ):
        for path, body in (
            ("/admin/deploy", {"model_version": "m@2", "artefact_path": str(tmp_path / "v2")}),
            ("/admin/rollback", {}),
            ("/admin/cache/clear", None),
        ):
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models").json()["data"][0]["id"] == "smollm2-135m-instruct@base"  # nothing changed
    assert producer.events == []
    disabled, _, _ = _app(tmp_path, token="")
    r = disabled.post("/admin/cache/clear", headers={"Authorization": "Bearer "})
    assert r.status_code == 401 and "ATALAIA_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_deploy_rollback_and_bad_deploys(tmp_path: Path) -> None:
    client, producer, settings = _app(tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = client.post(
        "/admin/deploy", json={"model_version": "m@2", "artefact_path": str(tmp_path / "missing")}, headers=auth
    )
    assert bad.status_code == 400 and "not a model folder" in bad.json()["error"]["message"]
    (tmp_path / "v2").mkdir()
    ok = client.post(
        "/admin/deploy", json={"model_version": "m@2", "artefact_path": str(tmp_path / "v2")}, headers=auth
    )
    assert ok.json() == {"model_version": "m@2", "previous": settings.model_version}
    body = _ask(client, "m@2")
    assert body["model"] == "m@2" and body["choices"][0]["message"]["content"] == "answer from v2"
    deploy = next(e for e in producer.events if isinstance(e, ModelEvent))
    assert deploy.type == "deploy" and deploy.previous_version == settings.model_version
    assert client.post("/admin/rollback", json={}, headers=auth).json() == {"model_version": settings.model_version}
    assert _ask(client, settings.model_version)["choices"][0]["message"]["content"] == "answer from base"
    assert 'atalaia_active_model{model_version="m@2"} 0.0' in client.get("/metrics").text


def test_a_swap_under_load_fails_no_request(tmp_path: Path) -> None:
    client, producer, settings = _app(tmp_path, loader=lambda path: (time.sleep(0.3), NamedGenerator("v2", 0.02))[1])
    (tmp_path / "v2").mkdir()
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = client.post(
                "/v1/chat/completions",
                json={"model": settings.generator_model, "messages": [{"role": "user", "content": "hi"}]},
            )
            results.append(r.status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    r = client.post(
        "/admin/deploy",
        json={"model_version": "m@2", "artefact_path": str(tmp_path / "v2")},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join()
    assert r.status_code == 200 and results and set(results) == {200}
    versions = [e.model_version for e in producer.events if isinstance(e, InferenceEvent)]
    assert versions[0] == settings.model_version and versions[-1] == "m@2"
