"""The light client against the real service: submit --follow, status, a second --follow of
the ended job, and ``jobs`` from the service's JobStateV1 records on the state topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher
from model_trainer_client.cli import app
from model_trainer_client.flows import job_view
from model_trainer_client.kafka import Record, topic_partitions
from model_trainer_client.readers import TopicReader
from model_trainer_client.render import render_board
from model_trainer_client.settings import ClientSettings
from model_trainer_contracts import CancelJobV1, encode
from rich.console import Console
from typer.testing import CliRunner

from .flows import long_job, of, send, until_end, wait_for_step

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
        # into a pipe: the job id alone on stdout; one whole line per event, no bar, no repeat
        assert followed.stdout == "client-e2e\n"
        lines = followed.stderr.splitlines()
        assert "━" not in followed.stderr
        assert [n for n in ("completed in ", "artifact: ") if sum(n in x for x in lines) != 1] == []
        config = next(line for line in lines if line.startswith("config: "))
        assert config.endswith("attempt 1")
        assert [line.split()[1] for line in lines if line.startswith("step ")][-1] == "6/6"

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


async def test_status_jobs_and_watch_show_a_queued_a_running_and_an_ended_job(
    stack: Stack, tmp_path: Path
) -> None:
    service = ServiceProcess(stack).start()  # one worker: "waiting" queues behind "long"
    client_env = {k: v for k, v in service.env.items() if k.startswith("MODEL_TRAINER_")}
    settings = ClientSettings.from_env(env=client_env)
    runner = CliRunner()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            # a corpus that is not UTF-8 fails in the worker, after admission
            (stack.data_root / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
            broken = long_job(stack, "broken", steps=4)
            broken = broken.model_copy(
                update={"data": broken.data.model_copy(update={"corpus_path": "latin1.txt"})}
            )
            await send(stack, long_job(stack, "done", steps=4), broken)
            await until_end(watcher, "done", timeout_s=180)
            await until_end(watcher, "broken", timeout_s=60)
            await _logs_of_a_failed_job(runner, client_env)
            await send(stack, long_job(stack, "long", steps=100_000), long_job(stack, "waiting"))
            await wait_for_step(watcher, "long", 2, timeout_s=120)
            # "waiting" is admitted on its own (maybe after "long" has trained a while on a
            # loaded machine): read until its first event, then a moment more (watcher.seen
            # grows only when polled)
            async with asyncio.timeout(60):
                while not of(watcher, "waiting"):
                    await watcher.poll()
            await watcher.poll()
            assert [e.type for e in of(watcher, "waiting")] == ["trainer.job.queued.v1"]

            for job_id, shown in (
                ("done", "completed"),
                ("long", "running"),
                ("waiting", "queued"),
            ):
                status = await asyncio.to_thread(
                    runner.invoke, app, ["status", job_id], env=client_env
                )
                assert shown in status.stdout, status.output
            listed = await asyncio.to_thread(runner.invoke, app, ["jobs"], env=client_env)
            for job_id in ("done", "long", "waiting"):
                assert job_id in listed.stdout, listed.stdout
            views = [await job_view(settings, j) for j in ("done", "long", "waiting")]
            console = Console(record=True, width=200)
            console.print(render_board([v for v in views if v is not None], datetime.now(UTC)))
            screen = console.export_text()
            for word in ("completed", "running", "queued"):
                assert word in screen, screen

            spec = tmp_path / "done.json"
            spec.write_text(json.dumps(long_job(stack, "done", steps=4).model_dump(mode="json")))
            started = time.monotonic()
            again = await asyncio.to_thread(_follow, spec, service.env)
            assert again.returncode == 0, again.stderr
            # A follower that waited for the ended job would run into _follow's 60 s timeout;
            # the bound leaves room for the client's interpreter start on a busy machine.
            assert time.monotonic() - started < 30, "following an ended job took long"

            running = tmp_path / "long.json"
            running.write_text(
                json.dumps(long_job(stack, "long", steps=100_000).model_dump(mode="json"))
            )
            logs = _LogsFollower("long", service.env)
            await logs.until_streamed(timeout_s=60)
            started = time.monotonic()
            follower = asyncio.create_task(asyncio.to_thread(_follow, running, service.env))
            await asyncio.sleep(3)
            await send(stack, CancelJobV1(job_id="long"))
            ended = await follower
            logs_ended = await asyncio.to_thread(logs.wait, 30)
            assert logs_ended == 4, logs.text()  # the job's exit code: cancelled
            assert "job failed" in logs.lines[-1], logs.text()
            assert "code=TRAINING_CANCELLED" in logs.lines[-1]
            assert ended.returncode == 4, ended.stderr  # cancelled: its own exit code
            assert "cancelled TRAINING_CANCELLED" in ended.stderr
            assert time.monotonic() - started < 10 + 3
            cancelled = await asyncio.to_thread(
                runner.invoke, app, ["status", "long", "--json"], env=client_env
            )
            assert cancelled.exit_code == 4, cancelled.output
            assert json.loads(cancelled.stdout)["status"] == "cancelled"

            await _refusals_and_a_keyless_record(stack, client_env, runner)
    finally:
        service.stop()


async def _refusals_and_a_keyless_record(
    stack: Stack, client_env: dict[str, str], runner: CliRunner
) -> None:
    """A cancel of a mistyped id and a raw submit with a mistyped field: every command shows
    both as rejected, with the service's reason; a record without a key is dead-lettered."""
    bad = {**stack.job("typo-job"), "learning_rat": 0.1}
    keyless = long_job(stack, "keyless-job")
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        await sender.send(CancelJobV1(job_id="nope-job"))
        await sender.send_raw(json.dumps(bad).encode(), key=b"typo-job")
        await sender.send_raw(encode(keyless), key=None)

    async def rejected(job_id: str) -> dict[str, object]:
        async with asyncio.timeout(60):
            while True:
                done = await asyncio.to_thread(
                    runner.invoke, app, ["status", job_id, "--json"], env=client_env
                )
                if done.exit_code == 5:
                    row: dict[str, object] = json.loads(done.stdout)
                    return row
                await asyncio.sleep(0.5)

    nope, typo = await rejected("nope-job"), await rejected("typo-job")
    assert (nope["status"], nope["error_code"]) == ("rejected", "JOB_NOT_FOUND")
    assert "nope-job" in str(nope["error_message"])
    assert (typo["status"], typo["error_code"]) == ("rejected", "COMMAND_INVALID")
    assert "learning_rat" in str(typo["error_message"])
    listed = await asyncio.to_thread(runner.invoke, app, ["jobs", "--json"], env=client_env)
    assert listed.exit_code == 0, listed.output
    rows = {row["job_id"]: row for row in json.loads(listed.stdout)}
    assert [rows[j]["status"] for j in ("nope-job", "typo-job")] == ["rejected", "rejected"]
    # the progress, loss and duration columns, from the events topic
    done = rows["done"]
    assert (done["step"], done["total_steps"], done["status"]) == (4, 4, "completed")
    assert isinstance(done["train_loss"], float)
    assert isinstance(done["duration_s"], float)
    assert done["duration_s"] > 0
    recent = await asyncio.to_thread(
        runner.invoke, app, ["jobs", "--since", "1h", "--json"], env=client_env
    )
    assert sorted(row["job_id"] for row in json.loads(recent.stdout)) == sorted(rows)
    later = await asyncio.to_thread(
        runner.invoke, app, ["jobs", "--since", "1s", "--json"], env=client_env
    )
    assert "done" not in [row["job_id"] for row in json.loads(later.stdout)]
    wrong = await asyncio.to_thread(runner.invoke, app, ["jobs", "--since", "soon"], env=client_env)
    assert wrong.exit_code == 2, wrong.output
    assert rows["typo-job"]["error_message"] == typo["error_message"]
    table = await asyncio.to_thread(runner.invoke, app, ["jobs"], env=client_env)
    # the refusal's event (read for the progress columns) adds its stage
    assert f"JOB_NOT_FOUND at validate: {nope['error_message']}" in table.stdout, table.stdout
    watched = await asyncio.to_thread(runner.invoke, app, ["watch", "typo-job"], env=client_env)
    assert watched.exit_code == 5, watched.output
    assert "typo-job rejected (COMMAND_INVALID" in watched.stdout

    async with TopicReader(stack.bootstrap) as reader:
        ids = await topic_partitions(stack.bootstrap, stack.dead_letter_topic)
        await reader.add({TopicPartition(stack.dead_letter_topic, p): None for p in ids})
        async with asyncio.timeout(60):
            letters: list[Record] = []
            while not any(r.value == encode(keyless) for r in letters):
                letters += await reader.poll()
    letter = next(r for r in letters if r.value == encode(keyless))
    headers = dict(letter.headers)
    assert headers["error_code"] == b"COMMAND_INVALID"
    assert b"key" in headers["error_message"]


async def _logs_of_a_failed_job(runner: CliRunner, client_env: dict[str, str]) -> None:
    """``logs`` of a job that failed in its worker: its lines, the traceback among them."""
    async with asyncio.timeout(30):
        while True:  # the lines come on another producer than the events: soon after
            shown = await asyncio.to_thread(runner.invoke, app, ["logs", "broken"], env=client_env)
            if "CORPUS_NOT_DECODABLE" in shown.stdout:
                break
            await asyncio.sleep(0.5)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert "job started" in lines[0], shown.stdout
    failed = next(n for n, line in enumerate(lines) if "job failed" in line)
    assert "code=CORPUS_NOT_DECODABLE" in lines[failed]
    assert lines[failed + 1] == "Traceback (most recent call last):", shown.stdout
    assert "model_trainer/engine/corpus.py" in shown.stdout
    assert "ModelTrainerError" in shown.stdout
    nothing = await asyncio.to_thread(runner.invoke, app, ["logs", "no-such-job"], env=client_env)
    assert nothing.exit_code == 2, nothing.output


class _LogsFollower:
    """``logs JOB_ID --follow`` in a process, its lines read as they come."""

    def __init__(self, job_id: str, env: dict[str, str]) -> None:
        self.started = datetime.now(UTC)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model_trainer_client", "logs", job_id, "--follow"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _logged_after_start(self) -> bool:
        for line in list(self.lines):
            stamp = line.split(" ", 1)[0]
            with contextlib.suppress(ValueError):
                if datetime.fromisoformat(stamp) > self.started:
                    return True
        return False

    async def until_streamed(self, timeout_s: float) -> None:
        """Until it printed a line logged after it started (not history): it streams."""
        async with asyncio.timeout(timeout_s):
            while not self._logged_after_start():
                assert self.process.poll() is None, self.text()
                await asyncio.sleep(0.2)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(5)
        return code

    def text(self) -> str:
        stderr = self.process.stderr.read() if self.process.stderr is not None else ""
        return "\n".join(self.lines) + "\n--- stderr:\n" + stderr


def _follow(spec: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_trainer_client", "submit", str(spec), "--follow"],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
