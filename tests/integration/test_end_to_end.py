"""The whole path against the real broker: command in, real training, events out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher
from model_trainer_client.kafka import assign_whole_topic, committed_reader
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    Event,
    FailedEventV1,
    ModelTrainerErrorCode,
    ProgressEventV1,
    QueuedEventV1,
    SubmitJobV1,
)

from .flows import dead_letters

pytestmark = pytest.mark.kafka


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(stack).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
async def watcher(stack: Stack, service: ServiceProcess) -> AsyncIterator[EventWatcher]:
    async with EventWatcher(stack.bootstrap, stack.events_topic) as w:
        yield w


async def _submit(stack: Stack, spec: dict[str, object]) -> None:
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        await sender.send(SubmitJobV1.model_validate(spec))


def _assert_in_order(events: list[Event], job_id: str) -> CompletedEventV1:
    assert all(e.job_id == job_id for e in events)
    queued, events = events[0], events[1:]
    assert isinstance(queued, QueuedEventV1), "no queued event before the config"
    assert (queued.seq, queued.reason) == (0, "submitted")
    assert isinstance(events[0], ConfigEventV1), [e.type for e in events]
    assert isinstance(events[-1], CompletedEventV1), [e.type for e in events]
    middle = events[1:-1]
    assert middle, "no progress event between config and completed"
    assert all(isinstance(e, ProgressEventV1) for e in middle)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return events[-1]


async def test_submit_publishes_config_progress_completed(
    stack: Stack, service: ServiceProcess, watcher: EventWatcher
) -> None:
    await _submit(stack, stack.job("e2e-ok", steps=20))
    events = await watcher.until_terminal("e2e-ok", timeout_s=180)
    completed = _assert_in_order(events, "e2e-ok")
    progress = [e for e in events if isinstance(e, ProgressEventV1)]
    assert progress[-1].step == 20
    assert all(p.train_loss > 0 and p.tokens_per_sec > 0 for p in progress)
    assert all(e.labels == {"suite": "integration"} for e in events)
    artifact = Path(completed.artifact_path)
    assert (artifact / "manifest.json").is_file()
    lines = (artifact / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "trainer.metrics.completed.v1"


def test_service_process_does_not_map_torch(service: ServiceProcess) -> None:
    assert service.proc is not None
    own = Path(f"/proc/{service.proc.pid}/maps").read_text()
    assert "libtorch" not in own, "the service process loaded torch"
    workers = service.worker_pids()
    assert workers, "no worker processes"
    assert any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in workers)


async def test_malformed_commands_get_typed_errors_and_service_goes_on(
    stack: Stack, service: ServiceProcess, watcher: EventWatcher
) -> None:
    bad_lr = stack.job("bad-lr")
    bad_lr["training"] = {"max_steps": 5, "learning_rate": -1}
    # A field name of 600 KB: its rejection quotes it, so the failed event is cut to its
    # bound (details 64 KB), and the dead letter keeps the command's bytes.
    huge = json.dumps(stack.job("huge-name")).replace(
        '"user_id"', f'"{"x" * 600_000}": 1, "user_id"'
    )
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        await sender.send_raw(b"\xff\xfe not json", key=b"garbage")
        await sender.send_raw(json.dumps(bad_lr).encode(), key=b"bad-lr")
        await sender.send_raw(huge.encode(), key=b"huge-name")
    await _submit(stack, stack.job("after-bad", steps=10))

    rejected = await watcher.until_terminal("bad-lr", timeout_s=60)
    failed = rejected[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is ModelTrainerErrorCode.COMMAND_INVALID
    assert failed.http_status == 422
    assert "training.learning_rate" in json.dumps(failed.details)

    truncated = (await watcher.until_terminal("huge-name", timeout_s=60))[-1]
    assert isinstance(truncated, FailedEventV1)
    assert truncated.code is ModelTrainerErrorCode.COMMAND_INVALID
    original = truncated.details["truncated_from_bytes"]
    assert isinstance(original, int)
    assert original > 600_000
    assert len(truncated.model_dump_json()) < 100_000

    events = await watcher.until_terminal("after-bad", timeout_s=180)
    _assert_in_order(events, "after-bad")

    letters = await dead_letters(stack, 3)
    codes = sorted(letter["error_code"] for letter in letters)
    assert codes == ["COMMAND_INVALID", "COMMAND_INVALID", "COMMAND_UNDECODABLE"]
    assert all(letter["original_topic"] == stack.commands_topic for letter in letters)
    assert service.ready()
    # Every command settled, the 600 KB one included: the group committed to the end.
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(f"group-{stack.uid}")
    finally:
        await admin.close()
    reader = committed_reader(stack.bootstrap)
    await reader.start()
    try:
        tps = await assign_whole_topic(reader, stack.bootstrap, stack.commands_topic)
        ends = await reader.end_offsets(tps)
    finally:
        await reader.stop()
    assert {tp.partition: meta.offset for tp, meta in committed.items()} == {
        tp.partition: end for tp, end in ends.items() if end > 0
    }


def test_cli_submit_follow_shows_progress_and_exit_codes(
    stack: Stack, service: ServiceProcess, tmp_path: Path
) -> None:
    import subprocess
    import sys

    good = tmp_path / "good.json"
    # Hugging Face names, as users paste them: aliases of grad_accum_steps, and warmup_ratio.
    friendly = stack.job("cli-ok", steps=12)
    friendly["training"] = {
        "max_steps": 12,
        "batch_size": 8,
        "eval_every": 6,
        "eval_batches": 2,
        "gradient_accumulation_steps": 2,
        "warmup_ratio": 0.25,
    }
    good.write_text(json.dumps(friendly))
    typo = tmp_path / "typo.json"
    misspelt = stack.job("cli-typo", steps=12)
    misspelt["training"] = {"lerning_rate": 0.01}
    typo.write_text(json.dumps(misspelt))
    bad = tmp_path / "bad.json"
    spec = stack.job("cli-bad", steps=12)
    spec["data"] = {"corpus_path": "missing.txt"}
    bad.write_text(json.dumps(spec))
    env = {**service.env, "COLUMNS": "200"}

    def submit(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_trainer", "submit", str(path), "--follow"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    ok = submit(good)
    assert ok.returncode == 0, ok.stderr
    refused = submit(typo)
    assert refused.returncode == 2, refused.stderr
    assert "did you mean learning_rate" in refused.stderr
    assert "completed" in ok.stderr
    assert "step 12/12" in ok.stderr
    assert "artifact: " in ok.stderr
    failed = submit(bad)
    assert failed.returncode == 1, failed.stderr
    assert "CORPUS_NOT_FOUND" in failed.stderr
