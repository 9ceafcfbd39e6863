"""The retraining ML steps on the real SmolLM2: data set → LoRA (a few steps) → merge → int8 → serve → evaluate.

Bounded to a handful of small steps so that it runs in about two minutes on a 2-core CPU; the
quality and speed numbers are measured by ``bench/retrain.py`` and ``bench/quantize.py``.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from atalaia.models.generator import Generator
from atalaia.models.quantized import is_quantized_dir
from atalaia.settings import Settings
from atalaia.storage.tables import feedback, inference_events, metadata
from retrain.dataset import build_dataset
from retrain.evaluate import evaluate_model, load_holdout, reference_perplexity
from retrain.quantize import dir_size, quantize_model
from retrain.train import LoraConfig, train_lora

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "How many days of annual leave do employees in Brazil get?"}]


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(eng)
    now = datetime.now(UTC)
    event_id = str(uuid.uuid4())
    with eng.begin() as conn:
        conn.execute(
            inference_events.insert(),
            {
                "event_id": event_id,
                "ts": now,
                "service": "s",
                "model_version": "m@base",
                "messages": QUESTION,
                "response": "Twelve months.",
                "context": [],
                "latency_ms": 1.0,
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "cost": 0.0,
                "cache_hit": False,
                "reference": None,
                "request_id": None,
                "metadata": {},
                "ingested_at": now,
            },
        )
        conn.execute(
            feedback.insert(),
            {
                "event_id": str(uuid.uuid4()),
                "inference_event_id": event_id,
                "ts": now,
                "rating": -1,
                "corrected_answer": "30 calendar days for each 12-month period; ask HR at hr@atalaia.example.",
                "comment": None,
                "metadata": {},
                "ingested_at": now,
            },
        )
    return eng


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    # A small validation split: its loss is computed twice per training run. The feedback filter's
    # PII check is off so that the correction (with an unpublished e-mail) shows the cleaning's
    # redaction; with it on, the correction would be dropped (tests/unit/test_feedback_filter.py).
    return Settings(
        home=tmp_path / "home",
        models_dir=models_dir,
        torch_threads=0,
        dataset_val_fraction=0.02,
        feedback_reject_pii=False,
    )


def small_config(settings: Settings, steps: int = 3) -> LoraConfig:
    return LoraConfig.from_settings(
        settings, steps=steps, batch_size=2, rank=4, alpha=8, target_modules=("q_proj", "v_proj"), max_seq_len=96
    )


def test_train_merge_quantize_serve_and_evaluate(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    dataset = build_dataset(engine, settings, tmp_path / "datasets", include_regulations=False)
    assert dataset.n_feedback == 1 and dataset.redactions == {"email": 1}

    seen: list[tuple[int, float]] = []
    result = train_lora(
        settings.generator_path,
        dataset,
        tmp_path / "run",
        small_config(settings),
        progress=False,
        on_step=lambda step, loss: seen.append((step, loss)),
    )
    assert [s for s, _ in seen] == [1, 2, 3] and result.losses == [loss for _, loss in seen]
    assert result.steps == 3 and all(math.isfinite(v) and v > 0 for v in result.losses)
    assert (result.device, result.dtype) == ("cpu", "fp32")
    assert result.val_loss_before is not None and result.val_loss_after is not None
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.merged_dir / "config.json").is_file() and (result.merged_dir / "model.safetensors").is_file()
    assert result.loss_curve_path.is_file() and (result.loss_curve_path.parent / "loss_curve.csv").is_file()
    assert result.trainable_params > 0

    merged = Generator.load(result.merged_dir)
    assert merged.chat(QUESTION, max_tokens=8).completion_tokens > 0
    del merged

    quantized = quantize_model(result.merged_dir, tmp_path / "int8")
    assert is_quantized_dir(quantized.path)
    assert quantized.size_bytes < 0.35 * dir_size(result.merged_dir)
    served = Generator.load(quantized.path)
    reply = served.chat(QUESTION, max_tokens=12)
    assert reply.completion_tokens > 0 and reply.text.strip()
    streamed = served.chat_stream(QUESTION, max_tokens=12)
    assert "".join(streamed) == reply.text  # the service's streaming path works on int8 too
    del served

    holdout = load_holdout(settings)
    fp32_ppl = reference_perplexity(result.merged_dir, holdout, limit=6)
    int8_ppl = reference_perplexity(quantized.path, holdout, limit=6)
    assert 1.0 < fp32_ppl < 1000 and abs(int8_ppl / fp32_ppl - 1) < 0.05

    report = evaluate_model(quantized.path, holdout, rag=True, settings=settings, limit=2, max_tokens=12)
    assert report.n == 2 and len(report.per_item) == 2
    assert 0.0 <= report.rouge_l <= 1.0 and -1.0 <= report.similarity <= 1.0
    assert math.isfinite(report.perplexity) and report.tokens_per_s > 0 and report.latency_p50_ms > 0
    assert report.per_item[0]["prediction"] and report.per_item[0]["reference"] == holdout[0].answer


def test_an_aborted_training_leaves_no_merged_model(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    dataset = build_dataset(engine, settings, tmp_path / "datasets", include_qa=False, include_regulations=False)

    def abort(step: int, loss: float) -> None:
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        train_lora(
            settings.generator_path, dataset, tmp_path / "run", small_config(settings), progress=False, on_step=abort
        )
    assert not (tmp_path / "run" / "merged").exists()
