"""Stop strings and length cuts behave the same on both generation backends.

- An empty stop string is ignored (it would match everywhere); any other stop string works on
  transformers too, even one transformers' own ``stop_strings`` cannot map to tokens (emoji):
  generation stops and the text is cut at it, as on ONNX Runtime GenAI.
- A reply cut by ``max_tokens`` inside a multi-byte character does not end with U+FFFD, in
  ``chat`` and in the last streamed piece; usage still counts every generated token.

The real SmolLM2 folders are used (greedy, few tokens): its answer to :data:`EMOJI` is a run of
emoji, several tokens each, which is what both defects need.
"""

from __future__ import annotations

import pytest

from atalaia.models.generator import ChatResult, Generator, _drop_partial_char, _stop_list, _stop_text_criteria
from tests.conftest import MAIN_SETTINGS

EMOJI = [{"role": "user", "content": "Reply only with three emoji about happiness 😀🎉"}]


@pytest.fixture(scope="module", params=["transformers", "onnxruntime-genai"])
def generator(request: pytest.FixtureRequest) -> Generator:
    if request.param == "transformers":
        return Generator.load(MAIN_SETTINGS.generator_path)
    return Generator.load(request.getfixturevalue("ort_int4_dir"))


def _streamed(gen: Generator, **kwargs: object) -> tuple[list[str], ChatResult]:
    stream = gen.chat_stream(EMOJI, **kwargs)  # type: ignore[arg-type]
    pieces = list(stream)
    assert stream.result is not None
    return pieces, stream.result


def test_empty_stop_strings_are_ignored() -> None:
    assert _stop_list(None) == [] and _stop_list(["", "x", ""]) == ["x"]
    # No criterion at all: the old code handed transformers stop_strings=[], which it refuses.
    assert _stop_text_criteria(None, [""], 0) == []


def test_only_a_trailing_replacement_character_is_dropped() -> None:
    assert _drop_partial_char("ab\ufffd") == "ab"
    assert _drop_partial_char("a\ufffdb") == "a\ufffdb"
    assert _drop_partial_char("ab") == "ab"


def test_empty_stop_is_ignored_on_both_backends(generator: Generator) -> None:
    plain = generator.chat(EMOJI, max_tokens=12)
    assert generator.chat(EMOJI, max_tokens=12, stop=[""]) == plain
    pieces, result = _streamed(generator, max_tokens=12, stop=[""])
    assert result == plain and "".join(pieces) == plain.text


def test_emoji_stop_cuts_the_reply_on_both_backends(generator: Generator) -> None:
    plain = generator.chat(EMOJI, max_tokens=20)
    assert "🎉" in plain.text  # the premise: the greedy answer contains the stop string
    expected = plain.text[: plain.text.index("🎉")]
    result = generator.chat(EMOJI, max_tokens=20, stop=["🎉", ""])
    assert result.text == expected and result.finish_reason == "stop"
    # Generation stopped at the stop string rather than running to max_tokens.
    assert result.completion_tokens < plain.completion_tokens
    pieces, streamed = _streamed(generator, max_tokens=20, stop=["🎉", ""])
    assert streamed == result and "".join(pieces) == expected
    assert all("🎉" not in p for p in pieces)


def test_batched_stop_strings_match_one_at_a_time(generator: Generator) -> None:
    conversations = [EMOJI, [{"role": "user", "content": "Say hello 🎉"}]]
    alone = [generator.chat(m, max_tokens=10, stop=["🎉"]) for m in conversations]
    assert generator.chat_batch(conversations, max_tokens=10, stop=["🎉"]) == alone


@pytest.mark.parametrize("max_tokens", [19, 20])
def test_length_cut_inside_a_character_drops_it(generator: Generator, max_tokens: int) -> None:
    # Each emoji of the answer takes three tokens: 19 and 20 both end inside one.
    result = generator.chat(EMOJI, max_tokens=max_tokens)
    assert result.finish_reason == "length" and result.completion_tokens == max_tokens
    assert result.text and not result.text.endswith("\ufffd")
    pieces, streamed = _streamed(generator, max_tokens=max_tokens)
    assert streamed == result and "".join(pieces) == result.text
    assert not any(p.endswith("\ufffd") for p in pieces)
