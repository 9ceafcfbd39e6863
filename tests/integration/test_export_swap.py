"""Hot swap and roll back between transformers and the ONNX Runtime / OpenVINO GenAI backends under load.

On real Kafka and PostgreSQL: the service starts on the float32 base (transformers), a deploy
event from the models topic swaps in the base model's int4 ORT export
(:mod:`atalaia.models.ortgenai`) or int8 OpenVINO export (:mod:`atalaia.models.ovgenai`), a
rollback event swaps back to the transformers version; no
request of the steady load fails, and answers come from each version in turn. Both versions are
registered first: inference obeys model events only for registered versions
(``inference/authority.py``).

Restored from f01ed88 (dropped when it timed out on a saturated machine): requests now ask for 4
tokens of a bare question, so one request takes a few seconds even under contention, and the waits
are sized for a shared 2-core host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, delete

from atalaia.events import ModelEvent, utcnow
from atalaia.models.exports import export_dir_for, prepare_export
from atalaia.settings import Settings
from atalaia.storage import tables as t
from atalaia.storage.db import upgrade
from atalaia.topics import ensure_topics
from tests.conftest import MAIN_SETTINGS
from tests.integration.services import log_text, service, wait_until

pytestmark = pytest.mark.integration


def _ask(base: str, question: str) -> httpx.Response:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
    }
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=240)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _register(url: str, versions: dict[str, tuple[str, str | None]]) -> None:
    """Register ``version -> (folder, quantization)`` (replacing rows left by an earlier run)."""
    upgrade(url)
    with create_engine(url).begin() as conn:
        for version, (path, quantization) in versions.items():
            conn.execute(delete(t.model_versions).where(t.model_versions.c.version == version))
            conn.execute(
                t.model_versions.insert().values(
                    version=version,
                    status="candidate",
                    artefact_path=path,
                    quantization=quantization,
                    metrics={},
                    created_at=utcnow(),
                )
            )


# Two model loads and three waits for answers: over the default 600 s on a saturated shared host.
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("fmt", ["ort-int4", "ov-int8"])
def test_swap_to_an_export_and_roll_back_to_transformers_under_load(
    isolated_settings: Settings,
    models_dir,  # type: ignore[no-untyped-def]
    fmt: str,
) -> None:
    ORT_VERSION = f"smollm2-135m-instruct@{fmt}-swap"
    ort_dir = prepare_export(
        MAIN_SETTINGS.generator_path, export_dir_for(models_dir, MAIN_SETTINGS.generator_model, fmt), fmt
    )
    settings = isolated_settings.model_copy(update={"cache_enabled": False, "rag_enabled": False})
    ensure_topics(settings)
    _register(
        settings.database_url,
        {ORT_VERSION: (str(ort_dir), fmt), settings.model_version: (str(MAIN_SETTINGS.generator_path), None)},
    )
    base = f"http://127.0.0.1:{settings.inference_port}"
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = _ask(base, f"How many vacation days do I get? ({i})")
            except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                statuses.append((0, repr(exc)))
                continue
            statuses.append((r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))

    def serving(version: str, event: ModelEvent, producer: KafkaProducer) -> bool:
        # Model events are idempotent: publish until the follower (reading from the end) sees one.
        producer.send(settings.topic("models"), value=event.to_json()).get(timeout=10)
        return bool(httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"] == version)

    def wait(predicate: Callable[[], object], what: str) -> None:
        # The failure says what the load saw and what the service logged at that moment.
        try:
            wait_until(predicate, 420, what, interval=3)
        except AssertionError as exc:
            tail = log_text(settings, "serve")[-3000:]
            raise AssertionError(f"{exc}\nlast answers: {statuses[-5:]}\n{tail}") from None

    with service("serve", settings):
        wait(lambda: _healthy(base), "the inference service")
        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait(lambda: len(statuses) >= 1, "a first answer from the transformers base")
            producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
            deploy = ModelEvent(type="deploy", model_version=ORT_VERSION, artefact_path=str(ort_dir), reason="test")
            wait(lambda: serving(ORT_VERSION, deploy, producer), "the swap")
            wait(lambda: any(m == ORT_VERSION for _, m in statuses[-3:]), f"answers from the {fmt} version")
            back = ModelEvent(
                type="rollback",
                model_version=settings.model_version,
                artefact_path=str(MAIN_SETTINGS.generator_path),
                previous_version=ORT_VERSION,
                reason="test",
            )
            wait(lambda: serving(settings.model_version, back, producer), "the rollback")
            producer.close()
            n = len(statuses)
            wait(lambda: len(statuses) > n and statuses[-1][1] == settings.model_version, "answers from the base again")
        finally:
            stop.set()
            thread.join(300)
    assert statuses and all(code == 200 for code, _ in statuses), statuses
    versions = [m for _, m in statuses]
    assert ORT_VERSION in versions
    assert versions[0] == settings.model_version and versions[-1] == settings.model_version
    # The ORT answers sit between the transformers ones: swap, then rollback.
    first, last = versions.index(ORT_VERSION), len(versions) - 1 - versions[::-1].index(ORT_VERSION)
    assert all(v == ORT_VERSION for v in versions[first : last + 1])
