"""A short unbatched speed probe of a chat model on the served workload: prefill and decode apart.

Served requests are RAG prompts of a few hundred tokens with answers of a few dozen: most of the
time of a request can be the prefill (one forward pass over the prompt), and a model that decodes
faster may still serve more slowly. One "tokens per second" over a whole request mixes the two
and the answer length, so the probe measures them separately:

- ``prefill_ms_per_token``: one forward pass over a prompt of served length, divided by its tokens;
- ``decode_tokens_per_s``: greedy next-token steps with the KV cache after that prompt.

Two models are compared by :func:`compare_speed`, which alternates them run by run so that both
see the same background load, and reports medians and the ratios ``candidate / reference``
(``prefill_ratio`` > 1: the candidate's prefill is slower; ``decode_ratio`` > 1: the candidate
decodes more slowly, i.e. reference tokens/s over candidate tokens/s).

Examples
--------
>>> probe = probe_prompt(settings)                                         # doctest: +SKIP
>>> compare_speed({"fp32": gen32, "int8": gen8}, probe, reference="fp32")   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

#: The serving "format" of a float32 model folder (deployed when int8 is slower on the host).
FLOAT32 = "float32"
#: Question used in the probe prompt (a holdout-style question; its wording hardly matters).
PROBE_QUESTION = "How many days of annual leave does an employee get, and how are they scheduled?"


@dataclass(frozen=True)
class SpeedSample:
    """One probe run of one model.

    Attributes
    ----------
    prompt_tokens
        Tokens of the probe prompt.
    prefill_ms
        Time of the forward pass over the whole prompt.
    decode_ms
        Time of ``decode_tokens`` greedy steps after it.
    decode_tokens
        Steps timed.
    """

    prompt_tokens: int
    prefill_ms: float
    decode_ms: float
    decode_tokens: int

    @property
    def prefill_ms_per_token(self) -> float:
        """Prefill milliseconds per prompt token."""
        return self.prefill_ms / self.prompt_tokens

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second, prefill excluded."""
        return self.decode_tokens / (self.decode_ms / 1000.0) if self.decode_ms > 0 else float("inf")


@dataclass(frozen=True)
class SpeedReport:
    """Medians of several probe runs of one model.

    Attributes
    ----------
    prompt_tokens
        Tokens of the probe prompt.
    prefill_ms_per_token, decode_tokens_per_s
        Medians over the runs.
    best_prefill_ms_per_token, best_decode_tokens_per_s
        The fastest run of each phase: background load only ever adds time, so on a shared host
        the best of a few runs is the steadiest estimate of a model's own speed (as ``timeit``
        reasons); decisions use these, reports show both.
    runs
        How many runs.
    samples
        Every run's ``(prefill_ms_per_token, decode_tokens_per_s)``, for the record.
    """

    prompt_tokens: int
    prefill_ms_per_token: float
    decode_tokens_per_s: float
    best_prefill_ms_per_token: float
    best_decode_tokens_per_s: float
    runs: int
    samples: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def from_samples(cls, samples: list[SpeedSample]) -> SpeedReport:
        """Medians of ``samples`` (at least one).

        >>> s = [SpeedSample(100, 200.0, 500.0, 10), SpeedSample(100, 300.0, 1000.0, 10)]
        >>> r = SpeedReport.from_samples(s)
        >>> r.prefill_ms_per_token, round(r.decode_tokens_per_s, 2), r.best_prefill_ms_per_token
        (2.5, 15.0, 2.0)
        """
        if not samples:
            raise ValueError("no speed samples")
        return cls(
            prompt_tokens=samples[0].prompt_tokens,
            prefill_ms_per_token=statistics.median(s.prefill_ms_per_token for s in samples),
            decode_tokens_per_s=statistics.median(s.decode_tokens_per_s for s in samples),
            best_prefill_ms_per_token=min(s.prefill_ms_per_token for s in samples),
            best_decode_tokens_per_s=max(s.decode_tokens_per_s for s in samples),
            runs=len(samples),
            samples=[(round(s.prefill_ms_per_token, 4), round(s.decode_tokens_per_s, 3)) for s in samples],
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe copy (for run step metrics and the registry)."""
        return asdict(self)


def speed_ratios(
    candidate: SpeedReport | Mapping[str, Any], reference: SpeedReport | Mapping[str, Any], *, best: bool = True
) -> dict[str, float]:
    """How much slower ``candidate`` is than ``reference``, per phase (> 1: slower).

    ``prefill_ratio`` is candidate over reference prefill time per token; ``decode_ratio`` is
    reference over candidate decode tokens/s (so both read "times slower"). With ``best`` the
    fastest runs are compared (what decisions use), else the medians.

    >>> speed_ratios({"best_prefill_ms_per_token": 3.0, "best_decode_tokens_per_s": 40.0},
    ...              {"best_prefill_ms_per_token": 2.0, "best_decode_tokens_per_s": 20.0})
    {'prefill_ratio': 1.5, 'decode_ratio': 0.5}
    """
    c = candidate.as_dict() if isinstance(candidate, SpeedReport) else candidate
    r = reference.as_dict() if isinstance(reference, SpeedReport) else reference
    pre = "best_" if best else ""
    return {
        "prefill_ratio": float(c[f"{pre}prefill_ms_per_token"]) / float(r[f"{pre}prefill_ms_per_token"]),
        "decode_ratio": float(r[f"{pre}decode_tokens_per_s"]) / float(c[f"{pre}decode_tokens_per_s"]),
    }


def slowdown_reasons(ratios: Mapping[str, float], *, max_prefill: float, max_decode: float, what: str) -> list[str]:
    """Why ``ratios`` (from :func:`speed_ratios`) exceed the allowed slowdowns; empty when they do not.

    A NaN ratio fails (a probe that measured nothing proves nothing).

    >>> slowdown_reasons({"prefill_ratio": 1.5, "decode_ratio": 0.4}, max_prefill=1.2, max_decode=1.2, what="int8")
    ['int8 prefill is 1.50x slower per prompt token (limit 1.20x)']
    """
    reasons = []
    for phase, limit, label in (
        ("prefill_ratio", max_prefill, "prefill is {r:.2f}x slower per prompt token"),
        ("decode_ratio", max_decode, "decoding is {r:.2f}x slower per generated token"),
    ):
        r = float(ratios[phase])
        if not (r <= limit):  # also catches NaN
            reasons.append(f"{what} {label.format(r=r)} (limit {limit:.2f}x)")
    return reasons


@functools.cache
def _handbook_passages(directory: str) -> list[Any]:
    from atalaia.rag import chunk_regulations

    return chunk_regulations(Path(directory))


def probe_messages(settings: Settings) -> list[dict[str, str]]:
    """A chat prompt of served length: the service's RAG prompt with ``rag_top_k`` handbook passages.

    No retrieval is run (the probe needs a prompt of the right shape and length, not the right
    passages): the first passages of the handbook stand in. The RAG prompt is used even where
    RAG is off: prefill per token is then measured on a few hundred tokens, not on a short
    question whose prefill takes a few milliseconds and is lost in timing noise. Without a
    handbook folder the bare question is used.
    """
    from atalaia.rag import RegulationsError, build_prompt

    passages: list[Any] = []
    if settings.regulations_dir is not None and Path(settings.regulations_dir).is_dir():
        try:
            passages = _handbook_passages(str(settings.regulations_dir))[: settings.rag_top_k]
        except RegulationsError:  # a folder without sections: no passages to stand in
            passages = []
    return build_prompt(PROBE_QUESTION, passages)


def measure_once(model: Any, input_ids: Any, decode_tokens: int) -> SpeedSample:
    """One prefill over ``input_ids`` (shape ``(1, n)``) and ``decode_tokens`` greedy cached steps.

    Parameters
    ----------
    model
        A transformers causal LM (float or int8).
    input_ids
        The prompt's token ids.
    decode_tokens
        Greedy steps to time after the prefill (at least 1).

    Returns
    -------
    SpeedSample
    """
    import torch

    if decode_tokens < 1:
        raise ValueError("decode_tokens must be at least 1")
    with torch.inference_mode():
        t0 = time.perf_counter()
        # Logits of the last position only, as generate() asks for: the 49k-row head over every
        # prompt position would otherwise dominate the prefill and is no part of serving.
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(decode_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        t2 = time.perf_counter()
    return SpeedSample(
        prompt_tokens=int(input_ids.shape[1]),
        prefill_ms=(t1 - t0) * 1000.0,
        decode_ms=(t2 - t1) * 1000.0,
        decode_tokens=decode_tokens,
    )


def sample_speed(generator: Any, input_ids: Any, decode_tokens: int) -> SpeedSample:
    """One probe run of ``generator``: its own ``speed_sample`` when it has one, else :func:`measure_once`.

    Backends whose model is not a transformers module (ONNX Runtime GenAI and OpenVINO GenAI:
    :meth:`atalaia.models.ortgenai.OrtGenerator.speed_sample`,
    :meth:`atalaia.models.ovgenai.OvGenerator.speed_sample`) time prefill and decode with their
    own generator loop, so versions of either backend are probed the same way.
    """
    own = getattr(generator, "speed_sample", None)
    if callable(own):
        sample: SpeedSample = own(input_ids, decode_tokens)
        return sample
    return measure_once(generator.model, input_ids, decode_tokens)


def compare_speed(
    generators: Mapping[str, Any],
    messages: list[dict[str, str]],
    *,
    repeats: int = 3,
    decode_tokens: int = 16,
) -> dict[str, SpeedReport]:
    """Probe several generators on the same prompt, alternating them run by run.

    Parameters
    ----------
    generators
        Name to :class:`atalaia.models.generator.Generator` (anything with ``model`` and a
        ``_encode(messages)`` returning ``input_ids``; an ORT generator's ``speed_sample`` is
        used instead of ``model``, see :func:`sample_speed`).
    messages
        The probe prompt (:func:`probe_messages`).
    repeats
        Timed runs per model (after one untimed warm-up each); medians are reported.
    decode_tokens
        Greedy steps timed per run.

    Returns
    -------
    dict
        Name to :class:`SpeedReport`.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    names = list(generators)
    ids = {name: generators[name]._encode(messages)["input_ids"] for name in names}
    for name in names:  # warm-up: the first call allocates caches and packs weights
        sample_speed(generators[name], ids[name][:, : min(32, ids[name].shape[1])], 2)
    samples: dict[str, list[SpeedSample]] = {name: [] for name in names}
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            samples[name].append(sample_speed(generators[name], ids[name], decode_tokens))
    return {name: SpeedReport.from_samples(s) for name, s in samples.items()}


def cpu_capability() -> dict[str, Any]:
    """What this host's CPU offers torch: the ATen kernel level and the environment limits in force.

    >>> sorted(cpu_capability())                                                  # doctest: +SKIP
    ['aten', 'bf16_native', 'env', 'torch']
    """
    import os

    import torch

    try:
        aten = str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # pragma: no cover - very old torch
        aten = "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "aten": aten,
        # Native bfloat16 dot products (AVX512-BF16 / AMX): without them the int8-weight bfloat16
        # kernel emulates bfloat16 and its prefill is slower than a float32 matmul.
        "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}) and aten not in ("AVX2", "DEFAULT"),
        "torch": torch.__version__,
        "env": {
            k: os.environ[k]
            for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if k in os.environ
        },
    }


def probe_folders(
    folders: Mapping[str, Path], settings: Settings, *, reference: str, messages: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """Load model folders with ``Generator.load`` (as the service does) and probe them side by side.

    Parameters
    ----------
    folders
        Name to model folder (float or quantized); at least ``reference`` and one other.
    settings
        ``speed_probe_repeats``, ``speed_probe_decode_tokens``, ``speed_probe_threads`` and the
        RAG settings that shape the prompt (:func:`probe_messages`).
    reference
        The name the others are compared with.
    messages
        The probe prompt; default :func:`probe_messages`.

    Returns
    -------
    dict
        JSON-safe: ``reports`` (name to :class:`SpeedReport` as a dict), ``ratios`` (name to
        :func:`speed_ratios` against ``reference``, fastest runs) and ``median_ratios`` (the same
        on medians), ``prompt_tokens``, ``threads``, ``cpu`` (:func:`cpu_capability`) and
        ``seconds`` (probe time).
    """
    import torch

    from atalaia.models.generator import Generator

    if reference not in folders:
        raise ValueError(f"reference {reference!r} is not among {list(folders)}")
    t0 = time.perf_counter()
    before = torch.get_num_threads()
    try:
        if settings.speed_probe_threads > 0:
            torch.set_num_threads(settings.speed_probe_threads)
        # threads also reach ORT sessions (per session), not only torch (process-wide).
        generators = {
            name: Generator.load(path, threads=settings.speed_probe_threads) for name, path in folders.items()
        }
        reports = compare_speed(
            generators,
            messages or probe_messages(settings),
            repeats=settings.speed_probe_repeats,
            decode_tokens=settings.speed_probe_decode_tokens,
        )
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    ref = reports[reference]
    ratios = {name: speed_ratios(r, ref) for name, r in reports.items() if name != reference}
    out: dict[str, Any] = {
        "reports": {name: r.as_dict() for name, r in reports.items()},
        "ratios": ratios,
        "median_ratios": {name: speed_ratios(r, ref, best=False) for name, r in reports.items() if name != reference},
        "prompt_tokens": ref.prompt_tokens,
        "threads": threads,
        "cpu": cpu_capability(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    logger.info(
        "speed probe (%d prompt tokens, %d thread(s)): %s",
        ref.prompt_tokens,
        threads,
        {n: {k: round(v, 3) for k, v in r.items()} for n, r in ratios.items()},
    )
    return out
