"""Step 4 of a retraining run: pick the serving format for this host and write the model in it.

:func:`quantize_for_host` is the step: it quantizes the merged model, measures the int8 model
against its float32 merge on the served workload (prefill time per prompt token on a RAG prompt
of served length, and decoding tokens/s: :mod:`atalaia.models.speed`) and keeps the int8 folder
only when neither phase is slower than float32 here (``ATALAIA_QUANTIZED_MAX_SLOWDOWN``).
Otherwise the float32 merge is deployed, recorded as ``float32``. Why: the int8 kernel
(``_weight_int8pack_mm``) takes bfloat16 activations, which AVX2-only CPUs emulate; there its
prefill was measured 1.5-1.7x slower than float32 (BENCHMARKS.md), and RAG prompts make prefill
most of a request. The decision, the measured ratios and the CPU capability are written to
``atalaia-format.json`` in the folder and returned for the run's step metrics.

:func:`quantize_model` turns a merged float32 model folder into a weight-only int8 folder
(layout and kernels in :mod:`atalaia.models.quantized`) that
:meth:`atalaia.models.generator.Generator.load` serves like any other version. Measured on this
machine (``bench/quantize.py``, BENCHMARKS.md): about a third of the size, faster generation, holdout
perplexity within about 1 % of float32.

Examples
--------
>>> q = quantize_model(Path("runs/abc/merged"), Path("runs/abc/int8"))   # doctest: +SKIP
>>> q.method, q.size_bytes // 2**20                                        # doctest: +SKIP
('int8-weight-only', 138)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atalaia.models.exports import backend_of, export_manifest, export_model, is_export_dir
from atalaia.models.quantized import (
    INT8_WEIGHT_ONLY,
    METHODS,
    QUANT_FORMAT,
    QUANT_MANIFEST,
    QUANT_WEIGHTS,
)
from atalaia.models.speed import FLOAT32

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

#: Files of a model folder that carry over unchanged (config, tokenizer, chat template).
_CARRIED = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "atalaia-model.json",
)


#: Record of the format decision in a deployed folder (written by :func:`quantize_for_host`).
FORMAT_RECORD = "atalaia-format.json"
#: Inside an exported (ONNX Runtime or OpenVINO GenAI) version: the float32 merge it was exported from, hard-linked, so
#: that the next run can fine-tune it (ONNX weights cannot be trained; int8 ones are dequantized).
FLOAT_MERGE_DIR = "float32-merge"


@dataclass(frozen=True)
class QuantizedModel:
    """A quantized model folder.

    Attributes
    ----------
    path
        The folder; ``Generator.load(path)`` serves it.
    method
        The quantization method, e.g. ``"int8-weight-only"``.
    size_bytes
        Total size of the files in the folder.
    reason
        Why this format (set by :func:`quantize_for_host`).
    speed
        The probe's measurements (:func:`atalaia.models.speed.probe_folders`), when one ran.
    """

    path: Path
    method: str
    size_bytes: int
    reason: str = ""
    speed: dict[str, Any] | None = None


def dir_size(path: Path) -> int:
    """Total bytes of the regular files under ``path``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a").write_bytes(b"12345")
    >>> dir_size(d)
    5
    """
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def quantize_model(merged_dir: Path, out_dir: Path, method: str = INT8_WEIGHT_ONLY) -> QuantizedModel:
    """Quantize a merged float model folder into ``out_dir``.

    The folder is written under a temporary name next to ``out_dir`` and renamed at the end, so a
    crash never leaves a half-written model where a loader would find it. An existing
    ``out_dir`` is replaced.

    Parameters
    ----------
    merged_dir
        A model folder loadable with ``AutoModelForCausalLM.from_pretrained`` (the output of
        ``retrain.train.train_lora``'s merge, or a prepared base model).
    out_dir
        Destination folder.
    method
        ``"int8-weight-only"``, ``"ort-int4"`` / ``"ort-int8"`` / ``"ort-fp32"`` for an ONNX
        Runtime GenAI export, or ``"ov-int8"`` / ``"ov-int4"`` / ``"ov-fp32"`` for an OpenVINO
        GenAI export (``ATALAIA_QUANTIZATION_METHOD``).

    Returns
    -------
    QuantizedModel

    Raises
    ------
    ValueError
        For an unknown method.
    FileNotFoundError
        When ``merged_dir`` has no ``config.json``.
    """
    if backend_of(method) is not None:
        # An ONNX Runtime GenAI or OpenVINO GenAI export (atalaia.models.exports), e.g. "ov-int8".
        export_model(Path(merged_dir), Path(out_dir), method)
        return QuantizedModel(path=Path(out_dir), method=method, size_bytes=dir_size(Path(out_dir)))
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose from {list(METHODS)}")
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    if not (merged_dir / "config.json").is_file():
        raise FileNotFoundError(f"{merged_dir} is not a model folder (no config.json)")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from atalaia.models.quantized import quantize_module

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, local_files_only=True)
    model.eval()
    info = quantize_module(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / QUANT_WEIGHTS), metadata={"format": "pt", "method": method})
        for name in _CARRIED:
            if (merged_dir / name).is_file():
                shutil.copy2(merged_dir / name, tmp / name)
        manifest = {
            "format": QUANT_FORMAT,
            "method": method,
            "tied_head": info["tied_head"],
            "quantized_modules": len(info["modules"]),
            "source": str(merged_dir),
            "torch_version": torch.__version__,
        }
        # Written last: a folder with the manifest is complete.
        (tmp / QUANT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = dir_size(out_dir)
    logger.info(
        "quantized %s -> %s (%s, %.1f MB) in %.1f s",
        merged_dir,
        out_dir,
        method,
        size / 1e6,
        time.perf_counter() - t0,
    )
    return QuantizedModel(path=out_dir, method=method, size_bytes=size)


def training_folder(model_dir: Path) -> Path:
    """The float weights to fine-tune a served version from: the folder itself, or for an ONNX
    Runtime GenAI export its kept float32 merge (:data:`FLOAT_MERGE_DIR`) or, for the base model's
    export, the folder it was exported from.

    Raises
    ------
    ValueError
        For an ORT export with neither (made before versions kept their merge), with the fix.
    """
    model_dir = Path(model_dir)
    if not is_export_dir(model_dir):
        return model_dir
    merge = model_dir / FLOAT_MERGE_DIR
    if (merge / "config.json").is_file():
        return merge
    source = Path(str(export_manifest(model_dir)[1].get("source") or ""))
    if str(source) not in ("", ".") and (source / "config.json").is_file() and not is_export_dir(source):
        return source
    raise ValueError(
        f"{model_dir} is an exported model (ONNX Runtime or OpenVINO GenAI) without float weights to fine-tune "
        f"(no {FLOAT_MERGE_DIR}/ and its source folder is gone). Fix: roll back to a version with float weights, "
        "or deploy the float32 merge of this version, before retraining."
    )


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a model folder, hard-linking files where the file system allows (no 0.5 GB copy)."""

    def link(a: str, b: str) -> object:
        try:
            os.link(a, b)
            return b
        except OSError:
            return shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def quantize_for_host(
    merged_dir: Path,
    out_dir: Path,
    settings: Settings,
    method: str = INT8_WEIGHT_ONLY,
    *,
    probe: Any = None,
) -> QuantizedModel:
    """Write ``merged_dir`` into ``out_dir`` in the format that serves fastest on this host.

    The model is quantized with ``method``; the int8 folder and the float32 merge are probed
    side by side (:func:`atalaia.models.speed.probe_folders`). The int8 folder is kept when its
    prefill and its decoding are both within ``settings.quantized_max_slowdown`` of float32;
    otherwise ``out_dir`` becomes a copy of the float32 merge and the result's ``method`` is
    ``"float32"``. Either way ``atalaia-format.json`` in ``out_dir`` records the decision, the
    ratios and the CPU capability.

    Parameters
    ----------
    merged_dir
        The float32 merged model folder.
    out_dir
        Destination folder (replaced if present).
    settings
        The speed probe settings and ``quantized_max_slowdown``.
    method
        The quantization method to try (``ATALAIA_QUANTIZATION_METHOD``).
    probe
        ``probe(folders, settings, reference=...)``: :func:`atalaia.models.speed.probe_folders`
        by default (tests pass a fake).

    Returns
    -------
    QuantizedModel
        ``method`` is ``method`` or ``"float32"``; ``reason`` and ``speed`` say why.
    """
    from atalaia.models.speed import probe_folders, slowdown_reasons

    probe = probe or probe_folders
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    quantize_model(merged_dir, out_dir, method=method)
    speed = probe({FLOAT32: merged_dir, method: out_dir}, settings, reference=FLOAT32)
    ratios = speed["ratios"][method]
    limit = settings.quantized_max_slowdown
    slower = slowdown_reasons(ratios, max_prefill=limit, max_decode=limit, what=method)
    cpu = speed.get("cpu", {})
    on = f"on this host (ATen {cpu.get('aten', '?')}, {speed.get('threads', '?')} thread(s))"
    if slower:
        chosen = FLOAT32
        reason = f"{'; '.join(slower)} {on}: deploying the float32 merge"
        shutil.rmtree(out_dir)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _link_or_copy_tree(merged_dir, tmp)
        os.replace(tmp, out_dir)
    else:
        chosen = method
        reason = (
            f"{method} prefill {ratios['prefill_ratio']:.2f}x and decoding {ratios['decode_ratio']:.2f}x the time of "
            f"float32 {on} (limit {limit:.2f}x): deploying {method}"
        )
        if backend_of(method) is not None:
            _link_or_copy_tree(merged_dir, out_dir / FLOAT_MERGE_DIR)
    record = {"format": chosen, "tried": method, "reason": reason, "max_slowdown": limit, "speed": speed}
    (out_dir / FORMAT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("serving format for %s: %s (%s)", merged_dir, chosen, reason)
    return QuantizedModel(path=out_dir, method=chosen, size_bytes=dir_size(out_dir), reason=reason, speed=speed)
