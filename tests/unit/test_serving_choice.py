"""``ATALAIA_SERVING_FORMAT=auto``: the rule, the recorded decision and its reuse, with fake probes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atalaia.models.exports import export_dir_for, is_export_dir, precision_of, prepare_serving_format, served_base_path
from atalaia.models.generator import GeneratorNotPreparedError
from atalaia.models.ortgenai import ORT_MANIFEST
from atalaia.models.ovgenai import OV_MANIFEST
from atalaia.models.serving_choice import (
    choice_file,
    choose_serving_format,
    pick_format,
    read_choice,
)
from atalaia.models.speed import FLOAT32, sample_speed
from atalaia.settings import Settings


def _report(prefill_ms: float, decode_tps: float) -> dict[str, float]:
    return {
        "prompt_tokens": 500,
        "best_prefill_ms_per_token": prefill_ms,
        "best_decode_tokens_per_s": decode_tps,
        "prefill_ms_per_token": prefill_ms,
        "decode_tokens_per_s": decode_tps,
    }


class FakeProbe:
    """Stands in for ``probe_folders``: fixed reports per format, and a record of what it probed."""

    def __init__(self, reports: dict[str, dict[str, float]]) -> None:
        self.reports = reports
        self.calls: list[dict[str, Path]] = []

    def __call__(self, folders: dict[str, Path], settings: Settings, *, reference: str) -> dict[str, Any]:
        assert reference == FLOAT32
        self.calls.append(dict(folders))
        return {
            "reports": {name: self.reports[name] for name in folders},
            "prompt_tokens": 500,
            "threads": 1,
            "cpu": {"aten": "AVX2"},
        }


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    """``auto`` among the two ORT formats (the rule's tests), unless ``kw`` says otherwise."""
    return Settings(
        home=tmp_path, serving_format="auto", **({"serving_auto_candidates": ["ort-int4", "ort-int8"]} | kw)
    )


def _fake_export(settings: Settings, fmt: str) -> Path:
    assert settings.models_dir is not None
    out = export_dir_for(settings.models_dir, settings.generator_model, fmt)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ORT_MANIFEST if fmt.startswith("ort-") else OV_MANIFEST
    (out / manifest).write_text(json.dumps({"format": 1, "precision": precision_of(fmt)}), encoding="utf-8")
    return out


def _ppl(values: dict[str, float]) -> Any:
    def score(folder: Path) -> float:
        for name, value in values.items():
            if folder.name.endswith(name) or (name == FLOAT32 and not is_export_dir(folder)):
                return value
        raise AssertionError(folder)

    return score


def test_rule_picks_the_fastest_request_among_formats_of_acceptable_quality() -> None:
    reports = {
        FLOAT32: _report(2.0, 15.0),
        "ort-int4": _report(2.4, 120.0),
        "ort-int8": _report(2.2, 80.0),
    }
    fmt, reason, measured = pick_format(
        reports,
        {FLOAT32: 10.0, "ort-int4": 10.3, "ort-int8": 10.1},
        prompt_tokens=500,
        answer_tokens=64,
        ppl_tolerance=0.05,
    )
    # int4: 1200 + 533 ms; int8: 1100 + 800 ms; float32: 1000 + 4267 ms.
    assert fmt == "ort-int4"
    assert measured["ort-int4"]["estimated_request_ms"] == pytest.approx(1200 + 64 / 120 * 1000)
    assert "float32 5267 ms" in reason
    # int4 fails the quality check: the next fastest acceptable format is served, and the reason says so.
    fmt, reason, _ = pick_format(
        reports,
        {FLOAT32: 10.0, "ort-int4": 11.0, "ort-int8": 10.4},
        prompt_tokens=500,
        answer_tokens=64,
        ppl_tolerance=0.05,
    )
    assert fmt == "ort-int8"
    assert "refused for quality: ort-int4" in reason


def test_rule_keeps_float32_when_no_candidate_is_faster_or_good_enough() -> None:
    def pick(reports: dict[str, dict[str, float]], ppl: dict[str, float]) -> str:
        return pick_format(reports, ppl, prompt_tokens=500, answer_tokens=64, ppl_tolerance=0.05)[0]

    slow = {FLOAT32: _report(2.0, 40.0), "ort-int4": _report(6.0, 45.0)}
    assert pick(slow, {FLOAT32: 10.0, "ort-int4": 10.0}) == FLOAT32
    bad = {FLOAT32: _report(2.0, 15.0), "ort-int4": _report(1.0, 150.0)}
    assert pick(bad, {FLOAT32: 10.0, "ort-int4": float("nan")}) == FLOAT32
    with pytest.raises(ValueError, match="float32"):
        pick_format({"ort-int4": _report(1, 1)}, {"ort-int4": 1.0}, prompt_tokens=1, answer_tokens=1, ppl_tolerance=0)


def test_choice_is_measured_recorded_served_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(GeneratorNotPreparedError, match="ATALAIA_SERVING_FORMAT=auto"):
        served_base_path(settings)
    probe = FakeProbe({FLOAT32: _report(2.0, 15.0), "ort-int4": _report(2.1, 120.0), "ort-int8": _report(2.0, 60.0)})
    ppl = _ppl({"int4": 10.2, "int8": 10.1, FLOAT32: 10.0})
    choice = choose_serving_format(settings, perplexity=ppl, probe=probe, export=_fake_export)
    assert choice.format == "ort-int4"
    assert set(probe.calls[0]) == {FLOAT32, "ort-int4", "ort-int8"}
    record = read_choice(settings)
    assert record is not None and record["format"] == "ort-int4" and "AVX2" in record["reason"]
    assert served_base_path(settings) == choice.path
    # Same base and candidates: the record is reused without measuring again.
    again = choose_serving_format(settings, perplexity=ppl, probe=probe, export=_fake_export)
    assert again.format == "ort-int4" and len(probe.calls) == 1
    # Other candidates (or --force) measure again.
    only8 = _settings(tmp_path, serving_auto_candidates=["ort-int8"])
    assert choose_serving_format(only8, perplexity=ppl, probe=probe, export=_fake_export).format == "ort-int8"
    assert len(probe.calls) == 2
    choose_serving_format(only8, perplexity=ppl, probe=probe, export=_fake_export, force=True)
    assert len(probe.calls) == 3


def test_chosen_export_missing_or_record_corrupt_is_not_prepared(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    probe = FakeProbe({FLOAT32: _report(2.0, 15.0), "ort-int4": _report(2.0, 120.0), "ort-int8": _report(9, 9)})
    choice = choose_serving_format(
        settings, perplexity=_ppl({"int4": 10.0, "int8": 10.0, FLOAT32: 10.0}), probe=probe, export=_fake_export
    )
    (choice.path / ORT_MANIFEST).unlink()
    with pytest.raises(GeneratorNotPreparedError, match="run `atalaia models prepare`"):
        served_base_path(settings)
    choice_file(settings).write_text("{not json", encoding="utf-8")
    assert read_choice(settings) is None


def test_prepare_auto_needs_a_quality_check(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="perplexity"):
        prepare_serving_format(_settings(tmp_path))


def test_auto_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(home=tmp_path, serving_auto_candidates=["int4"])  # type: ignore[list-item]


def test_probe_uses_a_backends_own_speed_sample() -> None:
    class OwnLoop:
        def speed_sample(self, input_ids: Any, decode_tokens: int) -> str:
            return f"own {decode_tokens}"

    assert sample_speed(OwnLoop(), None, 3) == "own 3"


def test_a_changed_rule_setting_re_decides_from_the_recorded_measurements(tmp_path: Path) -> None:
    """A reviewer's repro: the decision was reused after ATALAIA_QUANTIZED_PPL_TOLERANCE changed.
    It is decided again from the recorded speed and perplexity, without a new probe."""
    settings = _settings(tmp_path)
    probe = FakeProbe({FLOAT32: _report(2.0, 15.0), "ort-int4": _report(1.0, 120.0), "ort-int8": _report(2.0, 60.0)})
    ppl = _ppl({"int4": 13.0, "int8": 10.1, FLOAT32: 10.0})  # int4 is 30 % worse: refused at 5 %
    assert choose_serving_format(settings, perplexity=ppl, probe=probe, export=_fake_export).format == "ort-int8"
    lenient = _settings(tmp_path, quantized_ppl_tolerance=0.5)
    again = choose_serving_format(lenient, perplexity=ppl, probe=probe, export=_fake_export)
    assert again.format == "ort-int4" and len(probe.calls) == 1
    assert served_base_path(lenient) == again.path
    record = read_choice(lenient)
    assert record is not None and record["rule"]["ppl_tolerance"] == 0.5
    # And back: the strict rule refuses int4 again, still without measuring.
    assert choose_serving_format(settings, perplexity=ppl, probe=probe, export=_fake_export).format == "ort-int8"
    assert len(probe.calls) == 1


def test_folder_format_names_the_precision_served(tmp_path: Path) -> None:
    from atalaia.models.ortgenai import ORT_FORMAT
    from atalaia.models.quantized import QUANT_FORMAT, QUANT_MANIFEST
    from atalaia.models.serving_choice import folder_format

    ort, int8, plain = tmp_path / "ort", tmp_path / "int8", tmp_path / "plain"
    for folder in (ort, int8, plain):
        folder.mkdir()
    (ort / ORT_MANIFEST).write_text(json.dumps({"format": ORT_FORMAT, "precision": "int8"}))
    (int8 / QUANT_MANIFEST).write_text(json.dumps({"format": QUANT_FORMAT, "method": "int8-weight-only"}))
    assert folder_format(ort) == "ort-int8"
    assert folder_format(int8) == "int8-weight-only"
    assert folder_format(plain) == FLOAT32
    assert folder_format(None) is None


def test_default_candidates_include_openvino_and_it_wins_when_measured_fastest(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, serving_format="auto")
    assert "ov-int8" in settings.serving_auto_candidates
    probe = FakeProbe(
        {
            FLOAT32: _report(2.0, 15.0),
            "ort-int4": _report(2.1, 120.0),
            "ort-int8": _report(2.0, 60.0),
            "ov-int8": _report(1.0, 80.0),
        }
    )
    ppl = _ppl({"ort-int4": 13.0, "ort-int8": 10.1, "ov-int8": 10.2, FLOAT32: 10.0})
    choice = choose_serving_format(settings, perplexity=ppl, probe=probe, export=_fake_export)
    assert choice.format == "ov-int8" and choice.path.name.endswith("-ov-int8")
    assert served_base_path(settings) == choice.path
