"""The Grafana dashboard and its provisioning files, checked without Grafana.

Every SQL query of the dashboard (panels, annotations, the template variable) is parsed as
PostgreSQL with sqlglot and qualified against the schema of ``atalaia.storage.tables``, so a
renamed column or table fails here. With the test PostgreSQL (``make test``), each query also
runs on a migrated database seeded like the dashboard test's, and the charts must return rows.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from sqlalchemy import create_engine, text
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify

from atalaia.storage.tables import metadata
from tests.unit.test_dashboard_data import NEW, OLD, seed

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "atalaia.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "atalaia.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "atalaia.yaml"

SCHEMA = {name: {col.name: "TEXT" for col in table.columns} for name, table in metadata.tables.items()}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def queries() -> dict[str, str]:
    """Every SQL text of the dashboard, by where it is (``panel 11 Latency``, ``annotation Deploys``, ...)."""
    data = dashboard()
    out: dict[str, str] = {}
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            out[f"panel {panel['id']} {panel['title']} {target['refId']}"] = target["rawSql"]
    for anno in data["annotations"]["list"]:
        if "target" in anno:
            out[f"annotation {anno['name']}"] = anno["target"]["rawSql"]
    for var in data["templating"]["list"]:
        out[f"variable {var['name']}"] = var["query"]
    return out


def expand_macros(sql: str, start: str, end: str, versions: list[str]) -> str:
    """Replace the Grafana macros and variables used by the dashboard with plain SQL.

    >>> expand_macros("x IN ($model_version) AND $__timeFilter(ts)", "A", "B", ["v1", "v2"])
    "x IN ('v1','v2') AND ts BETWEEN 'A'::timestamptz AND 'B'::timestamptz"
    """
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} BETWEEN '{start}'::timestamptz AND '{end}'::timestamptz",
        sql,
    )
    sql = sql.replace("$__timeFrom()", f"'{start}'::timestamptz").replace("$__timeTo()", f"'{end}'::timestamptz")
    quoted = ",".join("'" + v.replace("'", "''") + "'" for v in versions)
    sql = re.sub(r"\$\{model_version(:[a-z]+)?\}|\$model_version\b", quoted, sql)
    assert "$" not in sql, f"unexpanded macro in: {sql}"
    return sql


QUERIES = queries()


def test_dashboard_json_is_complete() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and data["schemaVersion"] >= 36
    assert {p["id"] for p in data["panels"]} and len({p["id"] for p in data["panels"]}) == len(data["panels"])
    titles = " ".join(p["title"] for p in data["panels"]).lower()
    for what in ("request rate", "latency", "cost", "toxicity", "rouge-l", "perplexity", "drift", "open alerts"):
        assert what in titles, what
    names = [a["name"] for a in data["annotations"]["list"]]
    assert "Alerts" in names and "Deploys" in names
    (variable,) = [v for v in data["templating"]["list"] if v["name"] == "model_version"]
    assert variable["multi"] and variable["includeAll"]


def test_every_query_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    (source,) = provisioned
    assert source["type"] == "grafana-postgresql-datasource" and source["jsonData"]["database"] == "atalaia"
    data = dashboard()
    refs = [p["datasource"] for p in data["panels"]]
    refs += [t["datasource"] for p in data["panels"] for t in p.get("targets", [])]
    refs += [a["datasource"] for a in data["annotations"]["list"] if "target" in a]
    refs += [v["datasource"] for v in data["templating"]["list"]]
    assert refs and all(r == {"type": source["type"], "uid": source["uid"]} for r in refs), refs


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    (provider,) = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_charts_filter_by_model_version_and_time() -> None:
    for where, sql in QUERIES.items():
        if where.startswith("panel") and "GROUP BY alert_id" not in sql:
            assert "$__timeFilter(" in sql, where
            if "FROM metric_windows" in sql or "FROM metrics" in sql:
                assert "IN ($model_version)" in sql, where


@pytest.mark.parametrize("where", sorted(QUERIES))
def test_query_names_only_existing_tables_and_columns(where: str) -> None:
    sql = expand_macros(QUERIES[where], "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", [OLD, NEW])
    tree = sqlglot.parse_one(sql, read="postgres")
    for table in tree.find_all(exp.Table):
        assert table.name in SCHEMA, f"{where}: unknown table {table.name}"
    # Raises OptimizeError naming the column when one does not exist.
    qualify(tree, schema=SCHEMA, dialect="postgres", validate_qualify_columns=True)


@pytest.mark.integration
def test_queries_run_on_postgres(fresh_pg: str) -> None:
    engine = create_engine(fresh_pg)
    try:
        seeded = seed(engine)
        start = (seeded.now - timedelta(hours=1)).isoformat()
        end = seeded.now.isoformat()
        with engine.connect() as conn:
            results = {
                where: conn.execute(text(expand_macros(sql, start, end, [OLD, NEW]).replace(":", r"\:"))).all()
                for where, sql in QUERIES.items()
            }
    finally:
        engine.dispose()
    for where, rows in results.items():
        assert rows, f"{where} returned no rows on the seeded hour"
    variable = results["variable model_version"]
    assert [r[0] for r in variable] == [OLD, NEW]
    (open_alerts,) = [rows for where, rows in results.items() if "Open alerts" in where]
    assert [(r.rule, r.state) for r in open_alerts] == [(seeded.firing_rule, "firing")]
    (firing,) = [rows for where, rows in results.items() if "Firing alerts" in where]
    assert firing[0][0] == 1
    (drift,) = [rows for where, rows in results.items() if "drift" in where.lower()]
    assert {r.metric for r in drift} == {f"{v} {s}" for v in (OLD, NEW) for s in ("score", "threshold")}
    (deploys,) = [rows for where, rows in results.items() if where == "annotation Deploys"]
    assert [r.text for r in deploys] == [f"deploy {NEW} (from {OLD})"]
