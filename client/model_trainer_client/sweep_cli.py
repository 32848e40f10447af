"""``sweep``: the command line of :mod:`.sweep_run`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .board import EXIT_BAD_INPUT
from .cli_common import (
    _run,
    _settings,
    console,
    out,
)
from .cli_connection import connection_options
from .settings import ConnectionOverrides


@connection_options
def sweep(
    connection: ConnectionOverrides,
    sweep_file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="The sweep: base job, space, budget (YAML)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Run a hyperparameter sweep: trials are jobs labelled sweep=NAME; prints the best.

    Resumes: its state is its commands and its trials' events in Kafka, so run it again after
    a kill or Ctrl-C and it goes on (finished trials are not run again). Exit code: 0 with a
    best trial, 1 when none completed, 2 bad input.
    """
    if importlib.util.find_spec("optuna") is None:
        console.print("[red]sweep needs optuna[/red]: install model-trainer-client\\[sweep]")
        raise typer.Exit(EXIT_BAD_INPUT)
    from .sweep_run import run_sweep
    from .sweep_spec import SweepSpecError, load_sweep

    try:
        spec = load_sweep(sweep_file)
    except SweepSpecError as exc:
        for line in exc.lines:
            console.print(f"[red]{escape(line)}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    settings = _settings(connection)
    _run(
        settings,
        lambda: run_sweep(settings, spec, console=console, out=out, as_json=as_json),
    )


def register_sweep(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
