"""The ``auto`` serving format: float32 transformers or an export (ONNX Runtime or OpenVINO GenAI), chosen by measuring.

With ``ATALAIA_SERVING_FORMAT=auto``, ``atalaia models prepare`` exports the base model to each
format of ``ATALAIA_SERVING_AUTO_CANDIDATES`` (cached, :func:`atalaia.models.exports.prepare_export`),
then measures them against float32 on this host, as :func:`retrain.quantize.quantize_for_host`
does for int8:

- speed: the short unbatched probe of :mod:`atalaia.models.speed` (prefill ms per prompt token on
  a served-length RAG prompt, decode tokens/s; formats alternating run by run; fastest runs);
- quality: holdout reference-answer perplexity (the caller's ``perplexity`` function, on
  ``ATALAIA_SERVING_AUTO_PPL_ITEMS`` items).

The rule (:func:`pick_format`): among the formats whose perplexity is within
``ATALAIA_QUANTIZED_PPL_TOLERANCE`` of float32's, serve the one with the shortest estimated served
request, ``prompt_tokens x prefill + eval_max_tokens / decode``; float32 when no candidate is
faster. The decision, its reason and the measurements are written to
``<models_dir>/<model>-serving-choice.json``; the service reads that record at start
(:func:`chosen_path`) and never measures itself (a probe takes tens of seconds). The record is
redone when the base preparation or the candidate list changes, or with ``--force``; a change of
the rule's settings (``ATALAIA_QUANTIZED_PPL_TOLERANCE``, ``ATALAIA_EVAL_MAX_TOKENS``) decides
again from the recorded measurements at the next ``atalaia models prepare``.

Why measure instead of fixing the answer: on this project's AVX2 host the ORT int4 export decoded
more than 10x faster than float32 but its prefill was at times slower, and its holdout perplexity
rose (BENCHMARKS.md, "Serving backends"); another CPU, thread count or model can order the
formats differently.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atalaia.models.speed import FLOAT32

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

AUTO = "auto"
#: Formats ``auto`` may choose among besides float32.
CANDIDATES = ("ort-int4", "ort-int8", "ort-fp32", "ov-int8", "ov-int4", "ov-fp32")
CHOICE_FORMAT = 1


@dataclass(frozen=True)
class ServingChoice:
    """The format ``auto`` chose on this host.

    Attributes
    ----------
    format
        ``'float32'`` or an export format such as ``'ort-int4'`` or ``'ov-int8'``.
    path
        The folder served.
    reason
        One line: why this format.
    measurements
        Per format: ``prefill_ms_per_token``, ``decode_tokens_per_s`` (fastest probe runs),
        ``estimated_request_ms``, ``perplexity`` and whether its perplexity was acceptable.
    """

    format: str
    path: Path
    reason: str
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)


def choice_file(settings: Settings) -> Path:
    """Where the decision is recorded: ``<models_dir>/<model>-serving-choice.json``."""
    assert settings.models_dir is not None  # resolved by Settings
    return Path(settings.models_dir) / f"{settings.generator_model}-serving-choice.json"


def estimated_request_ms(report: Mapping[str, Any], *, prompt_tokens: int, answer_tokens: int) -> float:
    """Milliseconds of a served request from a probe report: prefill of the prompt plus the answer's decode.

    >>> estimated_request_ms({"best_prefill_ms_per_token": 2.0, "best_decode_tokens_per_s": 50.0},
    ...                      prompt_tokens=500, answer_tokens=64)
    2280.0
    """
    prefill = float(report["best_prefill_ms_per_token"]) * prompt_tokens
    decode_tps = float(report["best_decode_tokens_per_s"])
    return prefill + (answer_tokens / decode_tps * 1000.0 if decode_tps > 0 else math.inf)


def pick_format(
    reports: Mapping[str, Mapping[str, Any]],
    perplexities: Mapping[str, float],
    *,
    prompt_tokens: int,
    answer_tokens: int,
    ppl_tolerance: float,
) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """Apply the ``auto`` rule to measured reports.

    Parameters
    ----------
    reports
        Format name to a :class:`atalaia.models.speed.SpeedReport` dict; must hold ``float32``.
    perplexities
        Format name to holdout perplexity; must hold ``float32``.
    prompt_tokens, answer_tokens
        The served request the estimate is made for.
    ppl_tolerance
        Largest relative perplexity rise over float32 a format may have (0.05 = 5 %).

    Returns
    -------
    (format, reason, measurements)

    Examples
    --------
    >>> reports = {"float32": {"best_prefill_ms_per_token": 2.0, "best_decode_tokens_per_s": 15.0},
    ...            "ort-int4": {"best_prefill_ms_per_token": 2.5, "best_decode_tokens_per_s": 120.0},
    ...            "ort-int8": {"best_prefill_ms_per_token": 2.2, "best_decode_tokens_per_s": 90.0}}
    >>> pick_format(reports, {"float32": 10.0, "ort-int4": 11.0, "ort-int8": 10.2},
    ...             prompt_tokens=500, answer_tokens=64, ppl_tolerance=0.05)[0]
    'ort-int8'
    """
    if FLOAT32 not in reports or FLOAT32 not in perplexities:
        raise ValueError("the float32 reference must be measured")
    ref_ppl = float(perplexities[FLOAT32])
    measurements: dict[str, dict[str, Any]] = {}
    for name, report in reports.items():
        ppl = float(perplexities.get(name, math.nan))
        ok = name == FLOAT32 or (math.isfinite(ppl) and ppl <= ref_ppl * (1.0 + ppl_tolerance))
        measurements[name] = {
            "prefill_ms_per_token": float(report["best_prefill_ms_per_token"]),
            "decode_tokens_per_s": float(report["best_decode_tokens_per_s"]),
            "estimated_request_ms": estimated_request_ms(
                report, prompt_tokens=prompt_tokens, answer_tokens=answer_tokens
            ),
            "perplexity": ppl,
            "perplexity_ok": ok,
        }
    ref_ms = measurements[FLOAT32]["estimated_request_ms"]
    acceptable = [n for n, m in measurements.items() if m["perplexity_ok"]]
    best = min(acceptable, key=lambda n: (measurements[n]["estimated_request_ms"], n != FLOAT32))
    refused = [
        f"{n} (perplexity {m['perplexity']:.3f} > float32 {ref_ppl:.3f} +{ppl_tolerance:.0%})"
        for n, m in measurements.items()
        if not m["perplexity_ok"]
    ]
    m = measurements[best]
    reason = (
        f"{best}: estimated served request {m['estimated_request_ms']:.0f} ms vs float32 {ref_ms:.0f} ms "
        f"({prompt_tokens}-token prompt, {answer_tokens}-token answer; "
        f"prefill {m['prefill_ms_per_token']:.2f} ms/token, "
        f"decode {m['decode_tokens_per_s']:.1f} tokens/s, perplexity {m['perplexity']:.3f})"
    )
    if refused:
        reason += "; refused for quality: " + ", ".join(refused)
    return best, reason, measurements


def _base_stamp(settings: Settings) -> dict[str, Any]:
    from atalaia.models.prepare import read_manifest

    base = read_manifest(settings.generator_path) or {}
    return {k: base.get(k) for k in ("gguf_sha256", "created")}


def _folder_for(settings: Settings, fmt: str) -> Path:
    from atalaia.models.exports import export_dir_for

    if fmt == FLOAT32:
        return Path(settings.generator_path)
    assert settings.models_dir is not None  # resolved by Settings
    return export_dir_for(settings.models_dir, settings.generator_model, fmt)


def read_choice(settings: Settings) -> dict[str, Any] | None:
    """The recorded decision, or ``None`` when there is none (or it is unreadable)."""
    try:
        record = json.loads(choice_file(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format_version") != CHOICE_FORMAT:
        return None
    if record.get("format") != FLOAT32 and record.get("format") not in CANDIDATES:
        return None
    return record


def _rule(settings: Settings) -> dict[str, Any]:
    """The settings :func:`pick_format` decides with (a change re-decides from the measurements)."""
    return {"ppl_tolerance": settings.quantized_ppl_tolerance, "answer_tokens": settings.eval_max_tokens}


def _write_choice(settings: Settings, record: dict[str, Any]) -> None:
    target = choice_file(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(target)


def _apply_rule(settings: Settings, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` decided again with today's ``ATALAIA_QUANTIZED_PPL_TOLERANCE`` and
    ``ATALAIA_EVAL_MAX_TOKENS`` from its own measurements (no new export or probe), and saved
    when that changes the format. Records without the measurements needed are returned as they are.
    """
    rule = _rule(settings)
    speed, ppl = record.get("speed"), record.get("perplexity")
    if record.get("rule") == rule or not isinstance(speed, dict) or not isinstance(ppl, dict):
        return record
    fmt, reason, measurements = pick_format(
        speed["reports"],
        {name: float(value) for name, value in ppl.items()},
        prompt_tokens=int(speed.get("prompt_tokens") or speed["reports"][FLOAT32]["prompt_tokens"]),
        answer_tokens=settings.eval_max_tokens,
        ppl_tolerance=settings.quantized_ppl_tolerance,
    )
    cpu = speed.get("cpu", {})
    reason += f" on this host (ATen {cpu.get('aten', '?')}, {speed.get('threads', '?')} thread(s))"
    updated = record | {"format": fmt, "reason": reason, "measurements": measurements, "rule": rule}
    _write_choice(settings, updated)
    if fmt != record.get("format"):
        logger.warning(
            "serving format re-decided from the recorded measurements after a settings change",
            extra={"was": record.get("format"), "now": fmt, "rule": rule},
        )
    return updated


def chosen_path(settings: Settings) -> Path:
    """The folder ``auto`` serves on this host (the recorded decision).

    Raises
    ------
    GeneratorNotPreparedError
        When no decision is recorded or its folder is missing: ``atalaia models prepare`` makes
        it (measuring takes tens of seconds, so the service does not do it at start).
    """
    from atalaia.models.exports import is_export_dir
    from atalaia.models.generator import GeneratorNotPreparedError

    record = read_choice(settings)
    if record is None:
        raise GeneratorNotPreparedError(
            f"ATALAIA_SERVING_FORMAT=auto but no serving format was chosen on this host ({choice_file(settings)} "
            "is missing). Fix: run `atalaia models prepare` (or set ATALAIA_SERVING_FORMAT=float32)."
        )
    path = _folder_for(settings, str(record["format"]))
    if record["format"] != FLOAT32 and not is_export_dir(path):
        raise GeneratorNotPreparedError(
            f"ATALAIA_SERVING_FORMAT=auto chose {record['format']} but {path} is not prepared. "
            "Fix: run `atalaia models prepare` (it exports and measures again)."
        )
    return path


def choose_serving_format(
    settings: Settings,
    *,
    perplexity: Callable[[Path], float],
    probe: Callable[..., dict[str, Any]] | None = None,
    export: Callable[[Settings, str], Path] | None = None,
    force: bool = False,
) -> ServingChoice:
    """Measure float32 and the ``auto`` candidates on this host, pick one and record it.

    A recorded decision for the same base preparation and candidates is reused unless ``force``.

    Parameters
    ----------
    settings
        ``serving_auto_candidates``, ``quantized_ppl_tolerance``, ``eval_max_tokens`` and the
        speed probe settings.
    perplexity
        Holdout reference perplexity of a model folder (the caller supplies it: the holdout and
        its scoring live in ``retrain.evaluate``, outside the kernel).
    probe
        ``probe(folders, settings, reference=...)``; default
        :func:`atalaia.models.speed.probe_folders` (tests pass a fake).
    export
        ``export(settings, fmt)`` returning the prepared folder of an export format; default
        :func:`atalaia.models.exports.prepare_export` into its cache folder.
    force
        Export and measure again.

    Returns
    -------
    ServingChoice
    """
    from atalaia.models.exports import prepare_export
    from atalaia.models.speed import probe_folders

    candidates: list[str] = [str(c) for c in settings.serving_auto_candidates]
    stamp = _base_stamp(settings)
    record = read_choice(settings)
    if not force and record is not None and record.get("base") == stamp and record.get("candidates") == candidates:
        record = _apply_rule(settings, record)
        try:
            choice = ServingChoice(
                str(record["format"]), chosen_path(settings), str(record["reason"]), record.get("measurements", {})
            )
        except FileNotFoundError:  # the chosen export was deleted: measure again
            pass
        else:
            logger.info("serving format on this host, from the recorded measurements: %s", choice.reason)
            return choice

    def _export(s: Settings, fmt: str) -> Path:
        return prepare_export(s.generator_path, _folder_for(s, fmt), fmt, force=force)

    export = export or _export
    probe = probe or probe_folders
    t0 = time.perf_counter()
    folders: dict[str, Path] = {FLOAT32: Path(settings.generator_path)}
    for candidate in candidates:
        folders[candidate] = Path(export(settings, candidate))
    speed = probe(folders, settings, reference=FLOAT32)
    ppl = {name: float(perplexity(folder)) for name, folder in folders.items()}
    fmt, reason, measurements = pick_format(
        speed["reports"],
        ppl,
        prompt_tokens=int(speed.get("prompt_tokens") or speed["reports"][FLOAT32]["prompt_tokens"]),
        answer_tokens=settings.eval_max_tokens,
        ppl_tolerance=settings.quantized_ppl_tolerance,
    )
    cpu = speed.get("cpu", {})
    reason += f" on this host (ATen {cpu.get('aten', '?')}, {speed.get('threads', '?')} thread(s))"
    out = {
        "format_version": CHOICE_FORMAT,
        "format": fmt,
        "reason": reason,
        "candidates": candidates,
        "base": stamp,
        "measurements": measurements,
        "speed": speed,
        "perplexity": ppl,
        "rule": _rule(settings),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_choice(settings, out)
    logger.info("serving format chosen on this host: %s", reason)
    return ServingChoice(fmt, folders[fmt], reason, measurements)


def registered_folder(settings: Settings, row: Mapping[str, Any]) -> Path | None:
    """The folder a ``model_versions`` row is served from, or ``None`` when it has none on disk.

    The configured base version (``ATALAIA_MODEL_VERSION``, no parent) is the base model *in the
    serving format* (``ATALAIA_SERVING_FORMAT``, :func:`atalaia.models.exports.served_base_path`),
    whatever folder its row recorded when it was registered: a run registers the base with the
    format of that moment, and changing the setting afterwards must still change what is served.
    Every other version is its own ``artefact_path``.

    Raises
    ------
    GeneratorNotPreparedError
        When the base version's export for the serving format is missing (the message says how
        to prepare it).
    """
    if str(row["version"]) == settings.model_version and not row.get("parent"):
        from atalaia.models.exports import served_base_path

        return served_base_path(settings)
    path = Path(row.get("artefact_path") or "")
    return path if row.get("artefact_path") and path.is_dir() else None


def folder_format(path: Path | str | None) -> str | None:
    """The serving format of a model folder: ``ort-<precision>`` or ``ov-<precision>`` (an export), the
    torch quantization method (``int8-weight-only``), or ``float32``; ``None`` without a folder.

    >>> folder_format(None) is None
    True
    """
    if not path:
        return None
    from atalaia.models.exports import export_manifest, is_export_dir
    from atalaia.models.quantized import is_quantized_dir, read_quant_manifest

    try:
        if is_export_dir(path):
            return export_manifest(path)[0]
        if is_quantized_dir(path):
            return str(read_quant_manifest(path)["method"])
    except ValueError:  # an unreadable manifest: the loader has already refused or accepted it
        return None
    return FLOAT32
