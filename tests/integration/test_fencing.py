"""Fencing and poison pills against the real broker: an owner paused past its session timeout
never commits again, a command on another partition never runs its job twice, and no command
stops the service, not even one it died on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from aiokafka import AIOKafkaProducer
from local_service import ServiceProcess, Stack
from model_trainer_client import EventWatcher, is_terminal
from model_trainer_client.kafka import (
    partition_for_key,
)
from model_trainer_contracts import (
    CancelJobV1,
    ConfigEventV1,
    Event,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
    encode,
)

from tests.figures import Figure

from .flows import assert_seq_contiguous, dead_letters, long_job, of, send, wait_for_step

pytestmark = pytest.mark.kafka
PARTITIONS = 4  # the service's default for the topics it creates
_C = ModelTrainerErrorCode


def _owner(instances: list[ServiceProcess], job_id: str) -> ServiceProcess:
    """The instance whose log says it dispatched ``job_id`` last."""
    latest: tuple[float, ServiceProcess] | None = None
    for svc in instances:
        for line in svc.log_lines():
            if line.get("event") == "job dispatched" and line.get("job_id") == job_id:
                at = float(str(line.get("timestamp_unix", 0)) or 0) or time.time()
                if latest is None or at >= latest[0]:
                    latest = (at, svc)
    assert latest is not None, f"no instance dispatched {job_id}"
    return latest[1]


def _dispatchers(instances: list[ServiceProcess], job_id: str) -> list[str]:
    return [
        svc.name
        for svc in instances
        for line in svc.log_lines()
        if line.get("event") == "job dispatched" and line.get("job_id") == job_id
    ]


async def _until_attempt(
    watcher: EventWatcher, job_id: str, attempt: int, timeout_s: float
) -> None:
    async with asyncio.timeout(timeout_s):
        while not any(
            isinstance(e, ConfigEventV1) and e.job_id == job_id and e.attempt >= attempt
            for e in watcher.seen
        ):
            await watcher.poll()


def _assert_one_clean_history(events: list[Event]) -> None:
    """One terminal event, seq 0..n-1 each once, and nothing of an older attempt committed
    after a newer attempt's config event."""
    terminal = [e for e in events if is_terminal(e)]
    assert len(terminal) == 1, terminal
    assert_seq_contiguous(events)
    ordered = sorted(events, key=lambda e: e.seq)
    newest = 0
    for event in ordered:
        if isinstance(event, ConfigEventV1):
            newest = max(newest, event.attempt)
        assert event.attempt >= newest or isinstance(event, FailedEventV1), (
            f"seq {event.seq}: attempt {event.attempt} after attempt {newest}'s config"
        )


@pytest.mark.parametrize("frozen", ["service", "group"])
async def test_a_paused_owner_is_fenced_and_the_job_ends_once(
    stack: Stack, frozen: str, figure: Figure
) -> None:
    """The owner's service process (or its whole process group, workers included) is
    stopped past the session timeout while its worker trains; the other instance takes the
    job over; then the owner is continued."""
    env = {"session_timeout_ms": "6000", "heartbeat_interval_ms": "1000"}
    a = ServiceProcess(stack, "a", instance_id="a", **env).start(timeout_s=300)
    b = ServiceProcess(stack, "b", instance_id="b", **env).start(timeout_s=300)
    job = long_job(stack, f"zombie-{frozen}", steps=600)
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, job)
            await wait_for_step(watcher, job.job_id, 20, timeout_s=120)
            owner = _owner([a, b], job.job_id)
            assert owner.proc is not None
            pid = owner.proc.pid

            def stop(signum: int) -> None:
                if frozen == "group":
                    os.killpg(pid, signum)
                else:
                    os.kill(pid, signum)

            stop(signal.SIGSTOP)
            paused = time.monotonic()
            try:
                await _until_attempt(watcher, job.job_id, 2, timeout_s=120)
                await asyncio.sleep(3)  # the orphaned run goes on training meanwhile
            finally:
                stop(signal.SIGCONT)
            figure(
                f"fencing: {frozen} of the owner stopped {time.monotonic() - paused:.1f} s; "
                "the other instance took the job over"
            )
            await watcher.until_terminal(job.job_id, timeout_s=400)
            await asyncio.sleep(5)  # anything the woken owner still commits shows up here
            await watcher.poll()
    finally:
        a.stop()
        b.stop()
    events = of(watcher, job.job_id)
    _assert_one_clean_history(events)
    fenced = [
        line
        for svc in (a, b)
        for line in svc.log_lines()
        if str(line.get("event", "")).startswith(("fenced", "partition ownership not confirmed"))
        or line.get("event") == "partitions revoked"
    ]
    figure(
        f"fencing: {frozen}: {len(events)} events, seq 0..{len(events) - 1} once each, "
        f"attempts {sorted({e.attempt for e in events})}, "
        f"dispatched by {_dispatchers([a, b], job.job_id)}, {len(fenced)} fence/revoke lines"
    )


async def test_a_command_on_another_partition_is_forwarded_never_run_twice(
    stack: Stack, figure: Figure
) -> None:
    a = ServiceProcess(stack, "a", instance_id="a").start(timeout_s=300)
    b = ServiceProcess(stack, "b", instance_id="b").start(timeout_s=300)
    job = long_job(stack, "misplaced-1", steps=2000)
    home = partition_for_key(job.job_id.encode(), PARTITIONS)
    others = [p for p in range(PARTITIONS) if p != home]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, job)
            await wait_for_step(watcher, job.job_id, 4, timeout_s=120)
            key = job.job_id.encode()
            for partition in others:  # what a client with another partitioner does
                await producer.send_and_wait(stack.commands_topic, encode(job), key, partition)
            await asyncio.sleep(3)
            cancel = CancelJobV1(job_id=job.job_id, reason="misplaced test")
            for partition in others:
                await producer.send_and_wait(stack.commands_topic, encode(cancel), key, partition)
            await watcher.until_terminal(job.job_id, timeout_s=120)
            await asyncio.sleep(5)
            await watcher.poll()
    finally:
        await producer.stop()
        a.stop()
        b.stop()
    events = of(watcher, job.job_id)
    _assert_one_clean_history(events)
    (terminal,) = [e for e in events if is_terminal(e)]
    assert isinstance(terminal, FailedEventV1)
    assert terminal.code is _C.TRAINING_CANCELLED
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == [1], "the job ran again"
    # Later cancels are absorbed while the run stops, or answered JOB_NOT_FOUND by the job's
    # owner once it ended (the seq check above covers those answers).
    refusals = [e for e in events if isinstance(e, FailedEventV1) and e.code is _C.JOB_NOT_FOUND]
    assert len(refusals) <= len(others) - 1
    forwarded = [
        line
        for svc in (a, b)
        for line in svc.log_lines()
        if line.get("event") == "command forwarded to its job's partition"
    ]
    assert sorted(int(str(line["partition"])) for line in forwarded) == sorted(others * 2)
    assert {int(str(line["to"])) for line in forwarded} == {home}
    figure(
        f"misplaced: 3 submits and 3 cancels on other partitions forwarded to partition {home}: "
        f"1 run, 1 terminal ({terminal.code}), {len(refusals)} JOB_NOT_FOUND answers, "
        f"seq 0..{len(events) - 1} once each"
    )


async def test_no_command_stops_the_service_not_even_one_it_died_on(
    stack: Stack, figure: Figure
) -> None:
    data = stack.data_root
    (data / "loop-a").symlink_to(data / "loop-b")
    (data / "loop-b").symlink_to(data / "loop-a")
    hostile = {
        "long-name": "a" * 300,
        "nul-byte": "corpus\x00.txt",
        "symlink-loop": "loop-a/corpus.txt",
    }
    specs = []
    for job_id, path in hostile.items():
        spec = stack.job(job_id, steps=4)
        spec["data"] = {"corpus_path": path}
        specs.append(spec)
    labels = stack.job("many-labels", steps=4)
    labels["labels"] = {f"k{i}": "v" for i in range(10_000)}
    # The record a crashed predecessor was handling: its marker is left in place.
    crashed = SubmitJobV1.model_validate(stack.job("crashed-on", steps=4))
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=4 << 20)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            stack.commands_topic, encode(crashed), crashed.job_id.encode()
        )
        markers = stack.artifacts_root / ".handling" / f"group-{stack.uid}"
        markers.mkdir(parents=True)
        (markers / f"{stack.commands_topic}-{sent.partition}").write_text(
            f"{stack.commands_topic}\n{sent.partition}\n{sent.offset}\n"
        )
        svc = ServiceProcess(stack, "poison", admission_timeout_s="5").start(timeout_s=300)
        for spec in specs:
            await producer.send_and_wait(
                stack.commands_topic, json.dumps(spec).encode(), str(spec["job_id"]).encode()
            )
        await producer.send_and_wait(
            stack.commands_topic, json.dumps(labels).encode(), b"many-labels"
        )
        wrong = SubmitJobV1.model_validate(stack.job("huge-key", steps=4))
        await producer.send_and_wait(stack.commands_topic, encode(wrong), b"k" * 900_000)
        good = SubmitJobV1.model_validate(stack.job("after-poison", steps=6))
        await producer.send_and_wait(stack.commands_topic, encode(good), b"after-poison")
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await watcher.rewind()  # the answers may be out before the watcher starts
            answers: dict[str, Event] = {}
            for job_id in [*hostile, "many-labels", "after-poison"]:
                answers[job_id] = (await watcher.until_terminal(job_id, timeout_s=180))[-1]
        letters = await dead_letters(stack, 3)
        assert svc.proc is not None
        assert svc.proc.poll() is None, "the service exited"
        assert svc.ready()
    finally:
        await producer.stop()
        if "svc" in locals():
            svc.stop()
    codes = {job_id: getattr(event, "code", "completed") for job_id, event in answers.items()}
    assert codes["after-poison"] == "completed"
    assert [codes[job_id] for job_id in hostile] == [
        _C.PATH_NOT_ALLOWED,
        _C.PATH_NOT_ALLOWED,
        _C.PATH_NOT_ALLOWED,
    ], answers
    assert codes["many-labels"] in {_C.COMMAND_INVALID, _C.COMMAND_TOO_LARGE}
    by_code = sorted(letter["error_code"] for letter in letters)
    assert by_code == [_C.COMMAND_CRASHED, _C.COMMAND_INVALID, _C.COMMAND_INVALID], letters
    (cut,) = [letter for letter in letters if "original_key_size" in letter]
    assert int(cut["key_bytes"]) <= 1024
    assert cut["original_key_size"] == "900000"
    figure(
        "poison: "
        + ", ".join(f"{job_id} -> {code}" for job_id, code in sorted(codes.items()))
        + f"; dead letters {by_code}; the service never exited"
    )
