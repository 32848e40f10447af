"""``model-trainer``: serve, run a job locally, sample, write schemas — and the light client's
commands (submit, cancel, status, jobs, watch, dashboard, export), so one entry point does all.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated

import structlog
import typer
from model_trainer_client.cli import load_job, register, run_app
from model_trainer_client.kafka import KafkaAccessError
from model_trainer_client.settings import KafkaConfigError
from model_trainer_contracts import ModelTrainerError
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from model_trainer.logs import configure_logging
from model_trainer.settings import ENV_PREFIX, Settings
from model_trainer.shell.kafka import BrokerUnreachableError

app = typer.Typer(
    help="Kafka-native service that trains language models on request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

JobFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A submit command (JSON).")
]


EXIT_BAD_SETTINGS = 2
EXIT_NO_KAFKA = 3


def _settings() -> Settings:
    """The settings from the environment; invalid ones are reported (never their values:
    the Kafka password is one) and exit 2."""
    try:
        return Settings()
    except ValidationError as exc:
        console.print("[red]model-trainer: invalid settings[/red]", highlight=False)
        for error in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in error["loc"])
            where = f"{ENV_PREFIX}{name.upper()}: " if name else ""
            why = str(error["msg"]).removeprefix("Value error, ")
            console.print(f"  {where}{why}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


def _startup_failure(exc: BaseException) -> Exception | None:
    """The Kafka failure that stopped the service starting, if that is what ``exc`` is (or,
    from the task group, holds)."""
    if isinstance(exc, KafkaAccessError | KafkaConfigError | BrokerUnreachableError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_failure(inner)
            if found is not None:
                return found
    return None


@app.command()
def serve() -> None:
    """Run the service until SIGTERM or Ctrl-C (settings from MODEL_TRAINER_* variables).

    Exits 2 on invalid settings, 3 when Kafka refuses the connection (credentials, TLS) or
    no broker answers within 60 s; the log's last line says why.
    """
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    from model_trainer.commands.serve import serve as run_service

    try:
        code = asyncio.run(run_service(settings))
    except BaseException as exc:
        failure = _startup_failure(exc)
        if failure is None:
            raise
        structlog.get_logger(__name__).error(
            "cannot connect to Kafka; exiting",
            reason=str(failure),
            error=type(failure).__name__,
            kafka=settings.connection.describe(),
        )
        code = EXIT_BAD_SETTINGS if isinstance(failure, KafkaConfigError) else EXIT_NO_KAFKA
        raise typer.Exit(code) from None
    raise typer.Exit(code)


@app.command()
def run(
    job_file: JobFile,
    data_root: Annotated[Path, typer.Option(help="Corpus paths are relative to this.")] = Path("."),
    artifacts_root: Annotated[Path, typer.Option(help="Where the job's folder goes.")] = Path(
        "artifacts"
    ),
    artifacts_url: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix: checkpoints and artifact go there too.")
    ] = None,
    ranks_from_env: Annotated[
        bool,
        typer.Option(
            "--ranks-from-env",
            help="Be one rank of the job, as torchrun starts it (RANK, WORLD_SIZE, MASTER_ADDR, "
            "MASTER_PORT); rank 0 prints the events.",
        ),
    ] = False,
) -> None:
    """Run one job in this process, without Kafka; print its events as JSON lines."""
    settings = Settings()
    configure_logging(settings.log_level, "console")
    job = load_job(job_file)
    from model_trainer.commands.run import run_local, run_rank

    if ranks_from_env:
        code = run_rank(job, data_root.resolve(), artifacts_root.resolve(), artifacts_url)
    else:
        code = run_local(
            job,
            data_root.resolve(),
            artifacts_root.resolve(),
            sys.stdout,
            now=time.time(),
            artifacts_url=artifacts_url,
        )
    raise typer.Exit(code)


@app.command()
def trainjob(
    job_file: JobFile,
    image: Annotated[str, typer.Option(help="The service's image, as the cluster pulls it.")],
    namespace: Annotated[str | None, typer.Option(help="metadata.namespace.")] = None,
    runtime: Annotated[str, typer.Option(help="The ClusterTrainingRuntime.")] = "torch-distributed",
    cpu: Annotated[str | None, typer.Option(help="CPU per node (default: processes).")] = None,
    memory: Annotated[
        str | None, typer.Option(help="Memory per node (default: 4Gi a process).")
    ] = None,
    s3_secret: Annotated[
        str | None, typer.Option(help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.")
    ] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="AWS_ENDPOINT_URL of the store.")] = None,
    artifacts_url: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix for checkpoints and the artifact.")
    ] = None,
) -> None:
    """Print the Kubeflow Trainer TrainJob (YAML) that runs a job of resources.nodes nodes."""
    from model_trainer.commands.trainjob import trainjob_yaml
    from model_trainer.core.trainjob import TrainJobOptions

    options = TrainJobOptions(
        image=image,
        runtime=runtime,
        namespace=namespace,
        cpu=cpu,
        memory=memory,
        s3_secret=s3_secret,
        s3_endpoint=s3_endpoint,
        artifacts_url=artifacts_url,
    )
    try:
        text = trainjob_yaml(load_job(job_file), options)
    except ModelTrainerError as exc:
        console.print(f"[red]{exc.code}[/red]: {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1) from None
    sys.stdout.write(text)  # as is: rich would wrap the job's long JSON line


@app.command()
def sample(
    artifact: Annotated[str, typer.Argument(help="An artifact folder, or its s3:// URL.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "\n",
    max_new_tokens: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
    temperature: Annotated[float, typer.Option(min=0.01, max=10.0)] = 0.8,
    seed: int = 1337,
) -> None:
    """Generate text from a trained model's artifact (a folder, or an s3:// URL: downloaded
    into a temporary folder first, credentials from the standard AWS variables)."""
    import tempfile

    from model_trainer_contracts import ModelTrainerErrorCode

    from model_trainer.core.storage import download_tree, is_url
    from model_trainer.engine import sample as generate

    with tempfile.TemporaryDirectory(prefix="model-trainer-sample-") as tmp:
        try:
            if is_url(artifact):
                folder = download_tree(
                    artifact, Path(tmp), missing=ModelTrainerErrorCode.MODEL_NOT_FOUND
                )
            else:
                folder = Path(artifact)
                if not folder.is_dir():
                    raise typer.BadParameter(f"no folder {artifact}", param_hint="ARTIFACT")
            text = generate(folder, prompt, max_new_tokens, temperature, seed)
        except ModelTrainerError as exc:
            console.print(f"[red]{exc.code}[/red]: {escape(exc.message)}", soft_wrap=True)
            raise typer.Exit(EXIT_BAD_SETTINGS) from None
    out.print(text, markup=False)


@app.command()
def schema(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path("docs"),
) -> None:
    """Write JSON Schemas, the AsyncAPI document and the message catalogue.

    Refuses (exit 1, naming each field and rule) to replace a released schema in
    ``OUT/schemas`` with one that is not BACKWARD-compatible with it.
    """
    from model_trainer.commands.schema import IncompatibleContractError, write_schema_docs

    try:
        written = write_schema_docs(out_dir)
    except IncompatibleContractError as refused:
        console.print(str(refused), markup=False)
        raise typer.Exit(1) from refused
    for path in written:
        console.print(f"wrote {path}")


register(app, "model-trainer")


def main() -> None:
    run_app(app, "model-trainer")
