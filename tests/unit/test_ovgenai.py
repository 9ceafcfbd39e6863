"""Unit tests of the OpenVINO GenAI backend's files, its dispatch and its token loop (with a fake
pipeline; ``tests/integration/test_models.py`` runs the generator suite on the real export)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from atalaia.models import ovgenai
from atalaia.models.exports import (
    export_dir_for,
    export_manifest,
    is_export_dir,
    prepare_export,
    served_base_path,
)
from atalaia.models.generator import GeneratorNotPreparedError
from atalaia.models.ovgenai import OV_MANIFEST, OvExportError, OvGenerator, export_ov, is_ov_dir, read_ov_manifest
from atalaia.settings import Settings

EOS = 2


def _write_manifest(folder: Path, **fields: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OV_MANIFEST).write_text(json.dumps({"format": 1, "precision": "int8", **fields}), encoding="utf-8")


def test_manifest_marks_a_complete_folder(tmp_path: Path) -> None:
    assert not is_ov_dir(tmp_path) and not is_export_dir(tmp_path)
    _write_manifest(tmp_path, source="/m/base")
    assert is_ov_dir(tmp_path) and is_export_dir(tmp_path)
    assert read_ov_manifest(tmp_path)["precision"] == "int8"
    assert export_manifest(tmp_path)[0] == "ov-int8"


@pytest.mark.parametrize("fields", [{"format": 2}, {"precision": "int3"}])
def test_bad_manifest_is_refused(tmp_path: Path, fields: dict[str, object]) -> None:
    _write_manifest(tmp_path, **fields)
    with pytest.raises(ValueError):
        read_ov_manifest(tmp_path)


def test_export_needs_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(OvExportError, match="atalaia models prepare"):
        export_ov(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError):
        export_ov(tmp_path, tmp_path / "out", precision="int3")


def test_served_base_path_follows_the_serving_format(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, serving_format="ov-int8")
    assert settings.models_dir is not None
    expected = export_dir_for(settings.models_dir, settings.generator_model, "ov-int8")
    with pytest.raises(GeneratorNotPreparedError, match="ATALAIA_SERVING_FORMAT=ov-int8"):
        served_base_path(settings)
    _write_manifest(expected)
    assert served_base_path(settings) == expected


def _fake_export(calls: list[tuple[Path, Path, str]]) -> Any:
    def export(src: Path, out: Path, *, precision: str) -> dict[str, object]:
        calls.append((Path(src), Path(out), precision))
        _write_manifest(Path(out), precision=precision, source=str(src))
        return {}

    return export


def test_retrain_quantize_dispatches_ov_methods_and_keeps_float_weights_findable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrain.quantize import quantize_model, training_folder

    calls: list[tuple[Path, Path, str]] = []
    monkeypatch.setattr(ovgenai, "export_ov", _fake_export(calls))
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    result = quantize_model(merged, tmp_path / "out", method="ov-int8")
    assert calls == [(merged, tmp_path / "out", "int8")]
    assert result.method == "ov-int8" and is_ov_dir(result.path)
    # A later run fine-tunes from the float folder the export came from, not from the IR.
    assert training_folder(result.path) == merged


def test_base_export_is_cached_until_the_base_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, Path, str]] = []
    monkeypatch.setattr(ovgenai, "export_ov", _fake_export(calls))
    base, out = tmp_path / "base", tmp_path / "base-ov-int8"
    base.mkdir()
    prepare_export(base, out, "ov-int8")
    prepare_export(base, out, "ov-int8")
    assert len(calls) == 1
    prepare_export(base, out, "ov-int4")  # another precision in the same folder: exported again
    prepare_export(base, out, "ov-int4", force=True)
    assert [c[2] for c in calls] == ["int8", "int4", "int4"]


def test_folder_format_and_settings_accept_openvino(tmp_path: Path) -> None:
    from atalaia.models.serving_choice import folder_format

    _write_manifest(tmp_path / "ov", precision="int4")
    assert folder_format(tmp_path / "ov") == "ov-int4"
    settings = Settings(home=tmp_path, quantization_method="ov-int8", serving_auto_candidates=["ov-int8"])
    assert settings.quantization_method == "ov-int8"


# ---------------------------------------------------------------- the token loop, on a fake pipeline


class _Tokenizer:
    """Token id ``i`` decodes to ``chr(96 + i)`` (1 -> 'a'); ``EOS`` is ``<|im_end|>``."""

    def convert_tokens_to_ids(self, token: str) -> int:
        return EOS

    def decode(self, ids: list[int], **_: Any) -> str:
        return "".join("" if i == EOS else chr(96 + i) for i in ids)


class _Pipe:
    """Streams ``script`` one token at a time; its result also holds a token it did not stream."""

    def __init__(self, script: list[int], fail: bool = False) -> None:
        self.script, self.fail = script, fail
        self.finished = threading.Event()
        self.config: Any = None

    def get_generation_config(self) -> Any:
        return SimpleNamespace()

    def generate(self, inputs: Any, config: Any, streamer: Any) -> Any:
        import openvino_genai

        self.config = config
        out: list[int] = []
        try:
            for token in self.script[: config.max_new_tokens]:
                out.append(token)
                if token == EOS:  # the pipeline does not stream the stop token
                    break
                if self.fail:
                    raise RuntimeError("device lost")
                if streamer.write([token]) == openvino_genai.StreamingStatus.CANCEL:
                    break
        finally:
            self.finished.set()
        return SimpleNamespace(tokens=[out])


def _generator(pipe: _Pipe) -> OvGenerator:
    gen = object.__new__(OvGenerator)
    gen.tokenizer, gen._pipe, gen.eos_token_id = _Tokenizer(), pipe, EOS
    gen._lock, gen._pipe_lock, gen._context_length, gen.format = threading.Lock(), threading.Lock(), 100, "ov-int8"
    return gen


def test_an_unstreamed_im_end_is_yielded_and_counted_as_transformers_counts_it() -> None:
    gen = _generator(_Pipe([1, 3, EOS]))
    assert list(gen._tokens([5, 6], 10, 0.0, 1.0, threading.Event())) == [1, 3, EOS]
    result = gen._finish([5, 6], [1, 3, EOS], 10, None, None)
    assert (result.text, result.completion_tokens, result.finish_reason) == ("ac", 3, "stop")


def test_max_tokens_and_sampling_reach_the_pipeline() -> None:
    pipe = _Pipe([1, 1, 1, 1, 1])
    gen = _generator(pipe)
    assert list(gen._tokens([5], 3, 0.7, 0.9, threading.Event())) == [1, 1, 1]
    assert pipe.config.max_new_tokens == 3 and pipe.config.do_sample
    assert (pipe.config.temperature, pipe.config.top_p, pipe.config.top_k) == (0.7, 0.9, 50)
    assert pipe.config.stop_token_ids == {EOS}


def test_closing_early_cancels_the_pipeline_without_waiting_for_it() -> None:
    pipe = _Pipe([1] * 50)
    gen = _generator(pipe)
    tokens = gen._tokens([5], 50, 0.0, 1.0, threading.Event())
    assert next(tokens) == 1
    tokens.close()  # returns at once (the server closes streams on its event loop)
    assert pipe.finished.wait(5)  # the pipeline stops at its next token
    with gen._pipe_lock:  # and the next generation can have it
        pass


def test_a_stop_string_ends_chat_and_the_pipeline() -> None:
    import torch

    pipe = _Pipe([1, 3, 4, 5, 6])  # "acdef"
    gen = _generator(pipe)
    gen._encode = lambda messages: {"input_ids": torch.tensor([[5, 6]])}  # type: ignore[method-assign]
    result = gen.chat([{"role": "user", "content": "x"}], max_tokens=10, stop=["d"])
    assert result.text == "ac" and result.finish_reason == "stop"
    assert pipe.finished.wait(5)


def test_a_pipeline_error_reaches_the_caller() -> None:
    gen = _generator(_Pipe([1, 3], fail=True))
    with pytest.raises(RuntimeError, match="device lost"):
        list(gen._tokens([5], 5, 0.0, 1.0, threading.Event()))
