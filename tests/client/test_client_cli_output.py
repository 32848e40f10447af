"""The CLI as people use it, against the real broker (topics filled as the service fills
them, no service): what goes to stdout and what to stderr, ``--json``, refused and cancelled
jobs in every command, a reused id, a generated id, and a follow that nobody picks up."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from model_trainer_client import flows
from model_trainer_client.cli import app
from model_trainer_client.hints import spec_digest
from model_trainer_client.settings import ClientSettings
from model_trainer_contracts import (
    JobStatus,
    ModelTrainerErrorCode,
    SubmitJobV1,
    decode_command,
)
from model_trainer_contracts.examples import EXAMPLES
from rich.console import Console
from typer.testing import CliRunner, Result

from .stream import Job, Publisher, Topics
from .test_client_kafka import next_command

pytestmark = pytest.mark.kafka

_C = ModelTrainerErrorCode
REFUSED = "no queued or running job nope-job to cancel"


def spec(job_id: str) -> SubmitJobV1:
    return SubmitJobV1.model_validate({**EXAMPLES[0].model_dump(), "job_id": job_id})


async def _publish(topics: Topics) -> None:
    """A completed job, a cancelled one, and a refused cancel of an unknown id."""
    done = Job("out-done")
    cancelled = Job("out-cancelled")
    typo = Job("nope-job", user_id=0, labels={})
    await topics.create(partitions=3)
    refusal = typo.failed(_C.JOB_NOT_FOUND, rejected=True).model_copy(update={"message": REFUSED})
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, done.run(steps=4))
        await pub.send_all(
            topics.events,
            [
                cancelled.queued(),
                cancelled.config(),
                cancelled.progress(2),
                cancelled.failed(_C.TRAINING_CANCELLED),
            ],
        )
        await pub.send(topics.events, refusal)
        await pub.send_all(
            topics.state,
            [
                done.state(JobStatus.COMPLETED, request_digest=spec_digest(spec("out-done"))),
                cancelled.state(JobStatus.FAILED, error_code="TRAINING_CANCELLED"),
                typo.state(
                    JobStatus.REJECTED,
                    request_digest="",
                    error_code="JOB_NOT_FOUND",
                    error_message=REFUSED,
                ),
            ],
        )


def test_stdout_is_data_and_every_status_reads_right(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap)
    asyncio.run(_publish(topics))
    runner = CliRunner()
    env = {**topics.env(), "COLUMNS": "80"}  # as narrow as a pipe gets

    def cli(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    # a refused id: every view shows it rejected with its reason, and does not crash
    status = cli("status", "nope-job")
    assert status.exit_code == 5, status.output
    assert re.search(r"status\s+rejected", status.stdout)
    assert REFUSED in status.stdout
    as_json = json.loads(cli("status", "nope-job", "--json").stdout)
    assert (as_json["status"], as_json["error_code"], as_json["error_message"]) == (
        "rejected",
        "JOB_NOT_FOUND",
        REFUSED,
    )
    watched = cli("watch", "nope-job")
    assert watched.exit_code == 5, watched.output
    assert watched.stdout.startswith("nope-job rejected (JOB_NOT_FOUND")
    assert f"{REFUSED})" in watched.stdout
    cancelled = cli("status", "out-cancelled")
    assert cancelled.exit_code == 4, cancelled.output
    assert re.search(r"status\s+cancelled", cancelled.stdout)

    # jobs: the table in a pipe has whole lines, and --json holds the same facts
    listed = cli("jobs")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(cli("jobs", "--json").stdout)
    assert sorted((row["job_id"], row["status"]) for row in rows) == [
        ("nope-job", "rejected"),
        ("out-cancelled", "cancelled"),
        ("out-done", "completed"),
    ]
    for row in rows:
        line = next(line for line in listed.stdout.splitlines() if row["job_id"] in line)
        assert row["status"] in line
        assert str(row["user_id"]) in line
        if row["error_code"]:
            assert row["error_code"] in line
    assert f"JOB_NOT_FOUND: {REFUSED}" in listed.stdout  # the reason, whole, in a pipe
    only = json.loads(cli("jobs", "--json", "--status", "cancelled").stdout)
    assert [row["job_id"] for row in only] == ["out-cancelled"]
    assert len(json.loads(cli("jobs", "--json", "--limit", "2").stdout)) == 2

    # submit: the job id, alone, on stdout; a missing id is generated
    body = spec("x").model_dump(mode="json")
    del body["job_id"]
    (tmp_path / "nightly.json").write_text(json.dumps(body))
    sent = cli("submit", str(tmp_path / "nightly.json"))
    assert sent.exit_code == 0, sent.output
    job_id = sent.stdout.strip()
    assert re.fullmatch(r"nightly-[0-9a-f]{8}", job_id), sent.stdout
    assert sent.stdout == f"{job_id}\n"
    command = decode_command(asyncio.run(next_command(topics, job_id)))
    assert command.job_id == job_id
    named = cli("submit", str(tmp_path / "nightly.json"), "--job-id", "named-1", "--json")
    assert json.loads(named.stdout) == {"job_id": "named-1", "submitted": True}

    # a reused id with another spec: refused here, with why and a fresh id to use
    (tmp_path / "other.json").write_text(
        json.dumps({**body, "job_id": "out-done", "user_id": body["user_id"] + 1})
    )
    reused = cli("submit", str(tmp_path / "other.json"))
    assert reused.exit_code == 1, reused.output
    assert reused.stdout == ""
    assert "refused" in reused.stderr
    assert "already submitted with a different spec" in reused.stderr
    assert re.search(r"--job-id out-done-[0-9a-f]{8}", reused.stderr)

    # following a job that ended: its history under its header, its result once
    (tmp_path / "done.json").write_text(spec("out-done").model_dump_json())
    again = cli("submit", str(tmp_path / "done.json"), "--follow")
    assert again.exit_code == 0, again.output
    lines = again.stderr.splitlines()
    assert lines[0] == "history of out-done: 5 events"
    assert lines[-2:] == [
        next(line for line in lines if line.startswith("completed in ")),
        "artifact: /artifacts/out-done",
    ]
    assert sum(line.startswith("completed") for line in lines) == 1
    assert again.stdout == "out-done\n"


async def test_a_follow_nobody_picks_up_says_so_then_how_to_go_on(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = Topics(kafka_bootstrap)
    await topics.create(partitions=1)
    monkeypatch.setenv("MODEL_TRAINER_GROUP_ID", f"nobody-{uuid.uuid4().hex[:8]}")
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None)
    code = await flows.submit(
        ClientSettings.from_env(env=topics.env()),
        spec("lonely-1"),
        follow=True,
        timeout_s=6,
        console=console,
        nobody_wait_s=1,
    )
    assert code == 3
    said = buffer.getvalue()
    assert "no trainer has picked lonely-1 up yet" in said
    assert "has no members (is the service running?)" in said
    assert "no end within 6s: lonely-1 goes on (not picked up yet)" in said
    assert "watch lonely-1" in said
    assert "cancel lonely-1" in said


def test_ctrl_c_during_a_follow_exits_130_and_says_how_to_go_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(kafka_bootstrap)
    asyncio.run(topics.create(partitions=1))
    (tmp_path / "job.json").write_text(spec("ctrl-c-1").model_dump_json())
    err = tmp_path / "err"
    follow = subprocess.Popen(
        [sys.executable, "-m", "model_trainer_client", "submit", "job.json", "--follow"],
        cwd=tmp_path,
        env={**os.environ, **topics.env()},
        stdout=subprocess.PIPE,
        stderr=err.open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while "following its events" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        follow.send_signal(signal.SIGINT)
        out, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 130
    assert out == b"ctrl-c-1\n"
    said = err.read_text().splitlines()
    assert said[-4:] == [
        "interrupted: ctrl-c-1 goes on (not picked up yet)",
        "  follow it: model-trainer-client watch ctrl-c-1",
        "  its state: model-trainer-client status ctrl-c-1",
        "  cancel it: model-trainer-client cancel ctrl-c-1",
    ]
    assert not [line for line in said if "Traceback" in line or "aiokafka" in line]
