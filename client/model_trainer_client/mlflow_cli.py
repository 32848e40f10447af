"""``export mlflow``: the command line of :mod:`.mlflow_export`."""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from .board import EXIT_BAD_INPUT
from .cli_common import (
    _run,
    _settings,
    console,
)
from .cli_connection import connection_options
from .settings import ConnectionOverrides


@connection_options
def export_mlflow(
    connection: ConnectionOverrides,
    tracking_uri: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI",
            help="The MLflow tracking server, e.g. http://mlflow:5000.",
        ),
    ],
    experiment: Annotated[
        str,
        typer.Option(
            envvar="MODEL_TRAINER_MLFLOW_EXPERIMENT",
            help="The experiment of jobs without the experiment label.",
        ),
    ] = "model-trainer",
    experiment_label: Annotated[
        str,
        typer.Option(help="The job label naming its experiment ('' for none)."),
    ] = "experiment",
    register_model: Annotated[
        str | None,
        typer.Option(help="Register each completed job's artifact as a version of this model."),
    ] = None,
    log_artifacts: Annotated[
        bool,
        typer.Option(
            "--log-artifacts",
            help="Upload each completed job's artifact folder when this machine can read it "
            "(implied by --register-model); otherwise its path is a tag.",
        ),
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep exporting new events until interrupted.")
    ] = False,
) -> None:
    """One MLflow run per job: config as params, metrics by step, tags, errors, the model.

    Idempotent: runs are found again by their job id, and what a run holds is not written
    again, so it can be rerun, or killed and rerun, at any time.
    """
    if importlib.util.find_spec("mlflow") is None:
        console.print(
            "[red]export mlflow needs mlflow[/red]: install model-trainer-client\\[mlflow]"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    from .mlflow_export import export

    settings = _settings(connection)
    _run(
        settings,
        lambda: export(
            settings,
            tracking_uri,
            experiment=experiment,
            experiment_label=experiment_label or None,
            register_model=register_model,
            log_artifacts=log_artifacts,
            follow=follow,
            console=console,
        ),
        interrupted=0,
    )


def register_mlflow(export_app: typer.Typer) -> None:
    export_app.command("mlflow")(export_mlflow)
