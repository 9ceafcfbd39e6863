"""Model preparation and loading: the SmolLM2 generator and the MiniLM sentence embedder.

Importing this package is cheap: the heavy modules (torch, transformers, sentence-transformers)
are imported only when one of the names below is first used, so that CLI start-up and services
that never touch a model do not pay for them.

Public names
------------
prepare_generator, prepare_embedder, prepare_all, read_manifest, ModelPrepareError,
MissingDependencyError (from :mod:`atalaia.models.prepare`);
Generator, ChatResult, ChatStream, GeneratorNotPreparedError, PromptTooLongError, get_generator
(from :mod:`atalaia.models.generator`);
load_embedder (from :mod:`atalaia.models.embedder`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare_generator": "atalaia.models.prepare",
    "prepare_embedder": "atalaia.models.prepare",
    "prepare_all": "atalaia.models.prepare",
    "read_manifest": "atalaia.models.prepare",
    "ModelPrepareError": "atalaia.models.prepare",
    "MissingDependencyError": "atalaia.models.prepare",
    "Generator": "atalaia.models.generator",
    "ChatResult": "atalaia.models.generator",
    "ChatStream": "atalaia.models.generator",
    "GeneratorNotPreparedError": "atalaia.models.generator",
    "PromptTooLongError": "atalaia.models.generator",
    "get_generator": "atalaia.models.generator",
    "load_embedder": "atalaia.models.embedder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attribute: import the defining module on first use only.
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
