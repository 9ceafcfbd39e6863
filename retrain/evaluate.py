"""Step 3 of a retraining run: score a model on the holdout and decide whether to promote it.

:func:`evaluate_model` generates an answer to every holdout question (greedy, as the service
answers) and scores it against the reference answer:

- ``rouge_l``: ROUGE-L F-measure (the quality metric the gate improves on);
- ``similarity``: all-MiniLM-L6-v2 cosine similarity of answer and reference;
- ``perplexity``: of the *reference* answers under the model, given the same prompt (teacher
  forcing, answer tokens only, pooled over the holdout): how well the model knows the facts;
- ``toxicity``: mean toxicity of the answers (the configured scorer);
- ``latency_p50_ms`` and ``tokens_per_s``: of generation on this machine.

With ``rag=True`` the prompt is built as the inference service builds it (:mod:`atalaia.rag`:
top-``k`` handbook passages in a system message); otherwise it is the bare question.

:func:`gate` compares a candidate's report with the active version's: promote only when ROUGE-L
improves by at least ``min_improvement`` and no guard metric regresses beyond its limit.

Examples
--------
>>> a = EvalReport(0.20, 0.60, 12.0, 0.01, 900.0, 20.0, 24, [])
>>> c = EvalReport(0.26, 0.62, 9.0, 0.01, 950.0, 19.0, 24, [])
>>> decision = gate(c, a, min_improvement=0.02, guards={"perplexity": 0.1, "latency_p50_ms": 0.5})
>>> decision.promote, round(decision.deltas["rouge_l"], 3)
(True, 0.06)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atalaia.metrics.stats import percentile
from atalaia.qa import QAItem, load_qa
from retrain.train import encode_example, user_messages

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

#: Metrics where higher is better; the others (perplexity, toxicity, latency) are better lower.
HIGHER_IS_BETTER = frozenset({"rouge_l", "similarity", "tokens_per_s"})
#: Guards whose limit is a fraction of the active value; the others are absolute (0..1 scores).
RELATIVE_GUARDS = frozenset({"perplexity", "latency_p50_ms", "tokens_per_s"})
#: Guards on the evaluation's own timings (see :func:`_gate_values` on batched answers).
TIMED_GUARDS = frozenset({"latency_p50_ms", "tokens_per_s"})
METRICS = ("rouge_l", "similarity", "perplexity", "toxicity", "latency_p50_ms", "tokens_per_s")


@dataclass(frozen=True)
class EvalReport:
    """Scores of one model on the holdout.

    Attributes
    ----------
    rouge_l, similarity
        Means over items (0..1).
    perplexity
        Of the reference answers, pooled over all answer tokens.
    toxicity
        Mean toxicity of the generated answers (0..1).
    latency_p50_ms, tokens_per_s
        Median generation time per item and generated tokens per second over all items (over the
        batches' wall time when batched).
    n
        Items scored.
    per_item
        One dict per item: ``id``, ``question``, ``reference``, ``prediction``, ``rouge_l``,
        ``similarity``, ``perplexity``, ``toxicity``, ``latency_ms``, ``completion_tokens``.
        With batched generation ``latency_ms`` is the item's share of its batch's time.
    generation_s
        Wall time of generating all the answers (``seconds_per_question`` divides it by ``n``).
    batch_size
        Answers generated per ``generate`` call (1: one question at a time).
    """

    rouge_l: float
    similarity: float
    perplexity: float
    toxicity: float
    latency_p50_ms: float
    tokens_per_s: float
    n: int
    per_item: list[dict[str, Any]]
    generation_s: float = math.nan
    batch_size: int = 1

    @property
    def seconds_per_question(self) -> float:
        """Wall time of generating the holdout answers per question (batched or not)."""
        return self.generation_s / self.n if self.n else math.nan

    def metrics(self) -> dict[str, float]:
        """The summary numbers as a dict (for ``retrain_runs.metrics`` / ``model_versions.metrics``)."""
        return {name: float(getattr(self, name)) for name in METRICS} | {"n": float(self.n)}


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote a candidate, and why.

    Attributes
    ----------
    promote
        True when quality improved enough and no guard regressed.
    reasons
        Human-readable lines: the quality verdict and each failed guard (or "all guards passed").
    deltas
        ``candidate - active`` of every metric.
    """

    promote: bool
    reasons: list[str]
    deltas: dict[str, float] = field(default_factory=dict)


def gate(
    candidate: EvalReport, active: EvalReport, *, min_improvement: float, guards: dict[str, float]
) -> GateDecision:
    """Decide whether ``candidate`` replaces ``active``.

    Quality: ``candidate.rouge_l - active.rouge_l >= min_improvement``. Guards: for each metric
    in ``guards``, the candidate may be worse than the active version by at most the limit:
    absolute points for 0..1 scores (``similarity``, ``toxicity``, ``rouge_l``), a fraction of
    the active value for ``perplexity``, ``latency_p50_ms`` and ``tokens_per_s``. A NaN candidate
    value fails its guard.

    Parameters
    ----------
    candidate, active
        Reports on the same holdout items.
    min_improvement
        Required ROUGE-L gain (``ATALAIA_GATE_MIN_IMPROVEMENT``).
    guards
        Metric name to largest allowed regression (``ATALAIA_GATE_GUARDS``).

    Returns
    -------
    GateDecision

    Examples
    --------
    >>> a = EvalReport(0.20, 0.60, 10.0, 0.01, 900.0, 20.0, 24, [])
    >>> c = EvalReport(0.30, 0.50, 10.0, 0.01, 900.0, 20.0, 24, [])
    >>> d = gate(c, a, min_improvement=0.02, guards={"similarity": 0.05})
    >>> d.promote, d.reasons[1]
    (False, 'guard similarity regressed: 0.5000 vs 0.6000 (worse by 0.1000, limit 0.0500)')
    """
    return _gate_values(candidate.metrics(), active.metrics(), min_improvement=min_improvement, guards=guards)


def gate_scores(candidate: Mapping[str, float], active: Mapping[str, float], settings: Settings) -> GateDecision:
    """:func:`gate` on score dicts (``EvalReport.metrics()`` or stored copies) with the settings' margin and guards.

    Parameters
    ----------
    candidate, active
        At least ``rouge_l`` and every metric named in ``settings.gate_guards``.
    settings
        ``gate_min_improvement`` and ``gate_guards``.

    Returns
    -------
    GateDecision

    Examples
    --------
    >>> from atalaia.settings import Settings
    >>> s = Settings(gate_min_improvement=0.05, gate_guards={})
    >>> gate_scores({"rouge_l": 0.30}, {"rouge_l": 0.27}, s).promote
    False
    """
    return _gate_values(
        candidate, active, min_improvement=settings.gate_min_improvement, guards=dict(settings.gate_guards)
    )


def _gate_values(
    candidate: Mapping[str, float], active: Mapping[str, float], *, min_improvement: float, guards: dict[str, float]
) -> GateDecision:
    unknown = sorted(set(guards) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown guard metric(s) {unknown}; choose from {list(METRICS)}")
    missing = sorted(n for n in ("rouge_l", *guards) if n not in candidate or n not in active)
    if missing:
        raise ValueError(f"scores lack metric(s) {missing} needed by the gate")
    deltas = {
        name: float(candidate[name]) - float(active[name]) for name in METRICS if name in candidate and name in active
    }
    reasons: list[str] = []
    gain = deltas["rouge_l"]
    improved = math.isfinite(gain) and gain >= min_improvement
    reasons.append(
        f"ROUGE-L {candidate['rouge_l']:.4f} vs {active['rouge_l']:.4f} ({gain:+.4f}, "
        f"{'meets' if improved else 'below'} the required +{min_improvement:.4f})"
    )
    failed = False
    # Latency is per question: a batch's time over its size when answered in batches. Between
    # versions answered differently (an OpenVINO version answers all questions at once) it does
    # not compare, so a latency guard fails closed; the speed probe compares speed unbatched.
    sizes = (candidate.get("batch_size"), active.get("batch_size"))
    for name, limit in sorted(guards.items()):
        if name in TIMED_GUARDS and None not in sizes and float(sizes[0]) != float(sizes[1]):  # type: ignore[arg-type]
            failed = True
            reasons.append(
                f"guard {name} not comparable: the versions were answered in batches of {sizes[0]:.0f} and "
                f"{sizes[1]:.0f}; judge speed with ATALAIA_GATE_MAX_PREFILL_SLOWDOWN / ATALAIA_GATE_MAX_DECODE_SLOWDOWN"
            )
            continue
        cand, act = float(candidate[name]), float(active[name])
        worse = (act - cand) if name in HIGHER_IS_BETTER else (cand - act)
        allowed = limit * abs(act) if name in RELATIVE_GUARDS else limit
        if not math.isfinite(cand) or (math.isfinite(act) and worse > allowed + 1e-12):
            failed = True
            unit = f"{limit:.0%} of {act:.4f} = {allowed:.4f}" if name in RELATIVE_GUARDS else f"{limit:.4f}"
            reasons.append(f"guard {name} regressed: {cand:.4f} vs {act:.4f} (worse by {worse:.4f}, limit {unit})")
    if not failed:
        reasons.append("all guards passed" if guards else "no guards configured")
    return GateDecision(promote=improved and not failed, reasons=reasons, deltas=deltas)


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResources:
    """Models shared by several evaluations (the embedder, the retrieval index, the toxicity scorer).

    Build once with :meth:`load` and pass to :func:`evaluate_model` to avoid reloading them for the
    candidate and the active version.
    """

    embedder: Any
    retriever: Any | None
    toxicity: Any

    @classmethod
    def load(cls, settings: Settings, *, rag: bool = True) -> EvalResources:
        """Load the embedder, the toxicity scorer and (with ``rag``) the retrieval index."""
        from atalaia.metrics.embedding import Embedder
        from atalaia.metrics.toxicity import build_toxicity_scorer
        from atalaia.models.embedder import load_embedder

        embedder = Embedder(load_embedder(settings))
        retriever = None
        if rag:
            from atalaia.rag import load_or_build

            assert settings.regulations_dir is not None
            retriever = load_or_build(settings.regulations_dir, embedder, settings.home / "rag")
        return cls(embedder=embedder, retriever=retriever, toxicity=build_toxicity_scorer(settings))


def prompt_messages(question: str, *, retriever: Any | None, k: int) -> list[dict[str, str]]:
    """The chat messages for ``question``: with a retriever, the service's RAG prompt, else the bare question."""
    if retriever is None:
        return user_messages(question)
    from atalaia.rag import build_prompt

    return build_prompt(question, [p for p, _ in retriever.search(question, k)])


def answer_perplexities(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], answers: list[str]
) -> tuple[float, list[float]]:
    """Perplexity of each reference answer given its prompt, and pooled over all answer tokens.

    Returns
    -------
    (pooled, per_item)
        ``exp`` of the mean negative log-likelihood of all answer tokens (including the closing
        ``<|im_end|>``), and the same per item.
    """
    import torch

    total_nll, total_tokens = 0.0, 0
    per_item: list[float] = []
    limit = int(model.config.max_position_embeddings)
    # A backend that reads token log-probabilities faster than full logits (OpenVINO) offers them.
    token_logprobs = getattr(model, "token_logprobs", None)
    for messages, answer in zip(prompts, answers, strict=True):
        encoded = encode_example(tokenizer, messages, answer, limit)
        if encoded is None:
            per_item.append(math.nan)
            continue
        ids, labels = encoded
        if token_logprobs is not None:
            logprobs = token_logprobs(ids)
            picked = [-lp for lp, label in zip(logprobs, labels[1:], strict=True) if label != -100]
            # NaN: a position the backend's prefix cache skipped; score the item from full logits.
            if not any(math.isnan(v) for v in picked):
                total_nll += sum(picked)
                total_tokens += len(picked)
                per_item.append(math.exp(sum(picked) / len(picked)))
                continue
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        keep = target != -100
        nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
        n = int(keep.sum())
        total_nll += nll
        total_tokens += n
        per_item.append(math.exp(nll / n))
    pooled = math.exp(total_nll / total_tokens) if total_tokens else math.nan
    return pooled, per_item


def load_holdout(settings: Settings) -> list[QAItem]:
    """The holdout items of ``settings.qa_holdout_file`` (``data/qa/holdout.jsonl``)."""
    assert settings.qa_holdout_file is not None  # resolved by Settings
    return load_qa(settings.qa_holdout_file)


def reference_perplexity(model_dir: Path, holdout: list[QAItem], *, limit: int | None = None) -> float:
    """Pooled perplexity of the holdout reference answers under the model in ``model_dir``.

    The prompt is the bare question (no retrieval), so the number measures what the weights
    know; it is the check that quantization did not hurt the model (float32 vs int8 of the same
    merge). The model is loaded with ``Generator.load`` (float or quantized folders alike).

    Parameters
    ----------
    model_dir
        A model folder.
    holdout
        Items with reference answers.
    limit
        Only the first ``limit`` items (``None`` or 0: all).

    Returns
    -------
    float
    """
    from atalaia.models.generator import Generator

    items = holdout[:limit] if limit else list(holdout)
    if not items:
        raise ValueError("no holdout items to score")
    generator = Generator.load(model_dir)
    pooled, _ = answer_perplexities(
        generator.model, generator.tokenizer, [user_messages(i.question) for i in items], [i.answer for i in items]
    )
    return pooled


def evaluate_model(
    model_dir: Path,
    holdout: list[QAItem],
    *,
    rag: bool,
    settings: Settings,
    limit: int | None = None,
    resources: EvalResources | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
) -> EvalReport:
    """Generate answers to the holdout questions with the model in ``model_dir`` and score them.

    Parameters
    ----------
    model_dir
        A float or quantized model folder (anything ``Generator.load`` serves).
    holdout
        The evaluation items (``retrain.dataset.load_qa(settings.qa_holdout_file)``).
    rag
        Build prompts with retrieval, as the service does when ``ATALAIA_RAG_ENABLED``.
    settings
        ``torch_threads``, ``rag_top_k``, ``eval_max_tokens``, the embedder and toxicity settings.
    limit
        Score only the first ``limit`` items (``None`` or 0: all). The holdout file is shuffled
        with a fixed seed, so a prefix spreads over the sections.
    resources
        Preloaded embedder, index and toxicity scorer (see :class:`EvalResources`).
    max_tokens
        Tokens generated per question; default ``settings.eval_max_tokens``.
    progress
        Show a progress bar.

    Returns
    -------
    EvalReport

    Raises
    ------
    ValueError
        When there is nothing to evaluate.
    """
    from atalaia.metrics.embedding import cosine_rows
    from atalaia.metrics.text import rouge_scores
    from atalaia.models.generator import Generator

    items = holdout[:limit] if limit else list(holdout)
    if not items:
        raise ValueError("no holdout items to evaluate")
    if resources is None or (rag and resources.retriever is None):
        resources = EvalResources.load(settings, rag=rag)
    max_tokens = max_tokens or settings.eval_max_tokens
    generator = Generator.load(model_dir, threads=settings.torch_threads)
    prompts = [
        prompt_messages(i.question, retriever=resources.retriever if rag else None, k=settings.rag_top_k) for i in items
    ]

    predictions: list[str] = []
    latencies: list[float] = []
    tokens: list[int] = []
    # Batched where the backend batches (transformers: one padded generate per batch; ORT runs
    # them one by one): prompts sorted by length so a batch pads little; answers back in order.
    # A backend that batches without padding (OpenVINO's continuous batching) gets them all.
    size = max(1, settings.eval_batch_size) if getattr(generator, "batches", False) else 1
    if getattr(generator, "batches", False) and not getattr(generator, "pads_batches", True):
        size = len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: generator.count_prompt_tokens(prompts[i]))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    answers: dict[int, Any] = {}
    seconds: dict[int, float] = {}
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"evaluating {Path(model_dir).name}", unit="q")
    t_all = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        if len(batch) == 1:
            results = [generator.chat(prompts[batch[0]], max_tokens=max_tokens, temperature=0.0)]
        else:
            results = generator.chat_batch([prompts[i] for i in batch], max_tokens=max_tokens, temperature=0.0)
        # A batched answer's latency is its share of the batch's time (the time per question).
        per_question = (time.perf_counter() - t0) / len(batch)
        for i, result in zip(batch, results, strict=True):
            answers[i], seconds[i] = result, per_question
        if bar is not None:
            bar.update(len(batch))
    generation_s = time.perf_counter() - t_all
    if bar is not None:
        bar.close()
    for i in range(len(items)):
        predictions.append(answers[i].text.strip())
        latencies.append(seconds[i] * 1000.0)
        tokens.append(answers[i].completion_tokens)

    references = [i.answer for i in items]
    rouge = []
    for prediction, reference in zip(predictions, references, strict=True):
        try:
            rouge.append(rouge_scores(prediction, reference)["rougeL"])
        except ValueError:  # an empty answer overlaps nothing
            rouge.append(0.0)
    sims = cosine_rows(resources.embedder.encode(predictions), resources.embedder.encode(references)).tolist()
    tox = [float(v) for v in resources.toxicity.score([p or " " for p in predictions])]
    pooled_ppl, item_ppl = answer_perplexities(generator.model, generator.tokenizer, prompts, references)

    per_item = [
        {
            "id": item.id,
            "question": item.question,
            "reference": item.answer,
            "prediction": pred,
            "rouge_l": r,
            "similarity": float(s),
            "perplexity": p,
            "toxicity": t,
            "latency_ms": lat,
            "completion_tokens": n,
        }
        for item, pred, r, s, p, t, lat, n in zip(
            items, predictions, rouge, sims, item_ppl, tox, latencies, tokens, strict=True
        )
    ]
    report = EvalReport(
        rouge_l=sum(rouge) / len(rouge),
        similarity=float(sum(sims) / len(sims)),
        perplexity=pooled_ppl,
        toxicity=sum(tox) / len(tox),
        latency_p50_ms=percentile(latencies, 50),
        tokens_per_s=sum(tokens) / (sum(latencies) / 1000.0) if sum(latencies) > 0 else math.nan,
        n=len(items),
        per_item=per_item,
        generation_s=generation_s,
        batch_size=size,
    )
    logger.info(
        "holdout answers of %s: %.1f s for %d questions, %.2f s per question (batch %d)",
        model_dir,
        generation_s,
        len(items),
        generation_s / len(items),
        size,
    )
    logger.info(
        "evaluated %s (%s): ROUGE-L %.4f, similarity %.4f, perplexity %.2f, toxicity %.4f, p50 %.0f ms, %.1f tokens/s",
        model_dir,
        "RAG" if rag else "no RAG",
        report.rouge_l,
        report.similarity,
        report.perplexity,
        report.toxicity,
        report.latency_p50_ms,
        report.tokens_per_s,
    )
    return report
