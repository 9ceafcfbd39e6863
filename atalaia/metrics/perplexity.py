"""Perplexity of texts under a causal language model (SmolLM2 by default), per model version."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class PerplexityScorer:
    """Batched perplexity: ``exp`` of the mean token negative log-likelihood of each text.

    Texts are truncated to ``max_tokens`` tokens (the metric is about fluency, and a bound keeps
    the cost per event fixed). A text of fewer than 2 tokens has no perplexity: ValueError.
    """

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 128, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._lock = threading.Lock()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def score(self, texts: Sequence[str]) -> list[float | ValueError]:
        """Perplexity of each text, or the ValueError explaining why it has none."""
        import torch

        results: list[float | ValueError] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                add_special_tokens=False,
            )
            ids, mask = enc["input_ids"], enc["attention_mask"]
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            target = ids[:, 1:]
            token_lp = logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            tmask = mask[:, 1:].to(token_lp.dtype)
            counts = tmask.sum(dim=1)
            nll = -(token_lp * tmask).sum(dim=1)
            for n, total in zip(counts.tolist(), nll.tolist(), strict=True):
                if n < 1:
                    results.append(ValueError("text has fewer than 2 tokens"))
                else:
                    results.append(math.exp(total / n))
        return results


class VersionedPerplexity:
    """Perplexity under the model version that produced each response.

    The folder of a version comes from the registry (``model_versions.artefact_path``, read through
    the storage layer); the configured base version (``ATALAIA_MODEL_VERSION``) is
    ``settings.generator_path`` even before it is registered. Up to ``max_loaded`` versions stay
    loaded; the least recently used is dropped first. A version the registry does not know (a
    model Atalaia does not host, or a typo) has no scorer: its events get no perplexity.

    ``loader`` maps a folder to a scorer (the default loads the generator); tests pass fakes.
    """

    #: Seconds an unknown version stays unknown before the registry is asked again (a version is
    #: registered before it is served, so a miss is rarely worth a query per batch).
    MISS_TTL_S = 60.0

    def __init__(
        self,
        settings: Any,
        engine: Any = None,
        loader: Callable[[Path], Any] | None = None,
        max_loaded: int | None = None,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._loader = loader or self._load
        self.max_loaded = int(max_loaded or settings.perplexity_versions_loaded)
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._folders: dict[str, Path] = {settings.model_version: Path(settings.generator_path)}
        self._misses: dict[str, float] = {}
        self._lock = threading.Lock()

    def _load(self, folder: Path) -> PerplexityScorer:
        from atalaia.models.generator import Generator

        gen = Generator.load(folder, threads=self.settings.torch_threads)
        # An exported version's logits shim (ONNX Runtime or OpenVINO GenAI) ignores the attention
        # mask: it scores one unpadded sequence per call. Only padded-batch backends get 8.
        batch = 8 if gen.batches and gen.pads_batches else 1
        return PerplexityScorer(gen.model, gen.tokenizer, self.settings.perplexity_max_tokens, batch_size=batch)

    @property
    def engine(self) -> Any:
        """The registry's database (``ATALAIA_DATABASE_URL``), opened on first use."""
        if self._engine is None:
            from atalaia.storage.db import get_engine

            self._engine = get_engine(self.settings.database_url)
        return self._engine

    def folder(self, version: str) -> Path | None:
        """The folder of ``version``, or ``None`` when Atalaia does not host it."""
        if version in self._folders:
            return self._folders[version]
        if time.monotonic() - self._misses.get(version, -math.inf) < self.MISS_TTL_S:
            return None
        from atalaia.storage.repository import model_version_folders

        path = model_version_folders(self.engine, [version]).get(version)
        if path and Path(path).is_dir():
            self._folders[version] = Path(path)
            self._misses.pop(version, None)
            return Path(path)
        self._misses[version] = time.monotonic()
        return None

    def scorer(self, version: str) -> Any | None:
        """The loaded scorer of ``version`` (loading it, and unloading the least recently used
        one past ``max_loaded``), or ``None`` when the version is not hosted."""
        with self._lock:
            folder = self.folder(version)
            if folder is None:
                return None
            key = str(folder)
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            scorer = self._loader(folder)
            self._loaded[key] = scorer
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return scorer

    def loaded(self) -> list[Path]:
        """Folders loaded now, least recently used first."""
        return [Path(k) for k in self._loaded]
