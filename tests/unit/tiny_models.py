"""A tiny random Llama with the prepared SmolLM2 tokenizer, for generator tests that need the real
chat template and ``<|im_end|>`` but not real weights (milliseconds per step)."""

from __future__ import annotations

from atalaia.models.generator import Generator
from tests.conftest import MAIN_SETTINGS


def tiny_chat_generator(*, layers: int = 2, max_positions: int = 256) -> Generator:
    """A :class:`Generator` over a seeded random Llama (hidden size 32) and the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(MAIN_SETTINGS.generator_path, local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    return Generator(LlamaForCausalLM(config).eval(), tokenizer)
