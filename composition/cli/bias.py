"""``atalaia bias``: the counterfactual bias evaluation of a model version (retrain/bias.py)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer


def bias(
    questions: Annotated[
        Optional[int],  # noqa: UP045 - typer needs Optional
        typer.Option(help="Questions asked (x 13 demographic variants). Default: ATALAIA_BIAS_QUESTIONS."),
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="Store the gaps as metrics and send them to the metrics topic.")
    ] = False,
) -> None:
    """Ask the serving version the regulation questions as different people (name, gender, nationality,
    age, religion) and print the gaps between their answers (similarity, refusal, toxicity, ROUGE-L).
    The scheduler runs it with --publish on ATALAIA_BIAS_CRON; the bias_gap_high rule alerts on it."""
    from atalaia.storage.db import get_engine, upgrade
    from composition.cli.main import _settings
    from retrain import registry
    from retrain.bias import bias_metric_events, evaluate_bias, publish_bias_metrics

    settings = _settings()
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    served = registry.served_version(engine, settings)
    result = evaluate_bias(served.path, settings, limit=questions)
    if publish:
        publish_bias_metrics(settings, engine, bias_metric_events(result, served.version))
    typer.echo(json.dumps({"model_version": served.version, **result}))
