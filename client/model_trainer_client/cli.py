"""``model-trainer-client``: submit, cancel, status, logs, jobs, watch, dashboard, export, sweep.

Exit codes: 0 completed (or done), 1 failed (or refused), 2 bad input, 3 timed out (or no
broker), 4 cancelled, 5 rejected, 130 interrupted (Ctrl-C).
The service's ``model-trainer`` carries the same commands (:func:`register`).
"""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from model_trainer_contracts import CancelJobV1, ModelTrainerError, SubmitJobV1, decode_command
from model_trainer_contracts.commands import JOB_ID_PATTERN
from rich.markup import escape

from . import flows, hints
from .board import EXIT_BAD_INPUT, EXIT_FAILED, ViewStatus
from .cli_common import (
    _run,
    _say,
    _settings,
    console,
    out,
)
from .cli_connection import connection_options
from .durations import parse_duration
from .hints import new_job_id
from .settings import ConnectionOverrides

JobFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A submit command (JSON).")
]
JobIdArg = Annotated[str, typer.Argument(help="The job's id.")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the job before giving up.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
SUBMIT_TYPE = str(SubmitJobV1.model_fields["type"].default)
_job_id = re.compile(JOB_ID_PATTERN)


COMMAND_TYPES = ", ".join(
    str(model.model_fields["type"].default) for model in (SubmitJobV1, CancelJobV1)
)
_wrong_tag = re.compile(r"Input tag '(.*)' found using '(\w+)' does not match")


def violation_text(violation: object) -> str:
    """One validation error as ``field: what was expected``, pydantic's wording of the
    command's ``type`` (its discriminator) turned into what a user can act on."""
    if not isinstance(violation, dict):
        return str(violation)
    field, error = str(violation.get("field", "")), str(violation.get("error", ""))
    if "Unable to extract tag using discriminator" in error:
        error = f"missing; expected one of {COMMAND_TYPES}"
    elif (wrong := _wrong_tag.search(error)) is not None:
        error = f"{wrong.group(1)!r} is not a command type; expected one of {COMMAND_TYPES}"
    return f"{field}: {error}" if field else error


def _stem_id(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-")
    return stem or "job"


def _with_job_id(data: bytes, path: Path, job_id: str | None) -> bytes:
    """The command with ``job_id`` put in, before it is validated; a submit command without
    a job id gets a fresh one (said on stderr). Bytes that are not a JSON object stay as they
    are, for the decoder to say where they go wrong."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return data
    if not isinstance(parsed, dict):
        return data
    if job_id is None and parsed.get("job_id") is None and parsed.get("type") == SUBMIT_TYPE:
        job_id = new_job_id(_stem_id(path))
        console.print(f"no job_id in {escape(str(path))}: using {job_id}", soft_wrap=True)
    if job_id is None:
        return data
    return json.dumps({**parsed, "job_id": job_id}).encode()


def load_job(path: Path, job_id: str | None = None) -> SubmitJobV1:
    """The submit command in ``path`` (its ``job_id`` replaced by ``job_id``, or generated
    when it has none); a bad one is reported, each problem once, and exits 2."""
    try:
        command = decode_command(_with_job_id(path.read_bytes(), path, job_id))
    except ModelTrainerError as exc:
        violations = exc.details.get("violations")
        problems = violations if isinstance(violations, list) else []
        if problems:
            console.print(f"[red]{escape(str(path))}: {exc.code}[/red]", soft_wrap=True)
            for violation in problems:
                text = escape(violation_text(violation))
                console.print(f"  - {text}", soft_wrap=True, highlight=False)
        else:
            console.print(
                f"[red]{escape(str(path))}: {exc.code}[/red] {escape(exc.message)}",
                soft_wrap=True,
                highlight=False,
            )
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


@connection_options
def submit(
    connection: ConnectionOverrides,
    job_file: JobFile,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show its history and progress until it ends.")
    ] = False,
    timeout: Timeout = 3600.0,
    job_id: Annotated[
        str | None,
        typer.Option(help="The job's id, over the file's (default: the file's, else a new one)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Publish a training job, its id on stdout; --follow: follow it, exit with its result."""
    job = load_job(job_file, None if job_id is None else _check_job_id(job_id))
    settings = _settings(connection)
    _run(
        settings,
        lambda: flows.submit(
            settings,
            job,
            follow=follow,
            timeout_s=timeout,
            console=console,
            out=out,
            as_json=as_json,
        ),
    )


@connection_options
def cancel(
    connection: ConnectionOverrides,
    job_id: JobIdArg,
    reason: Annotated[str, typer.Option(help="Recorded in the failed event.")] = "",
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the job has stopped.")
    ] = True,
    timeout: Timeout = 600.0,
) -> None:
    """Stop a queued or running job (it ends with TRAINING_CANCELLED); waits until it has."""
    _check_job_id(job_id)
    settings = _settings(connection)
    _run(
        settings,
        lambda: flows.cancel(
            settings, job_id, reason=reason, wait=wait, timeout_s=timeout, console=console
        ),
    )


@connection_options
def status(
    connection: ConnectionOverrides,
    job_id: JobIdArg,
    as_json: JsonOption = False,
) -> None:
    """A job's state, progress, losses, and its artifact or error, read from Kafka.

    Exit code: 0 queued, running or completed; 1 failed; 4 cancelled; 5 rejected; 2 unknown.
    """
    _check_job_id(job_id)
    settings = _settings(connection)
    _run(
        settings,
        lambda: flows.status(settings, job_id, console=console, out=out, as_json=as_json),
    )


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            console.print(f"[red]--label takes key=value, not {pair!r}[/red]")
            raise typer.Exit(EXIT_BAD_INPUT)
        labels[key] = value
    return labels


@connection_options
def jobs(
    connection: ConnectionOverrides,
    status: Annotated[
        ViewStatus | None, typer.Option("--status", "-s", help="Only jobs in this state.")
    ] = None,
    user: Annotated[int | None, typer.Option("--user", "-u", help="Only this user's.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="key=value; repeat to AND.")
    ] = None,
    as_json: JsonOption = False,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Only the newest N jobs.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only jobs submitted within this long: 90s, 30m, 2h, 1d, 1h30m."),
    ] = None,
) -> None:
    """Every job of the compacted state topic, newest first, as a table (or JSON), with
    its progress, loss and duration from the events topic."""
    labels = _labels(label or [])
    try:
        within = None if since is None else parse_duration(since)
    except ValueError as exc:
        _say("--since", exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    settings = _settings(connection)
    _run(
        settings,
        lambda: flows.jobs(
            settings,
            status=status,
            user_id=user,
            labels=labels,
            out=out,
            as_json=as_json,
            limit=limit,
            since=within,
        ),
    )


@connection_options
def watch(
    connection: ConnectionOverrides,
    job_id: Annotated[
        str | None, typer.Argument(help="Only this job, until it ends (default: all).")
    ] = None,
) -> None:
    """A live terminal dashboard: every active job's state, progress, loss, tok/s and ETA."""
    settings = _settings(connection)
    if job_id is None:
        _run(settings, lambda: flows.watch_all(settings, console=out), interrupted=0)
    one = _check_job_id(job_id)
    _run(settings, lambda: flows.watch_job(settings, one, console=out), interrupted=0)


@connection_options
def dashboard(
    connection: ConnectionOverrides,
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port (0: any free).")] = 8765,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """A web dashboard of every job in the events topic's retention, live (server-sent events)."""
    from .dashboard import serve

    settings = _settings(connection)
    try:
        with socket.create_server((host, port)):
            pass  # free now; a race with another program still ends in aiohttp's error
    except OSError as exc:
        _say(f"cannot serve the dashboard at {host}:{port}", exc.strerror or exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    _run(settings, lambda: serve(settings, host, port, console), interrupted=0)


export_app = typer.Typer(help="Write the events topic into other tools' formats.")


@export_app.command("tensorboard")
@connection_options
def export_tensorboard(
    connection: ConnectionOverrides,
    logdir: Annotated[Path, typer.Option(file_okay=False, help="One run per job goes here.")],
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep exporting new events until interrupted.")
    ] = False,
) -> None:
    """One TensorBoard run per job: losses, perplexities, lr, grad norm, tok/s, the config."""
    from .tb_export import export, writer_available

    if not writer_available():
        console.print(
            "[red]export tensorboard needs tensorboardX[/red]: "
            "install model-trainer-client\\[tensorboard]"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = _settings(connection)
    _run(settings, lambda: export(settings, logdir, follow=follow, console=console), interrupted=0)


DEBUG = [False]  # --debug, as given to this process


def _version_of(dist: str) -> Callable[[bool], None]:
    def show(value: bool) -> None:
        if value:
            out.print(f"{dist} {version(dist)}", highlight=False)
            raise typer.Exit()

    return show


def register(app: typer.Typer, dist: str = "model-trainer-client") -> None:
    """Add the client's commands to ``app`` (the service's CLI carries them too), and the
    options of every command: ``--version`` (of ``dist``) and ``--debug``."""
    show_version = _version_of(dist)

    # Defaults, not Annotated: the callback is this app's own, and typer resolves annotations
    # in the module's namespace, where it is not.
    def options(
        version: bool = typer.Option(
            False,
            "--version",
            callback=show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
        debug: bool = typer.Option(
            False, "--debug", help="Show the traceback of an unexpected error."
        ),
    ) -> None:
        """Options of every command."""
        DEBUG[0] = debug

    app.callback()(options)
    from .logs_cli import logs

    for command in (submit, cancel, status, logs, jobs, watch, dashboard):
        app.command()(command)
    app.add_typer(export_app, name="export")
    from .mlflow_cli import register_mlflow

    register_mlflow(export_app)
    from .sweep_cli import register_sweep

    register_sweep(app)


def run_app(app: typer.Typer, prog: str) -> None:
    """Run ``app``: an unexpected error is one line on stderr (its traceback with --debug)."""
    hints.PROG[0] = prog
    try:
        app(prog_name=prog, standalone_mode=True)
    except Exception as exc:
        if DEBUG[0] or "--debug" in sys.argv:
            raise
        _say(f"{prog}: {type(exc).__name__}", exc)
        console.print("(run it again with --debug for the traceback)", style="dim")
        raise SystemExit(EXIT_FAILED) from None


app = typer.Typer(
    help="Client of model-trainer: submit, follow and inspect training jobs over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
register(app)


def main() -> None:
    run_app(app, "model-trainer-client")
