"""The light client against the real service: submit --follow, status, a second --follow of
the ended job, and ``jobs`` from the service's JobStateV1 records on the state topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_trainer_client.cli import app
from typer.testing import CliRunner

from .harness import ServiceProcess, Stack

pytestmark = pytest.mark.kafka


def test_client_follows_a_real_job_then_reads_its_status_and_the_job_list(
    stack: Stack, tmp_path: Path
) -> None:
    service = ServiceProcess(stack).start()
    try:
        job = tmp_path / "job.json"
        job.write_text(json.dumps(stack.job("client-e2e", steps=6)))
        env = {**service.env, "COLUMNS": "200"}
        followed = subprocess.run(
            [sys.executable, "-m", "model_trainer_client", "submit", str(job), "--follow"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert followed.returncode == 0, followed.stderr + service.tail()
        assert "completed" in followed.stderr
        assert "step 6/6" in followed.stderr
        artifact = stack.artifacts_root / "client-e2e"
        assert f"artifact: {artifact}" in followed.stderr

        runner = CliRunner()
        client_env = {k: v for k, v in env.items() if k.startswith("MODEL_TRAINER_")}
        status = runner.invoke(app, ["status", "client-e2e"], env=client_env)
        assert status.exit_code == 0, status.output
        assert "completed" in status.stdout
        assert str(artifact) in status.stdout
        again = runner.invoke(app, ["submit", str(job), "--follow"], env=client_env)
        assert again.exit_code == 0, again.output
        assert "had already ended; not submitted again" in again.stderr

        # Needs the service to write JobStateV1 records to the state topic.
        listed = runner.invoke(app, ["jobs", "--label", "suite=integration"], env=client_env)
        assert listed.exit_code == 0, listed.output
        assert "client-e2e" in listed.stdout, listed.stdout
        assert "completed" in listed.stdout
    finally:
        service.stop()
    assert os.path.isdir(artifact)
