"""A list/dict (JSON) setting whose value is wrong fails like any other bad setting: one line naming
the variable, saying the value must be JSON and showing a valid one; `atalaia` exits 2, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atalaia.settings import ENV_PREFIX, ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]

#: The settings of a list, dict or tuple type: their environment value is JSON.
JSON_SETTINGS = [
    "prices",
    "sample_rates",
    "retention_table_days",
    "gateway_upstreams",
    "gate_guards",
    "gate_bias_max_increase",
    "serving_auto_candidates",
    "api_keys",
]
#: Values people write for a list or map that are not JSON (the README showed the Python repr).
NOT_JSON = ["ort-int4", "ort-int4,ort-int8", "['ort-int4', 'ort-int8']", "{'perplexity': 0.2}", "perplexity=0.2"]


def _example(name: str) -> str:
    from atalaia.settings import json_example

    return json_example(name)


def _config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> str:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings(home=tmp_path)
    return str(info.value)


def test_the_json_settings_are_those_pydantic_settings_would_decode() -> None:
    """Settings decode JSON themselves (``enable_decoding=False``): a list/dict setting left out would
    take its JSON as a plain string and fail."""
    from pydantic_settings import EnvSettingsSource

    from atalaia.settings import json_setting_names

    source = EnvSettingsSource(Settings)  # pydantic-settings>=2.7 (pyproject), which has _field_is_complex
    complex_fields = {name for name, field in Settings.model_fields.items() if source._field_is_complex(field)[0]}
    assert json_setting_names() == complex_fields == set(JSON_SETTINGS)


@pytest.mark.parametrize("name", JSON_SETTINGS)
@pytest.mark.parametrize("value", NOT_JSON)
def test_a_value_that_is_not_json_names_the_variable_and_shows_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    var = ENV_PREFIX + name.upper()
    message = _config_error(monkeypatch, tmp_path, {var: value})
    assert message.startswith(f"{var}="), message
    assert "is not JSON" in message and "Fix:" in message
    assert f"{var}='{_example(name)}'" in message  # the fix shows a valid value, ready to paste
    assert "\n" not in message  # one problem, one line
    if "'" in value:
        assert "double quotes" in message


@pytest.mark.parametrize("name", JSON_SETTINGS)
def test_the_example_in_the_fix_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    example = _example(name)
    assert "'" not in example  # it is shown inside single quotes
    value = json.loads(example)
    assert value, "an empty example shows nothing of the form"
    if "<" in example:  # a placeholder (api_keys: the hash of a key nobody should copy)
        return
    monkeypatch.setenv(ENV_PREFIX + name.upper(), example)
    settings = load_settings(home=tmp_path)
    assert json.loads(json.dumps(getattr(settings, name))) == value


def test_json_from_the_environment_still_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATALAIA_SERVING_AUTO_CANDIDATES", '["ort-fp32"]')
    monkeypatch.setenv("ATALAIA_GATE_GUARDS", '{"similarity": 0.1}')
    monkeypatch.setenv("ATALAIA_PRICES", '{"m@1": [1, 2]}')
    settings = load_settings(home=tmp_path)
    assert settings.serving_auto_candidates == ["ort-fp32"]
    assert settings.gate_guards == {"similarity": 0.1}
    assert settings.prices == {"m@1": (1.0, 2.0)}
    assert load_settings(home=tmp_path, sample_rates={"perplexity": 0.5}).sample_rates == {"perplexity": 0.5}


def test_a_bad_item_names_the_variable_and_the_item(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = _config_error(monkeypatch, tmp_path, {"ATALAIA_SERVING_AUTO_CANDIDATES": '["ort-int4", "float32"]'})
    assert "ATALAIA_SERVING_AUTO_CANDIDATES_" not in message  # no such variable
    assert message.startswith("ATALAIA_SERVING_AUTO_CANDIDATES is invalid at [1] (float32): "), message
    assert "'ort-int4', 'ort-int8', 'ort-fp32', 'ov-int8', 'ov-int4' or 'ov-fp32'" in message
    assert "Fix: set ATALAIA_SERVING_AUTO_CANDIDATES to JSON" in message

    message = _config_error(monkeypatch, tmp_path, {"ATALAIA_PRICES": '{"m@1": ["cheap", 1]}'})
    assert message.startswith('ATALAIA_PRICES is invalid at ["m@1"][0] (cheap): '), message
    assert "ATALAIA_PRICES_" not in message


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = _config_error(
        monkeypatch,
        tmp_path,
        {"ATALAIA_TOPIC_PARTITIONS": "0", "ATALAIA_SAMPLE_RATES": "perplexity=0.2", "ATALAIA_GATE_GUARDS": "{}x"},
    )
    lines = message.splitlines()
    assert len(lines) == 3, message
    assert {line.split("=", 1)[0].split(" ", 1)[0] for line in lines} == {
        "ATALAIA_TOPIC_PARTITIONS",
        "ATALAIA_SAMPLE_RATES",
        "ATALAIA_GATE_GUARDS",
    }


def test_api_keys_that_are_not_json_are_not_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = _config_error(monkeypatch, tmp_path, {"ATALAIA_API_KEYS": "sk-live-123"})
    assert "sk-live-123" not in message and "ATALAIA_API_KEYS=<hidden> is invalid" in message


@pytest.mark.parametrize("command", [["models", "prepare"], ["serve"]])
def test_the_cli_prints_the_fix_and_exits_2(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(ATALAIA_HOME=str(tmp_path), ATALAIA_SERVING_AUTO_CANDIDATES="['ort-int4', 'ort-int8']", COLUMNS="80")
    proc = subprocess.run(
        [sys.executable, "-m", "composition.cli.main", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output and "SettingsError" not in output
    assert "configuration error" in output
    # not wrapped at 80 columns: the example is copied whole
    assert """ATALAIA_SERVING_AUTO_CANDIDATES='["ort-int4", "ort-int8", "ov-int8"]'""" in output
    assert len(output.strip().splitlines()) == 2, output
