"""``model-trainer``: serve, run a job locally, sample, write schemas — and the light client's
commands (submit, cancel, status, jobs, watch, dashboard, export), so one entry point does all.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from model_trainer_client.cli import load_job, register
from rich.console import Console

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


@app.command()
def serve() -> None:
    """Run the service until SIGTERM or Ctrl-C (settings from MODEL_TRAINER_* variables)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    from .runner import serve as run_service

    raise typer.Exit(asyncio.run(run_service(settings)))


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
    job = load_job(job_file)
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


register(app)


def main() -> None:
    app()
