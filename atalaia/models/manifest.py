"""Reading and writing the small JSON manifests that mark a model folder's format (quantized, exported)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_format_manifest(file: Path, version: int, key: str, known: Iterable[str], what: str) -> dict[str, Any]:
    """The manifest ``file`` if its ``format`` is ``version`` and its ``key`` is one of ``known``.

    Raises
    ------
    ValueError
        When it is unreadable, of another format version or of an unknown ``key`` value; the
        message names the file and ``what`` the manifest describes.

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "m.json"
    >>> _ = f.write_text('{"format": 1, "method": "x"}')
    >>> read_format_manifest(f, 1, "method", ["x"], "quantization")["method"]
    'x'
    >>> try:
    ...     read_format_manifest(f, 1, "method", ["y"], "quantization")
    ... except ValueError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    unknown quantization method 'x'; known: ['y']
    """
    known = list(known)
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} is not a readable {what} manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != version:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{file}: {what} format {found!r}, expected {version}")
    if manifest.get(key) not in known:
        raise ValueError(f"{file}: unknown {what} {key} {manifest.get(key)!r}; known: {known}")
    return manifest


def write_format_manifest(file: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` to ``file`` as the readers above expect it (sorted, indented JSON)."""
    file.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
