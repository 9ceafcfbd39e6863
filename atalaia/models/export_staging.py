"""Writing an exported model folder (ONNX Runtime or OpenVINO GenAI) so that no reader sees it half done.

An exporter runs in a subprocess (it keeps its own memory) into a temporary folder beside the
destination; the source's config and tokenizer files are copied in (the Hugging Face tokenizer
makes the ids on every backend), the manifest is written last, and the folder replaces the
destination in one rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atalaia.models.manifest import write_format_manifest

#: Files an export carries from its float32 source folder.
CARRIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@contextlib.contextmanager
def staging_folder(src: Path, out: Path, tag: str, error: type[Exception]) -> Iterator[Path]:
    """A fresh temporary folder beside ``out``, which replaces ``out`` when the block succeeds.

    Raises ``error`` when ``src`` is not a model folder. Whatever happens, no temporary folder is
    left behind.
    """
    if not (src / "config.json").is_file():
        raise error(f"no model folder at {src} (config.json missing). Fix: run `atalaia models prepare`.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}-", dir=out.parent))
    # mkdtemp makes the folder private (0700); a model folder is read by services that may run
    # as another user, like the other model folders (0755).
    tmp.chmod(0o755)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_exporter(
    cmd: list[str],
    *,
    produced: Path,
    error: type[Exception],
    what: str,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> None:
    """Run ``cmd``; raise ``error`` (with the end of its output) unless it exits 0 and wrote ``produced``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what} timed out after {timeout_s:.0f} s") from exc
    if proc.returncode != 0 or not produced.is_file():
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise error(f"{what} failed (exit {proc.returncode}): {tail}")


def finish_export(src: Path, tmp: Path, manifest_name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Copy :data:`CARRIED` from ``src``, then write the manifest (with ``source`` and ``size_bytes``) last."""
    for name in CARRIED:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    manifest = manifest | {"source": str(src)}
    manifest["size_bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    write_format_manifest(tmp / manifest_name, manifest)
    return manifest
