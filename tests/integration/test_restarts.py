"""Restarts and outages: the service killed or stopped mid-job, a second instance taking over,
the broker away; against the real broker and real training."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from local_service import ServiceProcess, Stack, alive
from model_trainer_client import EventWatcher, is_terminal
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    ProgressEventV1,
)

from tests.figures import Figure

from .flows import (
    assert_seq_contiguous,
    long_job,
    of,
    send,
    wait_for_step,
    wait_readiness,
)

pytestmark = pytest.mark.kafka


async def test_service_killed_mid_job_resumes_from_checkpoint(stack: Stack) -> None:
    # The job's state record is written at its transitions only (not for its progress), so
    # the successor must read the seq back from the events topic.
    svc = ServiceProcess(stack, instance_id="a", state_every_s="3600").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "crash-1"))
            await wait_for_step(watcher, "crash-1", 40, timeout_s=120)
            svc.kill()
            svc = ServiceProcess(stack, "svc2", instance_id="a", state_every_s="3600").start()
            events = await watcher.until_terminal("crash-1", timeout_s=300)
            await asyncio.sleep(2)  # a second terminal event would show up here
            await watcher.poll()
    finally:
        svc.stop()
    events = of(watcher, "crash-1")
    terminal = [e for e in events if is_terminal(e)]
    assert len(terminal) == 1, terminal
    assert isinstance(terminal[0], CompletedEventV1), terminal
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert len(configs) == 2, "expected a config event per attempt"
    resumed = configs[1]
    assert resumed.attempt == 2
    assert resumed.start_step >= 10, "the second attempt did not resume from a checkpoint"
    after = [e for e in events if isinstance(e, ProgressEventV1) and e.attempt == 2]
    assert after
    assert min(e.step for e in after) > resumed.start_step
    assert_seq_contiguous(events)
    (read_back,) = [line for line in svc.log_lines() if line.get("event") == "seq read back"]
    assert read_back["job_id"] == "crash-1"
    assert read_back["state"] == 0  # the state record written at dispatch
    assert isinstance(read_back["events"], int)
    assert read_back["events"] > 2


async def test_two_instances_one_killed_all_jobs_end_once(stack: Stack) -> None:
    a = ServiceProcess(stack, "a", instance_id="a").start()
    b = ServiceProcess(stack, "b", instance_id="b").start()
    jobs = [long_job(stack, f"scale-{i}", steps=60) for i in range(8)]
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, *jobs)
            await wait_for_step(watcher, jobs[0].job_id, 1, timeout_s=120)
            for _ in range(100):  # kill while both instances have jobs running
                running = {e.job_id for e in watcher.seen if isinstance(e, ProgressEventV1)}
                if len(running) >= 2:
                    break
                await watcher.poll()
            a.kill()
            for job in jobs:
                await watcher.until_terminal(job.job_id, timeout_s=400)
            await asyncio.sleep(3)
            await watcher.poll()
    finally:
        a.stop()
        b.stop()
    for job in jobs:
        terminal = [e for e in of(watcher, job.job_id) if is_terminal(e)]
        assert len(terminal) == 1, (job.job_id, terminal)
        assert isinstance(terminal[0], CompletedEventV1), terminal[0]


async def test_broker_away_30s_loses_no_event_and_logs_little(
    tmp_path: Path, local_broker: object, figure: Figure
) -> None:
    from local_kafka import LocalKafka

    assert isinstance(local_broker, LocalKafka)
    stack = Stack(local_broker.bootstrap_servers, tmp_path)
    svc = ServiceProcess(stack).start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "br-1", steps=300))
            await wait_for_step(watcher, "br-1", 20, timeout_s=120)
        before = len(svc.log_path.read_text().splitlines())
        local_broker.stop()
        stopped = asyncio.get_running_loop().time()
        unready = await wait_readiness(svc, ready=False, timeout_s=20)
        await asyncio.sleep(max(0.0, 30 - (asyncio.get_running_loop().time() - stopped)))
        # The service's own lines (the worker's, such as its checkpoints, are its work).
        outage_lines = [
            line
            for line in svc.log_path.read_text().splitlines()[before:]
            if '"worker_pid"' not in line
        ]
        local_broker.start()
        ready_again = await wait_readiness(svc, ready=True, timeout_s=60)
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await watcher.rewind()
            events = await watcher.until_terminal("br-1", timeout_s=300)
            # The consumer must not be stuck after the restart (aiokafka issue 1154).
            await send(stack, long_job(stack, "br-2", steps=5))
            later = await watcher.until_terminal("br-2", timeout_s=120)
    finally:
        svc.stop()
    assert unready, "/readyz stayed 200 while the broker was down"
    assert len(outage_lines) < 20, "\n".join(outage_lines[:40])
    figure(f"broker away 30 s: {len(outage_lines)} service log lines, the job completed after")
    assert ready_again, "/readyz did not recover after the broker came back"
    assert isinstance(events[-1], CompletedEventV1), events[-1]
    assert_seq_contiguous(events)
    steps = [e.step for e in events if isinstance(e, ProgressEventV1)]
    assert steps == sorted(steps)
    assert isinstance(later[-1], CompletedEventV1), later[-1]


async def test_sigterm_checkpoints_and_the_next_instance_resumes(stack: Stack) -> None:
    svc = ServiceProcess(stack, instance_id="t").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "term-1", steps=400))
            await wait_for_step(watcher, "term-1", 25, timeout_s=120)
            workers = svc.worker_pids()
            loop = asyncio.get_running_loop()
            asked = loop.time()
            code = await asyncio.to_thread(svc.terminate, 40.0)
            took = loop.time() - asked
            assert code == 0, svc.tail()
            assert workers
            assert not alive(workers)
            svc = ServiceProcess(stack, instance_id="t").start()
            events = await watcher.until_terminal("term-1", timeout_s=300)
    finally:
        svc.stop()
    assert took < 20, f"shutdown took {took:.1f}s"
    assert isinstance(events[-1], CompletedEventV1), events[-1]
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == [1, 2]
    assert configs[1].start_step >= 25, "the checkpoint taken at SIGTERM was not used"
    assert_seq_contiguous(events)
