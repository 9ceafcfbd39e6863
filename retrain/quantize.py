"""Step 4 of a retraining run: quantize the merged model for CPU serving.

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

from atalaia.models.quantized import (
    INT8_WEIGHT_ONLY,
    METHODS,
    QUANT_FORMAT,
    QUANT_MANIFEST,
    QUANT_WEIGHTS,
)

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
    """

    path: Path
    method: str
    size_bytes: int


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
        ``"int8-weight-only"``, or ``"ort-int4"`` / ``"ort-int8"`` / ``"ort-fp32"`` for an ONNX
        Runtime GenAI export (``ATALAIA_QUANTIZATION_METHOD``).

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
    if method.startswith("ort-"):
        # ONNX Runtime GenAI export (atalaia.models.ortgenai), e.g. "ort-int4".
        from atalaia.models.ortgenai import export_ort

        export_ort(Path(merged_dir), Path(out_dir), precision=method.removeprefix("ort-"))
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
