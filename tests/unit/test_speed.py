"""The serving speed probe (prefill per prompt token, decode tokens/s) and the per-host format choice."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from atalaia.models.quantized import QUANT_MANIFEST, is_quantized_dir
from atalaia.models.speed import (
    FLOAT32,
    SpeedReport,
    SpeedSample,
    compare_speed,
    cpu_capability,
    measure_once,
    probe_messages,
    slowdown_reasons,
    speed_ratios,
)
from atalaia.settings import Settings
from retrain.quantize import FORMAT_RECORD, quantize_for_host


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_model: LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "merged"
    tiny_model.save_pretrained(path)
    return path


class TinyGenerator:
    """What the probe needs of a Generator: ``model`` and ``_encode``."""

    def __init__(self, model: Any, prompt_len: int = 40) -> None:
        self.model = model
        self.prompt_len = prompt_len

    def _encode(self, messages: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.arange(self.prompt_len).remainder(100).unsqueeze(0)}


def test_one_probe_run_times_the_prefill_and_each_decoding_step(tiny_model: LlamaForCausalLM) -> None:
    sample = measure_once(tiny_model, torch.arange(30).unsqueeze(0), decode_tokens=5)
    assert sample.prompt_tokens == 30 and sample.decode_tokens == 5
    assert sample.prefill_ms > 0 and sample.decode_ms > 0
    assert sample.prefill_ms_per_token == pytest.approx(sample.prefill_ms / 30)
    assert sample.decode_tokens_per_s == pytest.approx(5 / (sample.decode_ms / 1000))
    with pytest.raises(ValueError):
        measure_once(tiny_model, torch.arange(30).unsqueeze(0), decode_tokens=0)


def test_compare_speed_reports_medians_and_best_runs(tiny_model: LlamaForCausalLM) -> None:
    reports = compare_speed(
        {"a": TinyGenerator(tiny_model), "b": TinyGenerator(tiny_model, 50)}, [], repeats=3, decode_tokens=4
    )
    assert set(reports) == {"a", "b"}
    a = reports["a"]
    assert a.runs == 3 and len(a.samples) == 3 and reports["b"].prompt_tokens == 50
    assert a.best_prefill_ms_per_token <= a.prefill_ms_per_token
    assert a.best_decode_tokens_per_s >= a.decode_tokens_per_s
    json.dumps(a.as_dict())  # recorded in run steps and folders


def test_ratios_read_times_slower_and_limits_apply_per_phase() -> None:
    ref = SpeedReport.from_samples([SpeedSample(400, 800.0, 1000.0, 20)])  # 2 ms/token, 20 tok/s
    cand = SpeedReport.from_samples([SpeedSample(400, 1200.0, 500.0, 20)])  # 3 ms/token, 40 tok/s
    ratios = speed_ratios(cand, ref)
    assert ratios == {"prefill_ratio": pytest.approx(1.5), "decode_ratio": pytest.approx(0.5)}
    # Faster decoding does not make up for a slower prefill: each phase has its limit.
    (reason,) = slowdown_reasons(ratios, max_prefill=1.2, max_decode=1.2, what="int8")
    assert "prefill is 1.50x slower" in reason
    assert slowdown_reasons(ratios, max_prefill=1.5, max_decode=1.0, what="x") == []
    assert (
        len(slowdown_reasons({"prefill_ratio": math.nan, "decode_ratio": 1.0}, max_prefill=9, max_decode=9, what="x"))
        == 1
    )


def test_the_probe_prompt_has_the_served_shape(tmp_path: Path) -> None:
    messages = probe_messages(Settings(home=tmp_path))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].count("[") >= 3  # rag_top_k passages, as the service builds it
    # Also without RAG: prefill per token is measured on a prompt long enough to time.
    assert probe_messages(Settings(home=tmp_path, rag_enabled=False)) == messages
    empty = tmp_path / "no-handbook"
    empty.mkdir()
    bare = probe_messages(Settings(home=tmp_path, regulations_dir=empty))
    assert len(bare[0]["content"]) < len(messages[0]["content"])


def test_cpu_capability_names_the_kernel_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cpu = cpu_capability()
    assert cpu["aten"] == str(torch.backends.cpu.get_cpu_capability())
    assert cpu["env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert isinstance(cpu["bf16_native"], bool)


def _fake_probe(prefill: float, decode: float) -> Any:
    calls: list[dict[str, Path]] = []

    def probe(folders: dict[str, Path], settings: Settings, *, reference: str) -> dict[str, Any]:
        calls.append(dict(folders))
        (other,) = [n for n in folders if n != reference]
        assert is_quantized_dir(folders[other])  # the int8 folder is probed as written
        return {
            "ratios": {other: {"prefill_ratio": prefill, "decode_ratio": decode}},
            "threads": 1,
            "cpu": {"aten": "AVX2"},
        }

    probe.calls = calls  # type: ignore[attr-defined]
    return probe


def test_an_int8_model_slower_than_float32_is_not_deployed(tiny_model_dir: Path, tmp_path: Path) -> None:
    probe = _fake_probe(prefill=1.6, decode=0.4)  # as measured on AVX2: slower prefill, faster decoding
    out = quantize_for_host(tiny_model_dir, tmp_path / "v.partial", Settings(home=tmp_path), probe=probe)
    assert out.method == FLOAT32 and "prefill is 1.60x slower" in out.reason and "AVX2" in out.reason
    assert not is_quantized_dir(out.path) and (out.path / "model.safetensors").is_file()
    record = json.loads((out.path / FORMAT_RECORD).read_text())
    assert record["format"] == FLOAT32 and record["tried"] == "int8-weight-only"
    assert record["speed"]["ratios"]["int8-weight-only"]["prefill_ratio"] == 1.6
    assert out.speed is not None and out.size_bytes > 0
    # The float32 folder loads as an ordinary model with the merge's weights.
    reloaded = LlamaForCausalLM.from_pretrained(out.path)
    original = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(reloaded.model.embed_tokens.weight, original.model.embed_tokens.weight)


def test_an_int8_model_at_least_as_fast_is_deployed(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = quantize_for_host(
        tiny_model_dir, tmp_path / "v.partial", Settings(home=tmp_path), probe=_fake_probe(0.8, 0.5)
    )
    assert out.method == "int8-weight-only" and (out.path / QUANT_MANIFEST).is_file()
    assert json.loads((out.path / FORMAT_RECORD).read_text())["format"] == "int8-weight-only"
    # A tolerance above 1 lets a slightly slower int8 model through; 1.0 (the default) does not.
    tolerant = Settings(home=tmp_path, quantized_max_slowdown=1.1)
    assert quantize_for_host(tiny_model_dir, tmp_path / "w", tolerant, probe=_fake_probe(1.05, 1.0)).method != FLOAT32
    assert (
        quantize_for_host(tiny_model_dir, tmp_path / "w", Settings(home=tmp_path), probe=_fake_probe(1.05, 1.0)).method
        == FLOAT32
    )
