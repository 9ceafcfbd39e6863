"""Toxicity scorers: the offline default, Detoxify through its real loading path, backend choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from atalaia.metrics.toxicity import (
    DetoxifyScorer,
    ProfanityCheckScorer,
    ToxicityScorer,
    build_toxicity_scorer,
)
from atalaia.settings import Settings
from tests.helpers_toxicity import build_tiny_detoxify_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_detoxify_checkpoint(tmp_path_factory.mktemp("detoxify"))


def test_profanity_scorer_separates_insults_from_clean_text() -> None:
    scorer = ProfanityCheckScorer()
    assert scorer.backend == "alt-profanity-check"
    insult, clean = scorer.score(["You are a stupid idiot.", "Thank you, the report is due on Friday."])
    assert insult > 0.9
    assert clean < 0.2


def test_profanity_scorer_matches_predict_prob() -> None:
    # The scorer computes alt-profanity-check's model without scikit-learn's per-call overhead; the
    # probabilities must be the package's own.
    from profanity_check import predict_prob

    scorer = ProfanityCheckScorer()
    assert scorer._fast is not None, "fast path not used: alt-profanity-check's model changed shape"
    texts = ["what the hell is this shit", "Fuck off.", "", "Capital requirements apply quarterly.", "idiot " * 50]
    assert scorer.score(texts) == pytest.approx(list(predict_prob(texts)), abs=1e-12)


def test_profanity_scorer_batches_in_order() -> None:
    scorer = ProfanityCheckScorer(batch_size=2)
    texts = ["you idiot", "hello", "good morning", "shut up you moron", "thanks"]
    assert scorer.score(texts) == pytest.approx(ProfanityCheckScorer().score(texts))
    assert scorer.score([]) == []
    with pytest.raises(TypeError):
        scorer.score("a single string")


def test_detoxify_scores_a_batch(tiny_checkpoint: tuple[Path, Path]) -> None:
    checkpoint, config_dir = tiny_checkpoint
    scorer = DetoxifyScorer(checkpoint, config_dir, batch_size=2)
    assert isinstance(scorer, ToxicityScorer)
    assert scorer.backend == f"detoxify:{checkpoint.name}"
    assert scorer.class_names[0] == "toxicity"  # Detoxify's renaming of "toxic"
    texts = ["you are an idiot", "have a nice day", "", "word " * 1000]  # last one beyond max length
    scores = scorer.score(texts)
    assert len(scores) == len(texts)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    # Batching does not change values (padding is masked).
    assert scores[:2] == pytest.approx(DetoxifyScorer(checkpoint, config_dir, batch_size=32).score(texts[:2]), abs=1e-5)


def test_detoxify_with_hub_model_type_uses_config_dir(tiny_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    # Detoxify's published checkpoints name a Hub model ("bert-base-uncased"); offline, the config
    # folder stands in for it.
    import torch

    checkpoint, config_dir = tiny_checkpoint
    loaded = torch.load(checkpoint, weights_only=False)
    loaded["config"]["arch"]["args"]["model_type"] = "bert-base-uncased"
    hub_checkpoint = tmp_path / "hub-named.ckpt"
    torch.save(loaded, hub_checkpoint)
    assert len(DetoxifyScorer(hub_checkpoint, config_dir).score(["hello"])) == 1


def test_detoxify_missing_files_name_the_variables(tiny_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, config_dir = tiny_checkpoint
    with pytest.raises(FileNotFoundError, match="ATALAIA_TOXICITY_CHECKPOINT"):
        DetoxifyScorer(tmp_path / "missing.ckpt", config_dir)
    with pytest.raises(FileNotFoundError, match="ATALAIA_TOXICITY_CONFIG_DIR"):
        DetoxifyScorer(checkpoint, tmp_path / "missing-dir")


def test_detoxify_malformed_checkpoint(tiny_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    _, config_dir = tiny_checkpoint
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match=r"ATALAIA_TOXICITY_CHECKPOINT=.*not a readable torch file"):
        DetoxifyScorer(garbage, config_dir)
    no_config = tmp_path / "no-config.ckpt"
    torch.save({"state_dict": {}}, no_config)
    with pytest.raises(ValueError, match=r"ATALAIA_TOXICITY_CHECKPOINT=.*not a Detoxify checkpoint"):
        DetoxifyScorer(no_config, config_dir)


def test_build_toxicity_scorer_picks_backend(tiny_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, config_dir = tiny_checkpoint
    default = build_toxicity_scorer(Settings(home=tmp_path))
    assert isinstance(default, ProfanityCheckScorer)

    detoxify = build_toxicity_scorer(
        Settings(home=tmp_path, toxicity_checkpoint=checkpoint, toxicity_config_dir=config_dir)
    )
    assert isinstance(detoxify, DetoxifyScorer)
    assert detoxify.backend == f"detoxify:{checkpoint.name}"

    with pytest.raises(ValueError, match=r"ATALAIA_TOXICITY_CHECKPOINT.*ATALAIA_TOXICITY_CONFIG_DIR"):
        build_toxicity_scorer(Settings(home=tmp_path, toxicity_checkpoint=checkpoint))
