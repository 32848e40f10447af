"""The ``logs`` command (see :mod:`.joblogs`)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from model_trainer_contracts.commands import JOB_ID_PATTERN

from .board import EXIT_BAD_INPUT
from .cli_common import (
    _run,
    _settings,
    console,
    out,
)
from .cli_connection import connection_options
from .settings import ConnectionOverrides

_job_id = re.compile(JOB_ID_PATTERN)


@connection_options
def logs(
    connection: ConnectionOverrides,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Go on until the job ends; exit with its result."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --follow: seconds to wait for the job's end.")
    ] = 3600.0,
) -> None:
    """A job's log lines (its worker's and its training's, tracebacks included), on stdout.

    Exit code: 0; 2 when the logs topic has no line of the job. With --follow, the job's.
    """
    from .joblogs import logs as show_logs

    if not _job_id.fullmatch(job_id):
        console.print(f"[red]not a job id: {job_id!r}[/red] (expected {JOB_ID_PATTERN})")
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = _settings(connection)
    _run(
        settings,
        lambda: show_logs(
            settings, job_id, follow=follow, console=console, out=out, timeout_s=timeout
        ),
    )
