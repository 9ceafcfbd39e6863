"""Unit tests of weight-only int8 quantization on a tiny random Llama (no prepared model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from atalaia.models.quantized import (
    QUANT_MANIFEST,
    QUANT_WEIGHTS,
    Int8Embedding,
    Int8Linear,
    PackedHead,
    is_quantized_dir,
    load_dequantized_model,
    load_quantized_model,
    quantize_rows,
    read_quant_manifest,
)
from retrain.quantize import dir_size, quantize_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny") / "fp32"
    model.save_pretrained(path)
    return path


def test_quantize_rows_round_trip_error_is_small() -> None:
    w = torch.randn(32, 64)
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * s[:, None] - w).abs().max(dim=1).values
    assert torch.all(err <= s / 2 + 1e-6)  # at most half a quantization step per row
    zero_q, zero_s = quantize_rows(torch.zeros(2, 4))
    assert zero_q.abs().sum() == 0 and torch.all(zero_s == 1)


def test_int8_layers_match_float_layers() -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 48, bias=True)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        ref, out = linear(x), layer(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05 * float(ref.abs().max()))
    emb = torch.nn.Embedding(20, 16).requires_grad_(False)
    qemb = Int8Embedding.from_embedding(emb)
    ids = torch.tensor([[0, 5, 19]])
    assert torch.allclose(qemb(ids), emb(ids), atol=0.02 * float(emb.weight.abs().max()))
    head = PackedHead(emb.weight)
    h = torch.randn(2, 16)
    assert torch.allclose(head(h), h @ emb.weight.T, atol=0.02 * float((h @ emb.weight.T).abs().max()))


def test_quantize_model_writes_a_complete_int8_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = quantize_model(tiny_model_dir, tmp_path / "int8")
    assert out.path == tmp_path / "int8" and out.method == "int8-weight-only"
    assert is_quantized_dir(out.path) and not is_quantized_dir(tiny_model_dir)
    assert (out.path / QUANT_WEIGHTS).is_file() and not (out.path / "model.safetensors").exists()
    assert (out.path / "config.json").is_file()
    assert out.size_bytes == dir_size(out.path) < dir_size(tiny_model_dir)
    manifest = read_quant_manifest(out.path)
    assert manifest["tied_head"] is True and manifest["quantized_modules"] == 2 * 7 + 1
    assert not list(tmp_path.glob(".int8.tmp-*"))  # written under a temporary name, then renamed
    again = quantize_model(tiny_model_dir, tmp_path / "int8")  # replaces an existing folder
    assert again.size_bytes == out.size_bytes


def test_loaded_int8_model_predicts_like_the_float_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    fp32 = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    q = load_quantized_model(quantize_model(tiny_model_dir, tmp_path / "int8").path)
    ids = torch.randint(0, 128, (2, 12))
    with torch.inference_mode():
        ref = fp32(input_ids=ids).logits
        out = q(input_ids=ids).logits
    assert out.dtype == torch.float32 and out.shape == ref.shape
    corr = torch.corrcoef(torch.stack([ref.flatten(), out.flatten()]))[0, 1]
    assert corr > 0.99
    assert (ref.argmax(-1) == out.argmax(-1)).float().mean() > 0.85
    with torch.inference_mode():
        gen = q.generate(input_ids=ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 9)


def test_bad_folders_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_model(tiny_model_dir, tmp_path / "x", method="int3")
    with pytest.raises(FileNotFoundError):
        quantize_model(tmp_path / "missing", tmp_path / "x")
    out = quantize_model(tiny_model_dir, tmp_path / "int8").path
    manifest = json.loads((out / QUANT_MANIFEST).read_text())
    (out / QUANT_MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ValueError, match="format"):
        load_quantized_model(out)


def test_dequantized_model_is_a_plain_float_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = quantize_model(tiny_model_dir, tmp_path / "int8").path
    q = load_quantized_model(path, bfloat16_stream=False)
    plain = load_dequantized_model(path)
    assert not any(isinstance(m, Int8Linear | Int8Embedding | PackedHead) for m in plain.modules())
    assert plain.lm_head.weight is plain.get_input_embeddings().weight  # tied again
    ids = torch.randint(0, 128, (1, 10))
    with torch.inference_mode():
        a, b = q(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-2 * float(b.abs().max()))
    plain.save_pretrained(tmp_path / "float")  # an ordinary model folder again
    assert (tmp_path / "float" / "model.safetensors").is_file()


def test_the_generator_notes_when_the_first_token_came_out(tiny_model_dir: Path) -> None:
    import time

    from atalaia.models.generator import _FirstTokenClock

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    clock = _FirstTokenClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, streamer=clock, pad_token_id=0)
    assert clock.first_token_at is not None and t0 < clock.first_token_at < time.perf_counter()


def test_training_folder_of_an_onnx_runtime_version(tmp_path: Path) -> None:
    """ONNX weights cannot be fine-tuned: a retrained ORT version is trained from the float32 merge
    it keeps, the base model's export from the folder it was exported from; neither is an error."""
    from atalaia.models.ortgenai import ORT_FORMAT, ORT_MANIFEST
    from retrain.quantize import FLOAT_MERGE_DIR, training_folder

    plain = tmp_path / "float"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert training_folder(plain) == plain

    def ort(name: str, source: Path | None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        manifest = {"format": ORT_FORMAT, "precision": "int4", "source": str(source) if source else None}
        (folder / ORT_MANIFEST).write_text(json.dumps(manifest))
        return folder

    with_merge = ort("v2", tmp_path / "gone")
    (with_merge / FLOAT_MERGE_DIR).mkdir()
    (with_merge / FLOAT_MERGE_DIR / "config.json").write_text("{}")
    assert training_folder(with_merge) == with_merge / FLOAT_MERGE_DIR
    assert training_folder(ort("base-ort", plain)) == plain
    with pytest.raises(ValueError, match="without float weights"):
        training_folder(ort("old", tmp_path / "gone"))
