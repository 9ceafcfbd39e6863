"""The reference docs stay in step with the code: settings, CLI commands, topics, events, routes.

- docs/configuration.md has a row for every ``Settings`` field, with its default, and the
  variables of the test suite; README.md (when present) names every setting as well.
- docs/cli.md has a section for every command and sub-command, naming each of its options.
- docs/architecture.md names every topic, event type, HTTP route and table, and its links work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from atalaia.events import EVENT_TYPES
from atalaia.settings import ENV_PREFIX, Settings, load_settings
from atalaia.storage.tables import metadata
from atalaia.topics import topic_specs
from composition.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
CLI = DOCS / "cli.md"
ARCHITECTURE = DOCS / "architecture.md"
README = ROOT / "README.md"

SETTING_VARS = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
TEST_ONLY_VARS = ["ATALAIA_TEST_DATABASE_URL", "ATALAIA_REQUIRE_SERVICES", "ATALAIA_PG_PORT", "ATALAIA_PG_PASSWORD"]


def mentions(text: str, var: str) -> bool:
    """``var`` appears as a whole name (``ATALAIA_HOME`` is not found in ``ATALAIA_HOME_X``)."""
    return re.search(rf"(?<![A-Z0-9_]){re.escape(var)}(?![A-Z0-9_])", text) is not None


def cli_commands() -> dict[str, Any]:
    """Every runnable command by its path (``"kafka start"``), groups walked recursively; a group
    that runs by itself with options of its own (``atalaia report`` beside ``atalaia report
    evidently``) counts too."""
    out: dict[str, Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        own_options = [p for p in getattr(command, "params", []) if p.name != "help"]
        if subcommands is None or (path and getattr(command, "invoke_without_command", False) and own_options):
            out[" ".join(path)] = command
        if subcommands is None:
            return
        for name, sub in subcommands.items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


def table_row(text: str, var: str) -> str:
    """The markdown table row whose first cell is ``var``."""
    for line in text.splitlines():
        if line.startswith(f"| `{var}` |"):
            return line
    raise AssertionError(f"no table row for {var}")


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("var", SETTING_VARS)
def test_every_setting_has_a_row_in_configuration_md(var: str) -> None:
    table_row(CONFIGURATION.read_text(encoding="utf-8"), var)


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_configuration_md_shows_the_default(name: str) -> None:
    field = Settings.model_fields[name]
    row = table_row(CONFIGURATION.read_text(encoding="utf-8"), ENV_PREFIX + name.upper())
    default_cell = row.split("|")[2]
    if field.default_factory is not None:
        assert f"`{field.default_factory()}`" in default_cell, row  # type: ignore[call-arg]
    elif field.default is None:
        assert "unset" in default_cell, row
    elif field.default == "":
        assert "empty" in default_cell, row
    else:
        shown = str(field.default)
        assert shown in default_cell, f"default {shown!r} missing from: {row}"


def test_configuration_md_describes_every_setting() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    for var in SETTING_VARS:
        meaning = table_row(text, var).split("|")[3].strip()
        assert len(meaning) > 10, f"{var} has no meaning"


@pytest.mark.parametrize("var", TEST_ONLY_VARS)
def test_test_only_variables_are_documented(var: str) -> None:
    table_row(CONFIGURATION.read_text(encoding="utf-8"), var)


def test_configuration_md_lists_no_unknown_setting() -> None:
    listed = set(re.findall(r"^\| `(ATALAIA_[A-Z0-9_]+)` \|", CONFIGURATION.read_text(encoding="utf-8"), re.MULTILINE))
    assert listed - set(SETTING_VARS) - set(TEST_ONLY_VARS) == set()


def test_configuration_md_explains_how_a_bad_value_fails() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert "ConfigError" in text and "Fix: set" in text


def test_readme_names_every_setting() -> None:
    if not README.exists():
        pytest.skip("README.md is not written yet")
    text = README.read_text(encoding="utf-8")
    missing = [var for var in SETTING_VARS if not mentions(text, var)]
    assert not missing, f"README.md does not mention {missing}"


# -- CLI -----------------------------------------------------------------------------------------
def cli_sections() -> dict[str, str]:
    """Text of each ``### `atalaia ...` `` section of docs/cli.md, by command path."""
    text = CLI.read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} `atalaia ([a-z -]+)`\s*$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_cli_commands_are_found() -> None:
    commands = cli_commands()
    assert {"serve", "worker", "monitor", "kafka start", "kafka stop", "kafka status", "db upgrade"} <= set(commands)


@pytest.mark.parametrize("path", sorted(cli_commands()))
def test_every_cli_command_has_a_section_in_cli_md(path: str) -> None:
    sections = cli_sections()
    assert path in sections, f"docs/cli.md has no section `atalaia {path}`"
    assert f"`atalaia {path}`" in CLI.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted(cli_commands()))
def test_cli_md_names_every_option_and_argument(path: str) -> None:
    section = cli_sections()[path]
    for param in cli_commands()[path].params:
        opts = [o for o in [*param.opts, *getattr(param, "secondary_opts", [])] if o.startswith("--")]
        if opts:
            for opt in opts:
                assert f"`{opt}" in section, f"`atalaia {path}`: option {opt} is not documented"
        else:  # a positional argument
            assert f"`{param.name.upper()}`" in section, f"`atalaia {path}`: argument {param.name} is not documented"


def test_cli_md_has_no_section_for_a_command_that_does_not_exist() -> None:
    assert set(cli_sections()) <= set(cli_commands())


# -- architecture --------------------------------------------------------------------------------
def test_architecture_names_every_topic_with_its_partitions() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    defaults = {name: Settings.model_fields[name].default for name in ("topic_namespace", "topic_partitions")}
    for spec in topic_specs(load_settings(**defaults)):
        row = table_row(text, spec.name)
        assert str(spec.partitions) in row.split("|")[2], row


def test_architecture_names_every_event_type_and_links_its_schema() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for kind in EVENT_TYPES:
        assert f"`{kind}`" in text, kind
    for schema in sorted((DOCS / "events").glob("*.schema.json")):
        assert f"(events/{schema.name})" in text, schema.name


def test_architecture_names_every_http_route() -> None:
    # The inference service's routes live in its routers (inference/routes/), under their prefix.
    routes = []
    for module in sorted((ROOT / "inference" / "routes").glob("*.py")):
        source = module.read_text(encoding="utf-8")
        prefix = re.search(r'APIRouter\(prefix="([^"]+)"', source)
        for method, path in re.findall(r'@router\.(get|post|put|patch|delete)\("([^"]+)"', source):
            routes.append((method, (prefix.group(1) if prefix else "") + path))
    assert len(routes) >= 8
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for method, path in routes:
        assert f"`{method.upper()} {path}`" in text, f"{method.upper()} {path}"


def test_architecture_names_every_monitor_route(tmp_path: Path) -> None:
    """Every route of the monitor's app (dashboard and the alert API it includes), from its OpenAPI."""
    from sqlalchemy import create_engine

    from monitors.web import create_app

    app = create_app(load_settings(home=tmp_path), create_engine("sqlite://"))
    routes = [(method, path) for path, ops in app.openapi()["paths"].items() for method in ops]
    assert ("get", "/api/dashboard/series") in routes
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for method, path in routes:
        assert f"`{method.upper()} {path}`" in text, f"{method.upper()} {path}"


def test_architecture_names_every_table() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for table in metadata.tables:
        table_row(text, table)


def test_architecture_names_every_cli_command() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for path in cli_commands():
        assert f"`atalaia {path}`" in text, path


@pytest.mark.parametrize("doc", ["architecture.md", "configuration.md", "cli.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = DOCS / doc
    text = path.read_text(encoding="utf-8")
    anchors = {doc.name: _anchors(doc) for doc in DOCS.glob("*.md")}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # external URL
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.exists(), f"{doc}: broken link {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors[resolved.name], f"{doc}: no heading for #{anchor} in {resolved.name}"


def _anchors(path: Path) -> set[str]:
    """GitHub-style anchors of a markdown file's headings."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out
