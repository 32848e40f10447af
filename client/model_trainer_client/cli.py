"""``model-trainer-client``: submit, cancel, status, jobs, watch, dashboard, export.

Exit codes: 0 completed (or done), 1 failed, 2 bad input, 3 timed out (or no broker).
The service's ``model-trainer`` carries the same commands (:func:`register`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from aiokafka.errors import KafkaConnectionError
from model_trainer_contracts import JobStatus, ModelTrainerError, SubmitJobV1, decode_command
from model_trainer_contracts.commands import JOB_ID_PATTERN
from rich.console import Console

from . import flows
from .board import EXIT_BAD_INPUT, EXIT_TIMED_OUT
from .settings import ClientSettings

console = Console(stderr=True)
out = Console()

JobFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A submit command (JSON).")
]
JobIdArg = Annotated[str, typer.Argument(help="The job's id.")]
Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        help="Default: MODEL_TRAINER_BOOTSTRAP_SERVERS, KAFKA_BOOTSTRAP_SERVERS, 127.0.0.1:9092.",
    ),
]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the job before giving up.")]

_job_id = re.compile(JOB_ID_PATTERN)


def load_job(path: Path) -> SubmitJobV1:
    """The submit command in ``path``; a bad one is reported and exits 2."""
    try:
        command = decode_command(path.read_bytes())
    except ModelTrainerError as exc:
        console.print(f"[red]{path}: {exc.code}[/red] {exc.message}")
        violations = exc.details.get("violations")
        for violation in violations if isinstance(violations, list) else []:
            console.print(f"  - {violation}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not isinstance(command, SubmitJobV1):
        console.print(f"[red]{path} holds a {command.type}, not a submit command[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    return command


def _check_job_id(job_id: str) -> str:
    if not _job_id.fullmatch(job_id):
        console.print(f"[red]not a job id: {job_id!r}[/red] (expected {JOB_ID_PATTERN})")
        raise typer.Exit(EXIT_BAD_INPUT)
    return job_id


def _run(
    settings: ClientSettings,
    main: Callable[[], Coroutine[object, object, int]],
    *,
    interrupted: int = 130,
) -> NoReturn:
    """Run a flow and exit with its code; no broker is exit 3, Ctrl-C ``interrupted``."""
    try:
        code = asyncio.run(main())
    except KafkaConnectionError as exc:
        console.print(f"[red]no Kafka broker answered at {settings.bootstrap_servers}[/red]: {exc}")
        code = EXIT_TIMED_OUT
    except KeyboardInterrupt:
        code = interrupted
    raise typer.Exit(code)


def submit(
    job_file: JobFile,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show its history and progress until it ends.")
    ] = False,
    bootstrap_servers: Bootstrap = None,
    timeout: Timeout = 3600.0,
    job_id: Annotated[str | None, typer.Option(help="Override the file's job_id.")] = None,
) -> None:
    """Publish a training job; with --follow, follow it and exit with its result."""
    job = load_job(job_file)
    if job_id is not None:
        job = SubmitJobV1.model_validate({**job.model_dump(), "job_id": _check_job_id(job_id)})
    settings = ClientSettings.from_env(bootstrap_servers)
    _run(
        settings,
        lambda: flows.submit(settings, job, follow=follow, timeout_s=timeout, console=console),
    )


def cancel(
    job_id: JobIdArg,
    reason: Annotated[str, typer.Option(help="Recorded in the failed event.")] = "",
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the job has stopped.")
    ] = True,
    bootstrap_servers: Bootstrap = None,
    timeout: Timeout = 600.0,
) -> None:
    """Stop a queued or running job (it ends with TRAINING_CANCELLED); waits until it has."""
    _check_job_id(job_id)
    settings = ClientSettings.from_env(bootstrap_servers)
    _run(
        settings,
        lambda: flows.cancel(
            settings, job_id, reason=reason, wait=wait, timeout_s=timeout, console=console
        ),
    )


def status(job_id: JobIdArg, bootstrap_servers: Bootstrap = None) -> None:
    """A job's state, progress, losses, and its artifact or error, read from Kafka."""
    _check_job_id(job_id)
    settings = ClientSettings.from_env(bootstrap_servers)
    _run(settings, lambda: flows.status(settings, job_id, console=console, out=out))


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            console.print(f"[red]--label takes key=value, not {pair!r}[/red]")
            raise typer.Exit(EXIT_BAD_INPUT)
        labels[key] = value
    return labels


def jobs(
    status: Annotated[
        JobStatus | None, typer.Option("--status", "-s", help="Only jobs in this state.")
    ] = None,
    user: Annotated[int | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="key=value; repeat to AND.")
    ] = None,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Every job of the compacted state topic, newest first, as a table."""
    labels = _labels(label or [])
    settings = ClientSettings.from_env(bootstrap_servers)
    _run(
        settings,
        lambda: flows.jobs(settings, status=status, user_id=user, labels=labels, out=out),
    )


def watch(
    job_id: Annotated[
        str | None, typer.Argument(help="Only this job, until it ends (default: all).")
    ] = None,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """A live terminal dashboard: every active job's state, progress, loss, tok/s and ETA."""
    settings = ClientSettings.from_env(bootstrap_servers)
    if job_id is None:
        _run(settings, lambda: flows.watch_all(settings, console=out), interrupted=0)
    one = _check_job_id(job_id)
    _run(settings, lambda: flows.watch_job(settings, one, console=out), interrupted=0)


def dashboard(
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port (0: any free).")] = 8765,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    bootstrap_servers: Bootstrap = None,
) -> None:
    """A web dashboard of every job in the events topic's retention, live (server-sent events)."""
    from .dashboard import serve

    settings = ClientSettings.from_env(bootstrap_servers)
    _run(settings, lambda: serve(settings, host, port, console), interrupted=0)


export_app = typer.Typer(help="Write the events topic into other tools' formats.")


@export_app.command("tensorboard")
def export_tensorboard(
    logdir: Annotated[Path, typer.Option(file_okay=False, help="One run per job goes here.")],
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep exporting new events until interrupted.")
    ] = False,
    bootstrap_servers: Bootstrap = None,
) -> None:
    """One TensorBoard run per job: losses, perplexities, lr, grad norm, tok/s, the config."""
    from .tb_export import export, writer_available

    if not writer_available():
        console.print(
            "[red]export tensorboard needs tensorboardX[/red]: "
            "install model-trainer-client\\[tensorboard]"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = ClientSettings.from_env(bootstrap_servers)
    _run(settings, lambda: export(settings, logdir, follow=follow, console=console), interrupted=0)


def register(app: typer.Typer) -> None:
    """Add the client's commands to ``app`` (the service's CLI carries them too)."""
    for command in (submit, cancel, status, jobs, watch, dashboard):
        app.command()(command)
    app.add_typer(export_app, name="export")


app = typer.Typer(
    help="Client of model-trainer: submit, follow and inspect training jobs over Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
register(app)


def main() -> None:
    app()
