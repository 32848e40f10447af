"""The Kafka connection options, declared once (:mod:`model_trainer_client.cli_connection`):
every command takes them, after its name as always, and hands them to its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from model_trainer_client.cli import app
from model_trainer_client.cli_connection import connection_options
from model_trainer_client.settings import ConnectionOverrides
from model_trainer_contracts.examples import SUBMIT
from typer.testing import CliRunner

from .test_client_sweep_plan import GRID

OPTIONS = [
    "--bootstrap-servers",
    "--security-protocol",
    "--sasl-mechanism",
    "--sasl-username",
    "--ssl-cafile",
    "--ssl-certfile",
    "--ssl-keyfile",
    "--ssl-check-hostname",
]


def _recorder() -> tuple[typer.Typer, list[tuple[str, bool, ConnectionOverrides]]]:
    seen: list[tuple[str, bool, ConnectionOverrides]] = []
    recorder = typer.Typer()

    @recorder.command()
    @connection_options
    def show(
        connection: ConnectionOverrides,
        name: str,
        loud: bool = typer.Option(False, "--loud"),
    ) -> None:
        seen.append((name, loud, connection))

    @recorder.command()
    def other() -> None:  # a second command, so that typer keeps command names
        pass

    return recorder, seen


def test_the_options_reach_the_command_as_one_overrides_wherever_they_stand(
    tmp_path: Path,
) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    recorder, seen = _recorder()
    given = [
        ["show", "-b", "h:1", "--security-protocol", "SSL", "--sasl-mechanism", "PLAIN"],
        ["--sasl-username", "u", "--ssl-cafile", str(ca), "--ssl-certfile", str(cert)],
        ["--ssl-keyfile", str(key), "--no-ssl-check-hostname", "one", "--loud"],
    ]
    result = CliRunner().invoke(recorder, [word for part in given for word in part])
    assert result.exit_code == 0, result.output
    plain = CliRunner().invoke(recorder, ["show", "two"])
    assert plain.exit_code == 0, plain.output
    assert seen == [
        ("one", True, ConnectionOverrides("h:1", "SSL", "PLAIN", "u", ca, cert, key, False)),
        ("two", False, ConnectionOverrides()),
    ]


def test_called_directly_the_command_gets_empty_overrides() -> None:
    got: list[ConnectionOverrides] = []

    @connection_options
    def command(connection: ConnectionOverrides, word: str) -> str:
        got.append(connection)
        return word.upper()

    assert command("hi") == "HI"
    assert got == [ConnectionOverrides()]


def _argv(tmp_path: Path) -> dict[str, list[str]]:
    """Each client command, with what it needs before it reads its settings."""
    job = tmp_path / "job.json"
    job.write_text(SUBMIT.model_dump_json())
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(GRID, sort_keys=False))
    return {
        "submit": ["submit", str(job)],
        "cancel": ["cancel", "job-1"],
        "status": ["status", "job-1"],
        "logs": ["logs", "job-1"],
        "jobs": ["jobs"],
        "watch": ["watch"],
        "dashboard": ["dashboard", "--port", "0"],
        "export tensorboard": ["export", "tensorboard", "--logdir", str(tmp_path / "tb")],
        "export mlflow": ["export", "mlflow", "--tracking-uri", "http://127.0.0.1:1"],
        "sweep": ["sweep", str(sweep)],
    }


COMMANDS = [
    "submit",
    "cancel",
    "status",
    "logs",
    "jobs",
    "watch",
    "dashboard",
    "export tensorboard",
    "export mlflow",
    "sweep",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_lists_the_options_and_passes_them_to_its_settings(
    command: str, tmp_path: Path
) -> None:
    argv = _argv(tmp_path)[command]
    shown = CliRunner().invoke(app, [*argv[: len(command.split())], "--help"])
    assert shown.exit_code == 0, shown.output
    assert [option for option in OPTIONS if option in shown.output] == OPTIONS
    # An unknown protocol is refused by the settings (exit 2) before any broker is asked.
    refused = CliRunner().invoke(app, [*argv, "--security-protocol", "TLS"], env={"COLUMNS": "200"})
    assert refused.exit_code == 2, refused.output
    assert "unknown Kafka security protocol 'TLS'" in refused.output
