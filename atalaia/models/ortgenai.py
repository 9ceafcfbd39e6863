"""A second generation backend: ONNX Runtime GenAI (int4/int8/fp32 ONNX models on CPU).

An ORT folder is exported offline from a float32 model folder by the onnxruntime-genai model
builder (:func:`export_ort`) and holds

- ``model.onnx`` + ``model.onnx.data`` and ``genai_config.json`` (the builder's output);
- ``config.json``, the tokenizer files and the chat template of the source folder;
- ``atalaia-ort.json``: the precision and builder version, written last (marks a complete folder).

:class:`OrtGenerator` serves such a folder behind the interface of
:class:`atalaia.models.generator.Generator` (``chat``, ``chat_stream``, stop strings,
``max_tokens``, temperature, usage counts); ``Generator.load`` dispatches to it when the folder
has the manifest. Token ids come from the Hugging Face tokenizer: the builder's own tokenizer
conversion of SmolLM2 returns -1 ids (see ``shared/README.md``), so prompts are encoded with the
HF tokenizer, fed with ``append_tokens`` and decoded with the HF tokenizer again.

Examples
--------
>>> export_ort(settings.generator_path, out_dir, precision="int4")      # doctest: +SKIP
>>> Generator.load(out_dir).chat([{"role": "user", "content": "Hi"}]).text  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Generator as PyGenerator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from atalaia.models.export_staging import finish_export, run_exporter, staging_folder
from atalaia.models.manifest import read_format_manifest
from atalaia.models.token_loop import TokenLoopGenerator

logger = logging.getLogger(__name__)

ORT_MANIFEST = "atalaia-ort.json"
ORT_FORMAT = 1
#: Precisions the builder exports for CPU, as recorded in ``model_versions.quantization``.
PRECISIONS = ("int4", "int8", "fp32")


class OrtExportError(RuntimeError):
    """The onnxruntime-genai builder failed; the message carries the end of its output."""


def quantization_label(precision: str) -> str:
    """The ``model_versions.quantization`` value of an ORT folder, e.g. ``'ort-int4'``."""
    return f"ort-{precision}"


def is_ort_dir(path: Path | str) -> bool:
    """Whether ``path`` holds a complete ONNX Runtime GenAI folder written by :func:`export_ort`."""
    return (Path(path) / ORT_MANIFEST).is_file()


def read_ort_manifest(path: Path | str) -> dict[str, Any]:
    """The ``atalaia-ort.json`` of an ORT folder.

    Raises
    ------
    ValueError
        When it is unreadable, of another format version or of an unknown precision.
    """
    return read_format_manifest(Path(path) / ORT_MANIFEST, ORT_FORMAT, "precision", PRECISIONS, "ORT")


def export_ort(
    src_dir: Path | str,
    out_dir: Path | str,
    *,
    precision: str = "int4",
    extra_options: dict[str, str] | None = None,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Export a float32 model folder to an ONNX Runtime GenAI folder, offline.

    Runs ``python -m onnxruntime_genai.models.builder`` in a subprocess (it keeps its own
    memory), into a temporary sibling folder that is renamed to ``out_dir`` only when complete.

    Parameters
    ----------
    src_dir
        A float32 safetensors folder (the prepared base model or a merged candidate).
    out_dir
        Destination; replaced if it exists.
    precision
        ``int4`` (default), ``int8`` or ``fp32``.
    extra_options
        The builder's ``--extra_options`` (e.g. ``{"int4_accuracy_level": "4"}``).
    timeout_s
        Give up after this many seconds.

    Returns
    -------
    dict
        The manifest written (precision, builder version, seconds, size in bytes).

    Raises
    ------
    ValueError
        Unknown precision.
    OrtExportError
        The builder failed or timed out.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    from atalaia.models.prepare import require_module

    require_module("onnxruntime_genai", "onnxruntime-genai", "export the ONNX Runtime GenAI model")
    require_module("onnx_ir", "onnx-ir", "export the ONNX Runtime GenAI model")
    import onnxruntime_genai as og

    src, out = Path(src_dir), Path(out_dir)
    with staging_folder(src, out, "ort", OrtExportError) as tmp:
        logger.info("exporting %s to ONNX Runtime GenAI %s (about half a minute to a few minutes)", src, precision)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(tmp)]
        cmd += ["-p", precision, "-e", "cpu", "-c", str(tmp / ".cache")]
        if extra_options:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra_options.items())]
        what = f"onnxruntime-genai builder on {src}"
        run_exporter(cmd, produced=tmp / "model.onnx", error=OrtExportError, what=what, timeout_s=timeout_s)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        _patch_genai_config(tmp / "genai_config.json")
        manifest = {
            "format": ORT_FORMAT,
            "precision": precision,
            "extra_options": dict(extra_options or {}),
            "onnxruntime_genai_version": og.__version__,
            "export_s": round(time.perf_counter() - t0, 2),
        }
        manifest = finish_export(src, tmp, ORT_MANIFEST, manifest)
    logger.info("exported %s to ONNX Runtime GenAI %s at %s in %.1f s", src, precision, out, manifest["export_s"])
    return manifest


def _patch_genai_config(path: Path) -> None:
    """End generation at ``<|im_end|>`` only, as the transformers backend does.

    The builder lists every id the HF config calls an end (``<|im_start|>`` too); a reply that
    opened a new turn would then stop one token earlier than on transformers.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    pad = config["model"].get("pad_token_id")
    if isinstance(pad, int):
        config["model"]["eos_token_id"] = pad
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


class _OrtLogits:
    """Full-sequence logits of an ORT model, shaped like a transformers forward pass.

    Lets code written for ``generator.model(input_ids=...).logits`` (holdout perplexity in
    ``retrain.evaluate``) score an ORT version too.
    """

    def __init__(self, og_model: Any, context_length: int) -> None:
        self._og_model = og_model
        self.config = SimpleNamespace(max_position_embeddings=context_length)

    def __call__(self, input_ids: Any, **_: Any) -> SimpleNamespace:
        import onnxruntime_genai as og
        import torch

        ids = [int(i) for i in input_ids[0].tolist()]
        params = og.GeneratorParams(self._og_model)
        params.set_search_options(max_length=len(ids) + 1)
        gen = og.Generator(self._og_model, params)
        gen.append_tokens([ids])
        return SimpleNamespace(logits=torch.from_numpy(gen.get_output("logits").copy()))

    def eval(self) -> _OrtLogits:
        return self


class OrtGenerator(TokenLoopGenerator):
    """A :class:`Generator` whose model runs on ONNX Runtime GenAI.

    ``self.model`` is a logits shim (see :class:`_OrtLogits`); generation uses the ORT model.
    Use ``Generator.load`` on an ORT folder rather than the constructor.
    """

    backend = "onnxruntime-genai"

    def __init__(self, og_model: Any, tokenizer: Any, path: Path, context_length: int, precision: str) -> None:
        super().__init__(_OrtLogits(og_model, context_length), tokenizer, path)
        self._og_model = og_model
        self._context_length = context_length
        self.precision = precision

    @classmethod
    def load_ort(cls, path: Path | str, threads: int = 0) -> OrtGenerator:
        """Load an ORT folder written by :func:`export_ort`.

        Parameters
        ----------
        path
            The folder.
        threads
            ORT intra-op threads for this model; 0 lets ORT choose (all cores).

        Returns
        -------
        OrtGenerator
        """
        from atalaia.models.prepare import _quiet_transformers_bars, require_module

        require_module("onnxruntime_genai", "onnxruntime-genai", "serve an ONNX Runtime GenAI model version")
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        path = Path(path).expanduser()
        manifest = read_ort_manifest(path)
        t0 = time.perf_counter()
        config = og.Config(str(path))
        if threads > 0:
            # Per session, not process-wide as torch's setting is.
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        og_model = og.Model(config)
        with _quiet_transformers_bars():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        genai = json.loads((path / "genai_config.json").read_text(encoding="utf-8"))
        context = int(genai["model"]["context_length"])
        logger.info(
            "ONNX Runtime GenAI %s generator loaded from %s in %.2f s (%s threads)",
            manifest["precision"],
            path,
            time.perf_counter() - t0,
            threads or "default",
        )
        return cls(og_model, tokenizer, path, context, str(manifest["precision"]))

    @property
    def context_length(self) -> int:
        """Largest number of tokens (prompt + completion) the model accepts."""
        return self._context_length

    def _tokens(
        self, ids: list[int], max_tokens: int, temperature: float, top_p: float, cancel: threading.Event
    ) -> PyGenerator[int, None, None]:
        """Generated token ids, one at a time, until ``<|im_end|>``, ``max_tokens`` or ``cancel``."""
        import onnxruntime_genai as og

        params = og.GeneratorParams(self._og_model)
        options: dict[str, Any] = {"max_length": len(ids) + max_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            # top_k 50 is also transformers' default, so both backends sample the same way.
            options.update(temperature=temperature, top_p=top_p, top_k=50)
        params.set_search_options(**options)
        gen = og.Generator(self._og_model, params)
        gen.append_tokens([ids])
        produced = 0
        while produced < max_tokens and not cancel.is_set() and not gen.is_done():
            gen.generate_next_token()
            next_id = int(gen.get_next_tokens()[0])
            produced += 1
            yield next_id
            if next_id == self.eos_token_id:
                return

    def speed_sample(self, input_ids: Any, decode_tokens: int) -> Any:
        """One run of the speed probe (:mod:`atalaia.models.speed`) on ONNX Runtime GenAI.

        ``append_tokens`` runs the forward pass over the prompt (prefill, timed with the choice of
        the first token); each further ``generate_next_token`` runs one cached decode step.
        ``min_length`` keeps ``<|im_end|>`` from ending the timed steps early.

        Returns
        -------
        atalaia.models.speed.SpeedSample
        """
        import onnxruntime_genai as og

        from atalaia.models.speed import SpeedSample

        if decode_tokens < 1:
            raise ValueError("decode_tokens must be at least 1")
        ids = [int(i) for i in input_ids[0].tolist()]
        total = len(ids) + decode_tokens + 1
        params = og.GeneratorParams(self._og_model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        with self._lock:
            gen = og.Generator(self._og_model, params)
            t0 = time.perf_counter()
            gen.append_tokens([ids])
            gen.generate_next_token()
            t1 = time.perf_counter()
            steps = 0
            while steps < decode_tokens and not gen.is_done():
                gen.generate_next_token()
                steps += 1
            t2 = time.perf_counter()
        return SpeedSample(
            prompt_tokens=len(ids),
            prefill_ms=(t1 - t0) * 1000.0,
            decode_ms=(t2 - t1) * 1000.0,
            decode_tokens=max(steps, 1),
        )


def ort_dir_for(models_dir: Path, model_name: str, precision: str) -> Path:
    """Where the prepared base model's ORT export lives: ``<models_dir>/<name>-ort-<precision>``."""
    from atalaia.models.exports import export_dir_for

    return export_dir_for(models_dir, model_name, quantization_label(precision))


def prepare_ort(base_dir: Path | str, out_dir: Path | str, *, precision: str = "int4", force: bool = False) -> Path:
    """Export the prepared base model to ORT once (:func:`atalaia.models.exports.prepare_export`)."""
    from atalaia.models.exports import prepare_export

    return prepare_export(base_dir, out_dir, quantization_label(precision), force=force)
