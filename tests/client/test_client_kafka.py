"""The client's readers and commands against the real broker, on fresh topics that a plain
producer fills with JobStateV1 records and events, as the service will write them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from model_trainer_client import flows
from model_trainer_client.cli import app
from model_trainer_client.decode import QueuedNotice
from model_trainer_client.hints import spec_digest
from model_trainer_client.readers import JobFollower, LiveTail, TopicReader, read_states
from model_trainer_client.settings import ClientSettings
from model_trainer_contracts import (
    CancelJobV1,
    ConfigEventV1,
    JobStatus,
    ModelTrainerErrorCode,
    SubmitJobV1,
    decode_command,
    encode,
)
from model_trainer_contracts.examples import EXAMPLES
from rich.console import Console
from typer.testing import CliRunner, Result

from .stream import Job, Publisher, Topics, unknown_event

pytestmark = pytest.mark.kafka


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    fresh = Topics(kafka_bootstrap)
    await fresh.create(partitions=3)
    return fresh


def settings_of(topics: Topics) -> ClientSettings:
    return ClientSettings.from_env(env=topics.env())


def recording() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=160, color_system=None), buffer


async def next_command(topics: Topics, job_id: str, timeout_s: float = 20.0) -> bytes:
    """The first command keyed by ``job_id`` on the commands topic (the test plays the service)."""
    async with TopicReader(topics.bootstrap) as reader:
        await reader.add_topic(topics.commands)
        async with asyncio.timeout(timeout_s):
            while True:
                for record in await reader.poll():
                    if record.key == job_id.encode():
                        return record.value


def submit_file(tmp_path: Path, job_id: str) -> Path:
    spec = {**EXAMPLES[0].model_dump(mode="json"), "job_id": job_id}
    path = tmp_path / f"{job_id}.json"
    path.write_text(json.dumps(spec))
    return path


async def test_follower_reads_only_the_jobs_partition_from_the_beginning(topics: Topics) -> None:
    jobs = [Job(f"follow-{i}") for i in range(6)]
    mine = jobs[0]
    expected = mine.run(steps=4)
    async with Publisher(topics.bootstrap) as pub:
        placed = {}
        for i, event in enumerate(expected):
            placed[mine.job_id] = await pub.send(topics.events, event)
            if i == 2:  # a newer service's event type and garbage on the same key: skipped
                await pub.send(topics.events, (mine.job_id, unknown_event(mine.job_id, 99)))
                await pub.send(topics.events, (mine.job_id, b"\x00garbage"))
            for other in jobs[1:]:
                placed[other.job_id] = await pub.send(topics.events, other.queued())
    assert len(set(placed.values())) > 1, "the jobs should spread over partitions"
    async with JobFollower(settings_of(topics), mine.job_id) as follower:
        assert follower.partition == placed[mine.job_id]
        assert follower.assigned() == [placed[mine.job_id]]
        history = await follower.history()
    assert [event.seq for event in history] == [event.seq for event in expected]
    assert isinstance(history[0], QueuedNotice)
    assert history == expected


async def test_readers_never_create_the_topics_they_look_for(kafka_bootstrap: str) -> None:
    absent = Topics(kafka_bootstrap)  # never created
    settings = settings_of(absent)
    assert await flows.job_view(settings, "nobody") is None
    assert await read_states(settings) == {}
    async with LiveTail(settings) as tail:
        assert await tail.poll() == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    assert not {absent.events, absent.state} & existing


async def test_submit_follow_of_a_running_job_shows_history_then_follows(topics: Topics) -> None:
    job = Job("live-1")
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, [job.queued(), job.config(), job.progress(2)])
        console, buffer = recording()
        spec = SubmitJobV1.model_validate({**EXAMPLES[0].model_dump(), "job_id": job.job_id})
        follow = asyncio.create_task(
            flows.submit(settings_of(topics), spec, follow=True, timeout_s=60, console=console)
        )
        sent = decode_command(await next_command(topics, job.job_id))
        assert isinstance(sent, SubmitJobV1)
        assert sent.job_id == job.job_id
        assert "history of live-1: 3 events\n" in buffer.getvalue()
        assert "now running at step 2/10, loss 3.6000" in buffer.getvalue()
        await pub.send_all(topics.events, [job.progress(4, val=True), job.completed()])
        assert await asyncio.wait_for(follow, 30) == 0
    out = buffer.getvalue()
    assert "config: gpt2 0.80M" in out
    assert "step 4/10 loss 3.2000 val 3.3000" in out
    assert "completed in 12.5s" in out
    assert "artifact: /artifacts/live-1" in out


async def test_submit_follow_of_a_refused_new_job_exits_1(topics: Topics) -> None:
    job = Job("refused-1")
    console, buffer = recording()
    spec = SubmitJobV1.model_validate({**EXAMPLES[0].model_dump(), "job_id": job.job_id})
    follow = asyncio.create_task(
        flows.submit(settings_of(topics), spec, follow=True, timeout_s=60, console=console)
    )
    await next_command(topics, job.job_id)
    async with Publisher(topics.bootstrap) as pub:
        refusal = job.failed(ModelTrainerErrorCode.COMMAND_INVALID, rejected=True)
        await pub.send(topics.events, refusal)
    assert await asyncio.wait_for(follow, 30) == 1
    assert "refused COMMAND_INVALID" in buffer.getvalue()


async def test_cancel_waits_for_the_jobs_end(topics: Topics) -> None:
    job = Job("cancel-1")
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, [job.queued(), job.config(), job.progress(2)])
        console, buffer = recording()
        cancel = asyncio.create_task(
            flows.cancel(
                settings_of(topics),
                job.job_id,
                reason="enough",
                wait=True,
                timeout_s=60,
                console=console,
            )
        )
        command = decode_command(await next_command(topics, job.job_id))
        assert command == CancelJobV1(job_id=job.job_id, reason="enough")
        assert not cancel.done()
        await pub.send(topics.events, job.failed(ModelTrainerErrorCode.TRAINING_CANCELLED))
        assert await asyncio.wait_for(cancel, 30) == 0
    assert "cancelled TRAINING_CANCELLED at prepare" in buffer.getvalue()
    console, buffer = recording()
    again = flows.cancel(
        settings_of(topics), job.job_id, reason="", wait=True, timeout_s=30, console=console
    )
    assert await again == 0
    assert "cancel-1 had already ended" in buffer.getvalue()


async def test_watch_starts_each_partition_at_its_oldest_active_job(topics: Topics) -> None:
    now = datetime.now(UTC)
    active = Job("watch-active", t0=now - timedelta(seconds=5))
    ended = Job("watch-ended", t0=now - timedelta(seconds=30))
    async with Publisher(topics.bootstrap) as pub:
        active_partition = await pub.send(topics.events, active.queued())
        await pub.send_all(topics.events, [active.config(), active.progress(2)])
        others = [Job(f"watch-old-{i}", t0=now - timedelta(hours=1)) for i in range(12)]
        elsewhere = [
            j for j in others if await pub.send(topics.events, j.queued()) != active_partition
        ]
        await pub.send_all(topics.events, ended.run(steps=2))
        await pub.send_all(
            topics.state,
            [active.state(JobStatus.RUNNING), ended.state(JobStatus.COMPLETED)],
        )
    assert elsewhere, "some old jobs should sit on other partitions"
    settings = settings_of(topics)
    since = await flows._since(settings, [active.state(JobStatus.RUNNING)])
    assert list(since) == [active_partition]
    seen: set[str] = set()
    async with LiveTail(settings, events_since_ms=since) as tail:
        async with asyncio.timeout(20):
            while not await tail.caught_up():
                seen |= {item.job_id for item in await tail.poll()}
    assert {"watch-active", "watch-ended"} <= seen  # state records are all read
    # partitions without an active job start at their end
    assert not {j.job_id for j in elsewhere} & seen


def digest_of(job_id: str) -> str:
    """The request digest the service records for :func:`submit_file`'s job."""
    return spec_digest(SubmitJobV1.model_validate({**EXAMPLES[0].model_dump(), "job_id": job_id}))


async def _publish_three_jobs(topics: Topics) -> None:
    done = Job("cli-done", labels={"team": "nlp"})
    bad = Job("cli-bad", user_id=9, labels={"team": "vision"})
    running = Job("cli-running")
    await topics.create(partitions=3)
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, done.run(steps=4))
        await pub.send_all(topics.events, [bad.queued(), bad.config(), bad.failed()])
        await pub.send_all(topics.events, [running.queued(), running.config()])
        await pub.send_all(
            topics.state,
            [
                done.state(JobStatus.COMPLETED, request_digest=digest_of("cli-done")),
                bad.state(
                    JobStatus.FAILED,
                    error_code="CORPUS_NOT_FOUND",
                    request_digest=digest_of("cli-bad"),
                ),
                running.state(JobStatus.RUNNING),
            ],
        )


def test_status_jobs_and_follow_of_ended_jobs_through_the_cli(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(kafka_bootstrap)
    asyncio.run(_publish_three_jobs(topics))
    runner = CliRunner()
    env = {**topics.env(), "COLUMNS": "200"}

    def cli(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    # the console script itself, once; the rest in-process (each run is its own event loop)
    script = subprocess.run(
        [sys.executable, "-m", "model_trainer_client", "status", "cli-done"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert script.returncode == 0, script.stderr
    assert "completed" in script.stdout
    assert "/artifacts/cli-done" in script.stdout
    failed = cli("status", "cli-bad")
    assert failed.exit_code == 1, failed.output
    assert "CORPUS_NOT_FOUND at prepare" in failed.stdout
    assert cli("status", "cli-nope").exit_code == 2
    assert cli("status", "not a job id!").exit_code == 2
    listed = cli("jobs", "--label", "team=nlp")
    assert listed.exit_code == 0, listed.output
    assert "cli-done" in listed.stdout
    assert "cli-running" in listed.stdout
    assert "cli-bad" not in listed.stdout
    assert "2 jobs" in listed.stdout
    running = cli("jobs", "--status", "running", "--user", "7")
    assert "cli-running" in running.stdout
    assert "cli-done" not in running.stdout
    assert cli("jobs", "--label", "nolabel").exit_code == 2
    assert cli("jobs", "--status", "sleeping").exit_code == 2
    ended = cli("submit", str(submit_file(tmp_path, "cli-done")), "--follow", "--timeout", "30")
    assert ended.exit_code == 0, ended.output
    assert "had already ended; not submitted again" in ended.stderr
    assert "artifact: /artifacts/cli-done" in ended.stderr
    ended_badly = cli("submit", str(submit_file(tmp_path, "cli-bad")), "--follow")
    assert ended_badly.exit_code == 1, ended_badly.output
    assert "failed CORPUS_NOT_FOUND" in ended_badly.stderr
    watched = cli("watch", "cli-bad")
    assert watched.exit_code == 1, watched.output
    assert "cli-bad" in watched.stdout
    no_broker = runner.invoke(app, ["status", "cli-done", "-b", "127.0.0.1:1"], env=env)
    assert no_broker.exit_code == 3


def test_cli_rejects_a_bad_job_file_with_exit_2(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    config = next(e for e in EXAMPLES if isinstance(e, ConfigEventV1))
    event.write_bytes(encode(config))
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"type": "trainer.job.submit.v1", "job_id": "x"}')
    runner = CliRunner()
    for path in (event, invalid):
        done = runner.invoke(app, ["submit", str(path)])
        assert done.exit_code == 2, done.output
