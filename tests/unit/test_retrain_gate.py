"""Unit tests of the retraining gate, training helpers (device choice, examples, loss curve) and int8 layers."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from atalaia.settings import Settings
from retrain.evaluate import EvalReport, gate, gate_scores
from retrain.train import LoraConfig, collate, encode_example, loss_curve_svg, lr_at, select_device, write_loss_curve

GUARDS = {"similarity": 0.03, "toxicity": 0.02, "perplexity": 0.25, "latency_p50_ms": 0.5}


def report(**values: float) -> EvalReport:
    base: dict[str, Any] = {
        "rouge_l": 0.20,
        "similarity": 0.60,
        "perplexity": 10.0,
        "toxicity": 0.01,
        "latency_p50_ms": 1000.0,
        "tokens_per_s": 20.0,
        "n": 24,
        "per_item": [],
    }
    base.update(values)
    return EvalReport(**base)


def test_gate_promotes_a_clear_improvement() -> None:
    decision = gate(report(rouge_l=0.30, perplexity=8.0), report(), min_improvement=0.02, guards=GUARDS)
    assert decision.promote
    assert decision.reasons[-1] == "all guards passed"
    assert decision.deltas["rouge_l"] == pytest.approx(0.10)
    assert decision.deltas["perplexity"] == pytest.approx(-2.0)


def test_gate_rejects_a_gain_below_the_margin() -> None:
    decision = gate(report(rouge_l=0.215), report(), min_improvement=0.02, guards=GUARDS)
    assert not decision.promote
    assert "below the required +0.0200" in decision.reasons[0]


@pytest.mark.parametrize(
    ("changes", "guard"),
    [
        ({"similarity": 0.55}, "similarity"),  # absolute drop 0.05 > 0.03
        ({"toxicity": 0.05}, "toxicity"),  # absolute rise 0.04 > 0.02
        ({"perplexity": 13.0}, "perplexity"),  # relative rise 30 % > 25 %
        ({"latency_p50_ms": 1600.0}, "latency_p50_ms"),  # relative rise 60 % > 50 %
        ({"similarity": math.nan}, "similarity"),  # an unmeasured guard fails
    ],
)
def test_gate_rejects_a_guard_regression(changes: dict[str, float], guard: str) -> None:
    decision = gate(report(rouge_l=0.40, **changes), report(), min_improvement=0.02, guards=GUARDS)
    assert not decision.promote
    assert any(r.startswith(f"guard {guard} regressed") for r in decision.reasons)


def test_gate_tolerates_regressions_within_the_limits() -> None:
    candidate = report(rouge_l=0.25, similarity=0.58, toxicity=0.025, perplexity=12.4, latency_p50_ms=1490.0)
    assert gate(candidate, report(), min_improvement=0.02, guards=GUARDS).promote


def test_gate_on_score_dicts_with_settings() -> None:
    settings = Settings(gate_min_improvement=0.05, gate_guards={"perplexity": 0.1})
    active = report().metrics()
    assert gate_scores(report(rouge_l=0.26).metrics(), active, settings).promote
    assert not gate_scores(report(rouge_l=0.26, perplexity=11.5).metrics(), active, settings).promote
    with pytest.raises(ValueError, match="lack metric"):
        gate_scores({"rouge_l": 0.3}, active, settings)
    with pytest.raises(ValueError, match="unknown guard"):
        gate(report(), report(), min_improvement=0.0, guards={"bleu": 0.1})


def test_select_device_prefers_cuda_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device(cuda_available=False) == ("cpu", "fp32")
    assert select_device(cuda_available=True, bf16_supported=True) == ("cuda", "bf16")
    assert select_device(cuda_available=True, bf16_supported=False) == ("cuda", "fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert select_device() == ("cuda", "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == ("cpu", "fp32")


def test_lora_config_from_settings() -> None:
    config = LoraConfig.from_settings(Settings(lora_rank=4, lora_targets="q_proj, v_proj", lora_steps=7))
    assert config.rank == 4 and config.target_modules == ("q_proj", "v_proj") and config.steps == 7
    assert LoraConfig.from_settings(Settings()) == LoraConfig()  # dataclass defaults = settings defaults


class _Tok:
    """A character-level stand-in for the ChatML tokenizer."""

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> dict[str, list[int]]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return {"input_ids": [ord(c) for c in text]}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def convert_tokens_to_ids(self, token: str) -> int:
        return 0


def test_encode_example_masks_the_prompt_and_ends_with_im_end() -> None:
    ids, labels = encode_example(_Tok(), [{"role": "user", "content": "Hi?"}], "Yes.", max_seq_len=64) or ([], [])
    prompt_len = len("<user>Hi?<assistant>")
    assert labels[:prompt_len] == [-100] * prompt_len
    assert ids[prompt_len:] == labels[prompt_len:] == [*(ord(c) for c in "Yes."), 0]
    cut = encode_example(_Tok(), [{"role": "user", "content": "Hi?"}], "A long answer", max_seq_len=prompt_len + 5)
    assert cut is not None and len(cut[0]) == prompt_len + 5 and cut[0][-1] == 0
    assert encode_example(_Tok(), [{"role": "user", "content": "Hi?"}], "A", max_seq_len=prompt_len + 2) is None


def test_collate_pads_right_with_ignored_labels() -> None:
    batch = collate([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_learning_rate_schedule() -> None:
    rates = [lr_at(s, 100, 1e-3) for s in range(100)]
    assert rates[4] == pytest.approx(1e-3)  # end of the 5-step warm-up
    assert rates[0] < rates[4] and all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert rates[-1] > 0


def test_loss_curve_files(tmp_path: Path) -> None:
    path = write_loss_curve([3.0, 2.5, float("nan"), 2.0], tmp_path)
    assert path.exists() and path.suffix in {".png", ".svg"}
    assert (tmp_path / "loss_curve.csv").read_text().splitlines()[:2] == ["step,loss", "1,3.000000"]
    svg = loss_curve_svg([1.0])
    assert svg.count("<polyline") == 1


def test_a_latency_guard_fails_closed_between_versions_answered_in_different_batches() -> None:
    """An OpenVINO version answers every holdout question at once (latency = batch time / n); a
    transformers version one at a time: their latencies do not compare, so the guard refuses."""
    from atalaia.settings import Settings
    from retrain.evaluate import gate_scores

    settings = Settings(gate_min_improvement=0.0, gate_guards={"latency_p50_ms": 0.5})
    batched = {"rouge_l": 0.3, "latency_p50_ms": 100.0, "batch_size": 16.0}
    alone = {"rouge_l": 0.2, "latency_p50_ms": 900.0, "batch_size": 1.0}
    decision = gate_scores(batched, alone, settings)
    assert not decision.promote
    assert any("not comparable" in r and "ATALAIA_GATE_MAX_PREFILL_SLOWDOWN" in r for r in decision.reasons)
    # Same batching: the guard compares as before.
    assert gate_scores(batched, {**alone, "batch_size": 16.0}, settings).promote
    # Scores stored before batch sizes were recorded compare as before too.
    assert gate_scores({k: v for k, v in batched.items() if k != "batch_size"}, alone, settings).promote
