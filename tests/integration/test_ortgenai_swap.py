"""Hot swap and roll back between the transformers and ONNX Runtime GenAI backends under load.

The service starts on the float32 base, a deploy event swaps in the base model's int4 ORT export
(``atalaia.models.ortgenai``), a rollback event swaps back; no request of the steady load fails.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from kafka import KafkaProducer

from atalaia.events import ModelEvent
from atalaia.models.ortgenai import ort_dir_for, prepare_ort
from atalaia.settings import Settings
from atalaia.topics import ensure_topics
from tests.conftest import MAIN_SETTINGS
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration

ORT_VERSION = "smollm2-135m-instruct@ort-int4"


def _ask(base: str, question: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=180)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_swap_to_ort_and_roll_back_under_load(isolated_settings: Settings, models_dir) -> None:  # type: ignore[no-untyped-def]
    ort_dir = prepare_ort(
        MAIN_SETTINGS.generator_path, ort_dir_for(models_dir, MAIN_SETTINGS.generator_model, "int4"), precision="int4"
    )
    settings = isolated_settings.model_copy(update={"cache_enabled": False})
    ensure_topics(settings)
    base = f"http://127.0.0.1:{settings.inference_port}"
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            r = _ask(base, f"How many vacation days do I get? ({i})")
            statuses.append((r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))

    def serving(version: str, event: ModelEvent, producer: KafkaProducer) -> bool:
        # Model events are idempotent: publish until the follower (reading from the end) sees one.
        producer.send(settings.topic("models"), value=event.to_json()).get(timeout=10)
        return httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"] == version

    with service("serve", settings):
        wait_until(lambda: _healthy(base), 300, "the inference service\n" + log_text(settings, "serve")[-2000:])
        thread = threading.Thread(target=load)
        thread.start()
        try:
            producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
            deploy = ModelEvent(type="deploy", model_version=ORT_VERSION, artefact_path=str(ort_dir), reason="test")
            wait_until(
                lambda: serving(ORT_VERSION, deploy, producer),
                300,
                "the swap\n" + log_text(settings, "serve")[-2000:],
                interval=3,
            )
            wait_until(lambda: any(m == ORT_VERSION for _, m in statuses[-3:]), 300, "answers from the ORT version")
            back = ModelEvent(
                type="rollback",
                model_version=settings.model_version,
                artefact_path=str(MAIN_SETTINGS.generator_path),
                reason="test",
            )
            wait_until(
                lambda: serving(settings.model_version, back, producer),
                300,
                "the rollback\n" + log_text(settings, "serve")[-2000:],
                interval=3,
            )
            producer.close()
            wait_until(lambda: statuses[-1][1] == settings.model_version, 300, "answers from the base again")
        finally:
            stop.set()
            thread.join(180)
    assert statuses and all(code == 200 for code, _ in statuses), statuses
    versions = [m for _, m in statuses]
    assert ORT_VERSION in versions
    assert versions[0] == settings.model_version and versions[-1] == settings.model_version
