"""``model-trainer``: serve, submit, follow, cancel, run a job locally, sample, write schemas."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    Event,
    FailedEventV1,
    ModelTrainerError,
    ProgressEventV1,
    SubmitJobV1,
    decode_command,
)
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .client import CommandSender, EventWatcher
from .logs import configure_logging
from .settings import Settings

app = typer.Typer(
    help="Kafka-native service that trains language models on request.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

JobFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A submit command (JSON).")
]
Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap-servers", "-b", help="Default: from settings.")
]


def _load_job(path: Path) -> SubmitJobV1:
    try:
        command = decode_command(path.read_bytes())
    except ModelTrainerError as exc:
        console.print(f"[red]{path}: {exc.code}[/red] {exc.message}")
        violations = exc.details.get("violations")
        for violation in violations if isinstance(violations, list) else []:
            console.print(f"  - {violation}")
        raise typer.Exit(2) from None
    if not isinstance(command, SubmitJobV1):
        console.print(f"[red]{path} holds a {command.type}, not a submit command[/red]")
        raise typer.Exit(2)
    return command


@app.command()
def serve() -> None:
    """Run the service until SIGTERM or Ctrl-C (settings from MODEL_TRAINER_* variables)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    from .runner import serve as run_service

    asyncio.run(run_service(settings))


@app.command()
def submit(
    job_file: JobFile,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show progress until it ends.")
    ] = False,
    bootstrap_servers: Bootstrap = None,
    timeout: Annotated[float, typer.Option(help="Seconds to follow before giving up.")] = 3600.0,
    job_id: Annotated[str | None, typer.Option(help="Override the file's job_id.")] = None,
) -> None:
    """Publish a training job; with --follow, show its progress and exit non-zero if it fails."""
    job = _load_job(job_file)
    if job_id is not None:
        job = SubmitJobV1.model_validate({**job.model_dump(), "job_id": job_id})
    settings = Settings()
    servers = bootstrap_servers or settings.bootstrap_servers
    code = asyncio.run(_submit(job, servers, settings, follow, timeout))
    raise typer.Exit(code)


async def _submit(
    job: SubmitJobV1, servers: str, settings: Settings, follow: bool, follow_s: float
) -> int:
    if not follow:
        async with CommandSender(servers, settings.commands_topic) as sender:
            await sender.send(job)
        console.print(f"submitted [bold]{job.job_id}[/bold] to {settings.commands_topic}")
        return 0
    async with EventWatcher(servers, settings.events_topic) as watcher:
        async with CommandSender(servers, settings.commands_topic) as sender:
            await sender.send(job)
        console.print(f"submitted [bold]{job.job_id}[/bold]; following its events")
        try:
            async with asyncio.timeout(follow_s):
                return await _follow(watcher, job.job_id)
        except TimeoutError:
            console.print(f"[yellow]no terminal event within {follow_s:.0f}s[/yellow]")
            return 3


async def _follow(watcher: EventWatcher, job_id: str) -> int:
    progress = Progress(
        TextColumn("[bold]{task.fields[job]}"),
        BarColumn(),
        TextColumn("step {task.fields[step]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task(
            "train", total=None, job=job_id, step="-", loss="-", val="-", tps="-"
        )
        async for event in watcher.events({job_id}):
            outcome = _show(event, progress, task)
            if outcome is not None:
                return outcome
    return 1


def _show(event: Event, progress: Progress, task: TaskID) -> int | None:
    """Render one event; return the exit code when it ends the job."""
    if isinstance(event, ConfigEventV1):
        progress.update(
            task,
            total=event.total_steps,
            completed=event.start_step,
            step=f"{event.start_step}/{event.total_steps}",
        )
        progress.console.print(
            f"config: {event.model_family} {event.model_size} "
            f"({event.num_parameters:,} params), {event.tokenizer} vocab {event.vocab_size}, "
            f"{event.train_tokens:,} train tokens, {event.total_steps} steps on "
            f"{event.device}/{event.precision}, attempt {event.attempt}"
        )
    elif isinstance(event, ProgressEventV1):
        progress.update(
            task,
            completed=event.step,
            total=event.total_steps,
            step=f"{event.step}/{event.total_steps}",
            loss=f"{event.train_loss:.4f}",
            tps=f"{event.tokens_per_sec:,.0f}",
        )
        if event.val_loss is not None:
            progress.update(task, val=f"{event.val_loss:.4f}")
        if not progress.console.is_terminal:  # no live bar in a log: one line per event
            val = "" if event.val_loss is None else f" val {event.val_loss:.4f}"
            progress.console.print(
                f"step {event.step}/{event.total_steps} loss {event.train_loss:.4f}{val} "
                f"{event.tokens_per_sec:,.0f} tok/s eta {event.eta_s:.0f}s"
            )
    elif isinstance(event, CompletedEventV1):
        progress.update(task, completed=event.steps)
        progress.console.print(
            f"[green]completed[/green] in {event.duration_s:.1f}s, {event.steps} steps, "
            f"best val loss {_fmt(event.best_val_loss)}, test loss {_fmt(event.test_loss)}"
        )
        progress.console.print(f"artifact: {event.artifact_path}")
        return 0
    elif isinstance(event, FailedEventV1):
        progress.console.print(f"[red]failed[/red] {event.code} at {event.stage}: {event.message}")
        return 1
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job to stop.")],
    reason: Annotated[str, typer.Option(help="Recorded in the failed event.")] = "",
    bootstrap_servers: Bootstrap = None,
) -> None:
    """Ask the service to stop a queued or running job (it ends with TRAINING_CANCELLED)."""
    settings = Settings()
    command = CancelJobV1(job_id=job_id, reason=reason)

    async def send() -> None:
        servers = bootstrap_servers or settings.bootstrap_servers
        async with CommandSender(servers, settings.commands_topic) as sender:
            await sender.send(command)

    asyncio.run(send())
    console.print(f"cancel sent for {job_id}")


@app.command()
def run(
    job_file: JobFile,
    data_root: Annotated[Path, typer.Option(help="Corpus paths are relative to this.")] = Path("."),
    artifacts_root: Annotated[Path, typer.Option(help="Where the job's folder goes.")] = Path(
        "artifacts"
    ),
) -> None:
    """Run one job in this process, without Kafka; print its events as JSON lines."""
    settings = Settings()
    configure_logging(settings.log_level, "console")
    job = _load_job(job_file)
    from .local import run_local

    code = run_local(
        job, data_root.resolve(), artifacts_root.resolve(), sys.stdout, now=time.time()
    )
    raise typer.Exit(code)


@app.command()
def sample(
    artifact_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False)],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "\n",
    max_new_tokens: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
    temperature: Annotated[float, typer.Option(min=0.01, max=10.0)] = 0.8,
    seed: int = 1337,
) -> None:
    """Generate text from a trained model's artifact folder."""
    from .engine import sample as generate

    out.print(generate(artifact_dir, prompt, max_new_tokens, temperature, seed), markup=False)


@app.command()
def schema(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path("docs"),
) -> None:
    """Write JSON Schemas, the AsyncAPI document and the message catalogue."""
    from .schema_docs import write_schema_docs

    for path in write_schema_docs(out_dir):
        console.print(f"wrote {path}")


def main() -> None:
    app()
