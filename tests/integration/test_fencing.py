"""Fencing and poison pills against the real broker: an owner paused past its session timeout
never commits again, a command on another partition never runs its job twice, and no command
stops the service, not even one it died on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

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

from .flows import (
    assert_seq_contiguous,
    dead_letters,
    join_group_briefly,
    long_job,
    of,
    send,
    wait_for_step,
    wait_log,
)

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


def _file_modes_apply() -> tuple[str, ...]:
    """How to start a service that a folder's mode bits apply to. Root passes over them
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so as root the service runs without those two
    capabilities: still uid 0 and the owner of the test's files, but a folder of mode 000 is
    then as unreadable to it as to any user. Not another uid: the venv's interpreter lives
    under /root (mode 0700), which another uid cannot read (its libpython and stdlib are
    unreachable; the loader falls back to the system's, a different Python)."""
    if os.geteuid() != 0:
        return ()
    assert shutil.which("setpriv"), "util-linux's setpriv is needed to drop root's file access"
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--")


def _marked(marker: Path) -> str:
    try:
        return marker.read_text()
    except FileNotFoundError:
        return ""


async def _until_handled(marker: Path, topic: str, partition: int, offset: int) -> None:
    """Until the partition's crash marker names this record: the service is handling it."""
    async with asyncio.timeout(120):
        while True:
            if _marked(marker) == f"{topic}\n{partition}\n{offset}\n":
                return
            await asyncio.sleep(0.1)


async def _flush_out_of_time(stack: Stack, svc: ServiceProcess, figure: Figure) -> None:
    """The hand-back flush times out while a job's terminal event is queued.

    No test-only hook: the service runs with MODEL_TRAINER_HANDBACK_FLUSH_TIMEOUT_S at 1 ms
    (its producer lingers 5 ms per batch, so no transaction commits in time) and a long
    cancel grace. Its worker is frozen (SIGSTOP) and the job cancelled, so the run cannot
    stop yet; a plain consumer joins the group, which revokes every partition of the
    service; once the service logs that it is handing them back, the worker is continued,
    stops on the cancel, and the book ends the job: its terminal event, state and commit are
    queued just as the flush starts, and dropped with the partition when it runs out."""
    job = long_job(stack, "flush-late", steps=600)
    async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
        await send(stack, job)
        await wait_for_step(watcher, job.job_id, 10, timeout_s=120)
        (worker,) = svc.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        member: asyncio.Task[None] | None = None
        try:
            await send(stack, CancelJobV1(job_id=job.job_id, reason="flush test"))
            await wait_log(svc, "cancel requested", timeout_s=60, job_id=job.job_id)
            member = asyncio.create_task(join_group_briefly(stack))
            await wait_log(svc, "handing back partitions", timeout_s=60)
        finally:
            os.kill(worker, signal.SIGCONT)
            if member is not None:
                await member
        await watcher.until_terminal(job.job_id, timeout_s=300)
        await asyncio.sleep(3)  # a second terminal event would show up here
        await watcher.poll()
    events = of(watcher, job.job_id)
    _assert_one_clean_history(events)
    (terminal,) = [e for e in events if is_terminal(e)]
    assert isinstance(terminal, FailedEventV1)
    assert terminal.code is _C.TRAINING_CANCELLED
    # The service's own account: the job ended inside the hand-back, then the flush ran out
    # with that end still unsent.
    lines = svc.log_lines()
    handing = next(
        i for i, line in enumerate(lines) if line.get("event") == "handing back partitions"
    )
    ended = [
        i
        for i, line in enumerate(lines)
        if line.get("event") == "job ended" and line.get("job_id") == job.job_id
    ]
    late = [
        i
        for i, line in enumerate(lines)
        if line.get("event") == "hand-back flush timed out" and i > handing
    ]
    assert late, "the hand-back flush did not run out"
    assert any(handing < i < late[0] for i in ended), "the job did not end inside the hand-back"
    dropped = lines[late[0]]["batches"]
    assert int(str(dropped)) >= 1
    figure(
        f"hand-back flush out of time: the job ended inside the hand-back ({len(ended)} ends "
        f"in the book), {dropped} batch(es) dropped unsent; on the topic: 1 terminal "
        f"({terminal.code}), seq 0..{len(events) - 1} once each, "
        f"attempts {sorted({e.attempt for e in events})}"
    )


async def test_no_command_stops_the_service_not_even_one_it_died_on(
    stack: Stack, figure: Figure
) -> None:
    """Poison commands, and one the service is really killed on (SIGKILL while its admission
    is stuck opening a FIFO): each is answered with its code, the killed-on one exactly once,
    as COMMAND_CRASHED, after the restart. The first service start also serves the hand-back
    flush that runs out of time (:func:`_flush_out_of_time`), to save a start."""
    launcher = _file_modes_apply()
    data = stack.data_root
    (data / "loop-a").symlink_to(data / "loop-b")
    (data / "loop-b").symlink_to(data / "loop-a")
    locked = data / "locked"
    locked.mkdir()
    (locked / "corpus.txt").write_text("readable only by whoever may list the folder\n")
    locked.chmod(0)
    # A tokenizer artifact whose manifest is a FIFO: admission reads the manifest for the
    # vocabulary, and an open() of a FIFO with no writer blocks, like a hung network mount.
    stuck_artifact = stack.artifacts_root / "fifo-tok"
    stuck_artifact.mkdir()
    (stuck_artifact / "tokenizer.json").write_text("{}")
    os.mkfifo(stuck_artifact / "manifest.json")
    hostile = {
        "long-name": "a" * 300,
        "nul-byte": "corpus\x00.txt",
        "symlink-loop": "loop-a/corpus.txt",
        "locked-file": "locked/corpus.txt",
        "locked-folder": "locked",
    }
    specs = []
    for job_id, path in hostile.items():
        spec = stack.job(job_id, steps=4)
        spec["data"] = {"corpus_path": path}
        specs.append(spec)
    labels = stack.job("many-labels", steps=4)
    labels["labels"] = {f"k{i}": "v" for i in range(10_000)}
    fifo_tokenizer = {"kind": "job", "job_id": "fifo-tok"}
    crashed = SubmitJobV1.model_validate(stack.job("crashed-on", steps=4, tokenizer=fifo_tokenizer))
    blocked = SubmitJobV1.model_validate(stack.job("fifo-again", steps=4, tokenizer=fifo_tokenizer))
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, max_request_size=4 << 20)
    await producer.start()
    first = ServiceProcess(
        stack,
        "poison-1",
        handback_flush_timeout_s="0.001",
        cancel_grace_s="120",
        admission_timeout_s="300",
    )
    svc = ServiceProcess(stack, "poison-2", admission_timeout_s="5")
    first.launcher = svc.launcher = launcher
    try:
        first.start(timeout_s=300)
        await _flush_out_of_time(stack, first, figure)
        sent = await producer.send_and_wait(
            stack.commands_topic, encode(crashed), crashed.job_id.encode()
        )
        marker = stack.artifacts_root / ".handling" / f"group-{stack.uid}"
        marker /= f"{stack.commands_topic}-{sent.partition}"
        await _until_handled(marker, stack.commands_topic, sent.partition, sent.offset)
        first.kill()  # SIGKILL while its admission is stuck on the command
        svc.start(timeout_s=300)
        for spec in specs:
            await producer.send_and_wait(
                stack.commands_topic, json.dumps(spec).encode(), str(spec["job_id"]).encode()
            )
        await producer.send_and_wait(
            stack.commands_topic, json.dumps(labels).encode(), b"many-labels"
        )
        await producer.send_and_wait(stack.commands_topic, encode(blocked), b"fifo-again")
        wrong = SubmitJobV1.model_validate(stack.job("huge-key", steps=4))
        await producer.send_and_wait(stack.commands_topic, encode(wrong), b"k" * 900_000)
        good = SubmitJobV1.model_validate(stack.job("after-poison", steps=6))
        await producer.send_and_wait(stack.commands_topic, encode(good), b"after-poison")
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await watcher.rewind()  # the answers may be out before the watcher starts
            answers: dict[str, Event] = {}
            for job_id in [*hostile, "many-labels", "fifo-again", "after-poison"]:
                answers[job_id] = (await watcher.until_terminal(job_id, timeout_s=180))[-1]
            await asyncio.sleep(2)
            await watcher.poll()
        letters = await dead_letters(stack, 3)
        assert svc.proc is not None
        assert svc.proc.poll() is None, "the service exited"
        assert svc.ready()
        # Its admission thread is still stuck on the FIFO: it must not keep the process up.
        stopping = time.monotonic()
        exit_code = svc.terminate(timeout_s=60)
        stopped_in = time.monotonic() - stopping
    finally:
        await producer.stop()
        locked.chmod(0o700)
        first.stop()
        svc.stop()
    assert exit_code == 0, svc.tail()
    codes = {job_id: getattr(event, "code", "completed") for job_id, event in answers.items()}
    assert codes["after-poison"] == "completed"
    assert [codes[job_id] for job_id in hostile] == [_C.PATH_NOT_ALLOWED] * len(hostile), answers
    assert "Permission denied" in str(answers["locked-folder"]), answers["locked-folder"]
    assert codes["many-labels"] in {_C.COMMAND_INVALID, _C.COMMAND_TOO_LARGE}
    assert codes["fifo-again"] is _C.ADMISSION_TIMEOUT
    assert not of(watcher, "crashed-on"), "the command it died on was handled again"
    by_code = sorted(letter["error_code"] for letter in letters)
    assert by_code == [_C.COMMAND_CRASHED, _C.COMMAND_INVALID, _C.COMMAND_INVALID], letters
    (died_on,) = [letter for letter in letters if letter["error_code"] == _C.COMMAND_CRASHED]
    assert f"offset {sent.offset}" in died_on["error_message"], died_on
    (cut,) = [letter for letter in letters if "original_key_size" in letter]
    assert int(cut["key_bytes"]) <= 1024
    assert cut["original_key_size"] == "900000"
    figure(
        "poison: "
        + ", ".join(f"{job_id} -> {code}" for job_id, code in sorted(codes.items()))
        + f"; dead letters {by_code}; killed while admitting offset {sent.offset}, answered "
        f"COMMAND_CRASHED once after the restart; the service never exited on a command and "
        f"stopped (rc {exit_code}) in {stopped_in:.1f} s with an admission thread stuck"
        + (" (run without root's file access)" if launcher else "")
    )
