from __future__ import annotations

import pytest

from atalaia.settings import ConfigError, load_settings


def test_defaults_work_on_a_laptop(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("ATALAIA_DATABASE_URL", raising=False)
    s = load_settings(home=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'atalaia.db'}"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topic("alerts") == "atalaia.alerts"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("ATALAIA_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("ATALAIA_DATABASE_URL", "postgresql://u@h/db", "postgresql+psycopg"),
        ("ATALAIA_DATABASE_URL", "mysql://x", "sqlite"),
        ("ATALAIA_TOPIC_PARTITIONS", "zero", "integer"),
        ("ATALAIA_INFERENCE_PORT", "70000", "65535"),
        ("ATALAIA_LOG_LEVEL", "LOUD", "DEBUG"),
    ],
)
def test_bad_env_fails_with_key_and_fix(monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert var in message and "Fix:" in message and needle in message


def test_token_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAIA_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("ATALAIA_TOPIC_PARTITIONS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)
