"""Security properties checked on the source and on the running app (no services needed):

- secrets (admin token, webhook secret, signatures) are compared in constant time, never with
  ``==``;
- SQL goes through bound parameters: no ``text()``/``execute()`` of an f-string, ``%``-formatted,
  ``.format``-ted or concatenated string anywhere in the code base;
- the admin token opens the admin routes and nothing near it does (prefix, suffix, case);
- the log formatters hide secret-named fields and database URLs are redacted.

The end-to-end checks (secrets absent from every service's log, PII absent from events, logs
and the database) run on real processes in ``tests/integration/test_faults_secrets.py``.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atalaia.logs import JsonFormatter, TextFormatter
from atalaia.settings import Settings
from atalaia.storage.db import redact_url
from inference.app import create_app
from tests.unit.test_inference_api import FakeGenerator, RecordingProducer

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("atalaia", "consumers", "monitors", "inference", "producers", "retrain", "bench")
# A name that holds a secret: `token`, `admin_token`, `webhook_secret`, `expected_signature`...
# (not `max_tokens` or `prompt_tokens`, which are counts).
SECRET_NAME = re.compile(r"(^|_)(token|secret|signature|password)$")
SQL_CALLS = {"text", "execute", "exec_driver_sql", "executemany", "executescript", "literal_column"}
TOKEN = "adm-7d1e5c2b9a40"


def source_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return [p for p in files if "migrations/versions" not in p.as_posix()]


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def secret_equality_checks(tree: ast.AST) -> list[int]:
    """Lines comparing something secret-named with ``==`` / ``!=`` (timing leaks)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            names = [_name(n).lower() for n in (node.left, *node.comparators)]
            constants = [isinstance(n, ast.Constant) for n in (node.left, *node.comparators)]
            # `token == ""` style emptiness checks leak nothing; a comparison of two values does.
            if any(SECRET_NAME.search(n) for n in names) and not any(constants):
                lines.append(node.lineno)
    return lines


def formatted_sql(tree: ast.AST) -> list[int]:
    """Lines passing a string built by formatting or concatenation to a SQL entry point."""

    def built(node: ast.AST) -> bool:
        if isinstance(node, ast.JoinedStr):
            return any(isinstance(v, ast.FormattedValue) for v in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            return isinstance(node.left, ast.Constant | ast.JoinedStr | ast.BinOp) or isinstance(
                node.right, ast.Constant | ast.JoinedStr
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            # psycopg's sql.SQL(...).format(sql.Identifier(...)) composes quoted identifiers: safe.
            receiver = node.func.value
            return not (isinstance(receiver, ast.Call) and _name(receiver.func) in {"SQL", "sql.SQL"})
        return False

    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _name(node.func) in SQL_CALLS and node.args and built(node.args[0])
    ]


def test_the_checkers_find_what_they_look_for() -> None:
    bad = ast.parse(
        'conn.execute(text(f"select * from t where id = {x}"))\n'
        'conn.execute(text("select * from t where id = %s" % x))\n'
        'conn.exec_driver_sql("drop table " + name)\n'
        'cur.execute("select {}".format(x))\n'
        "if supplied == settings.admin_token: pass\n"
        "ok = signature != expected_signature\n"
        "assert out.shape[1] - n == new_tokens\n"
    )
    assert sorted(formatted_sql(bad)) == [1, 2, 3, 4] and secret_equality_checks(bad) == [5, 6]
    good = ast.parse(
        'conn.execute(text("select * from t where id = :id"), {"id": x})\n'
        "if not token or not hmac.compare_digest(a, token): pass\n"
        'if settings.webhook_secret == "": pass\n'
        'cur.execute(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(name)))\n'
    )
    assert formatted_sql(good) == [] and secret_equality_checks(good) == []


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_formatted_sql_and_no_plain_secret_comparison(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    assert formatted_sql(tree) == [], f"{path}: SQL built from formatted strings (use bound parameters)"
    assert secret_equality_checks(tree) == [], f"{path}: secret compared with ==; use hmac.compare_digest"


def test_admin_token_check_uses_compare_digest() -> None:
    # One check in the kernel (atalaia/admin_auth.py), used by both services' admin routes.
    assert "hmac.compare_digest(" in (ROOT / "atalaia" / "admin_auth.py").read_text(encoding="utf-8")
    for path in (ROOT / "inference" / "routes" / "admin.py", ROOT / "monitors" / "api.py"):
        source = path.read_text(encoding="utf-8")
        assert "admin_token" in source and "is_admin(" in source, path


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(
    st.sampled_from([TOKEN[:-1], TOKEN + "0", TOKEN.upper(), " " + TOKEN[1:], TOKEN[::-1], ""])
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
)
@example(TOKEN[:1])
def test_only_the_exact_token_opens_admin_routes(near_miss: str) -> None:
    client = _admin_client()
    for path in ("/admin/cache/clear", "/admin/rollback"):
        r = client.post(path, json={}, headers={"authorization": f"Bearer {near_miss}"})
        assert r.status_code == 401 and TOKEN not in r.text
    assert client.post("/admin/cache/clear", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


_CLIENTS: dict[str, TestClient] = {}


def _admin_client() -> TestClient:
    if "c" not in _CLIENTS:
        s = Settings(home=Path("/tmp/atalaia-security-test"), admin_token=TOKEN)
        _CLIENTS["c"] = TestClient(create_app(s, FakeGenerator(), RecordingProducer()))
    return _CLIENTS["c"]


@settings(max_examples=40, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(["admin_token", "password", "webhook_secret", "Authorization", "db_password", "api_token"]),
    secret=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=30),
)
def test_formatters_hide_secret_named_fields(key: str, secret: str) -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "starting", None, None)
    setattr(record, key, secret)
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert secret not in line and "<hidden>" in line


@settings(max_examples=40, derandomize=True, database=None, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="@/:?#[]%"), min_size=6))
def test_database_urls_are_redacted(password: str) -> None:
    url = f"postgresql+psycopg://atalaia:{password}@127.0.0.1:5432/db"
    assert password not in redact_url(url).replace("atalaia:", "", 1).replace("127.0.0.1:5432/db", "")


def test_a_service_start_logs_no_secret(tmp_path: Path) -> None:
    """The in-process part of the start-up of the inference app and the worker, at DEBUG level."""
    secret_pw, token = "pw-5f0c9e13b7", "tok-0a9b8c7d6e5f"
    s = Settings(
        home=tmp_path,
        admin_token=token,
        database_url=f"postgresql+psycopg://atalaia:{secret_pw}@127.0.0.1:1/atalaia",
        kafka_bootstrap="127.0.0.1:1",
        metric_groups="operational",
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        from consumers.worker import create_app as create_worker
        from inference.server import initial_model

        initial_model(s)  # the registry is unreachable: a warning with the error, not the URL
        create_worker(s)  # logs "worker configured" with the database
        client = TestClient(create_app(s, FakeGenerator(), RecordingProducer()))
        client.post("/admin/cache/clear", headers={"authorization": "Bearer wrong"})
        client.get("/healthz")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["event"] == "worker configured" for line in lines), text[:2000]
    assert "***" in text  # the redacted URL was logged
    assert secret_pw not in text and token not in text
