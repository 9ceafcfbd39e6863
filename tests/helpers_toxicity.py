"""Build a tiny, random, Detoxify-compatible checkpoint for tests of the real loading path.

Detoxify's published checkpoints download from GitHub releases, which tests cannot reach. What
Detoxify needs offline (see the shared README, "Toxicity") is:

- a checkpoint dict with ``config.arch.args`` = exactly ``model_type``, ``model_name``,
  ``tokenizer_name``, ``num_classes``; ``config.dataset.args.classes``; and ``state_dict``;
- ``model_type`` pointing to a *local* config folder, because Detoxify always passes it to
  ``from_pretrained``;
- a Hugging Face config + tokenizer folder (``huggingface_config_path``) whose config already has
  ``num_labels == num_classes``: Detoxify builds the model from that folder's config, not from the
  ``num_labels`` it computes, so a mismatch fails on the classifier's shape.

The model is random (its scores mean nothing); it only proves that files load and scores flow.
"""

from __future__ import annotations

from pathlib import Path

# The six Jigsaw classes of Detoxify's "original" model, in its order. Detoxify renames "toxic" to
# "toxicity" when it loads them.
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]

_SENTENCES = [
    "you are an idiot and everybody knows it",
    "have a nice day and thank you for the help",
    "the regulation applies to every bank in the union",
    "shut up you stupid fool",
    "what is the capital requirement for small banks",
    "please read the document before you answer",
    "I hate you and your ugly face",
    "the quick brown fox jumps over the lazy dog",
]


def build_tiny_detoxify_checkpoint(directory: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random BERT Detoxify checkpoint and its config folder under ``directory``.

    Parameters
    ----------
    directory
        Folder to write into (created if missing).
    seed
        Seed of the random weights, so two builds give the same scores.

    Returns
    -------
    tuple[Path, Path]
        ``(checkpoint_path, config_dir)``: the ``.ckpt`` file and the Hugging Face config/tokenizer
        folder, as ``ATALAIA_TOXICITY_CHECKPOINT`` and ``ATALAIA_TOXICITY_CONFIG_DIR`` expect.
    """
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    config_dir = directory / "tiny-bert"
    config_dir.mkdir(exist_ok=True)

    # A WordPiece vocab trained here, so nothing is downloaded; small but with the special tokens
    # BertTokenizer expects.
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(_SENTENCES, vocab_size=200, min_frequency=1, show_progress=False)
    wordpiece.save_model(str(config_dir))  # writes vocab.txt
    tokenizer = BertTokenizer(vocab_file=str(config_dir / "vocab.txt"), do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(str(config_dir))

    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    # Detoxify builds the model from this folder's config: it must have one label per class.
    config.num_labels = len(CLASSES)
    config.save_pretrained(str(config_dir))

    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    checkpoint = {
        "config": {
            "arch": {
                "args": {
                    "model_type": str(config_dir),
                    "model_name": "BertForSequenceClassification",
                    "tokenizer_name": "BertTokenizer",
                    "num_classes": len(CLASSES),
                }
            },
            "dataset": {"args": {"classes": list(CLASSES)}},
        },
        "state_dict": model.state_dict(),
    }
    checkpoint_path = directory / "tiny-detoxify.ckpt"
    torch.save(checkpoint, checkpoint_path)
    return checkpoint_path, config_dir
