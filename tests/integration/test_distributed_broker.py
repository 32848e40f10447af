"""Jobs of two processes through the real broker and service (two worker slots), one service
start for every line:

* a 3-process job is refused at once with its code;
* a 2-process llama job loses rank 1 to a kill -9 mid-run: the run is retried, resumes from
  the ranks' DCP checkpoint past step 0, completes with one terminal event, and its artifact
  loads in stock transformers;
* a running 2-process job is cancelled: every rank has ended within 5 s of the cancel's send.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
import torch
from local_service import ServiceProcess, Stack
from model_trainer_client import EventWatcher
from model_trainer_client.client import is_terminal
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
)
from transformers import AutoModelForCausalLM

from tests.figures import Figure

from .flows import logged, of, send, wait_for_step

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(stack, workers="2", worker_preload="llama", max_attempts="2")
    svc.start(timeout_s=400)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
async def watcher(stack: Stack, service: ServiceProcess) -> AsyncIterator[EventWatcher]:
    async with EventWatcher(stack.bootstrap, stack.events_topic) as w:
        yield w


def _job(stack: Stack, job_id: str, processes: int, steps: int = 6) -> SubmitJobV1:
    spec = stack.job(job_id, steps=steps)
    model = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16, "block_size": 16}
    training = {
        "max_steps": steps,
        "batch_size": 6,
        "eval_every": 1000,
        "eval_batches": 2,
        "device": "cpu",
        "checkpoint_every": 10,
    }
    spec.update(
        backend="llama",
        model=model,
        training=training,
        progress={"every_steps": 1},
        resources={"processes": processes, "strategy": "fsdp"},
    )
    return SubmitJobV1.model_validate(spec)


async def _rank_pids(svc: ServiceProcess, job_id: str, attempt: int) -> dict[int, int]:
    """The pids of the job's ranks by rank, as they logged them on joining."""
    async with asyncio.timeout(60):
        while True:
            found = {
                int(str(line["rank"])): int(str(line["pid"]))
                for line in logged(svc, "rank joined")
                if line.get("job_id") == job_id and line.get("attempt") == attempt
            }
            if len(found) == 2:
                return found
            await asyncio.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_two_process_jobs_refused_killed_and_cancelled(
    stack: Stack, service: ServiceProcess, watcher: EventWatcher, figure: Figure
) -> None:
    await send(stack, _job(stack, "three", 3), _job(stack, "pair", 2, steps=300))
    (refused,) = await watcher.until_terminal("three", timeout_s=120)
    assert isinstance(refused, FailedEventV1)
    assert refused.code is ModelTrainerErrorCode.RESOURCE_LIMIT_EXCEEDED
    assert refused.details["field"] == "resources.processes"

    # kill -9 of rank 1 once the ranks' first checkpoint (step 10) is written.
    ranks = await _rank_pids(service, "pair", 1)
    await wait_for_step(watcher, "pair", 12, timeout_s=600)
    os.kill(ranks[1], signal.SIGKILL)
    events = await watcher.until_terminal("pair", timeout_s=600)
    problems = [
        line[:600]
        for line in service.log_path.read_text().splitlines()
        if '"warning"' in line or '"error"' in line
    ]
    assert isinstance(events[-1], CompletedEventV1), ([e.type for e in events], problems[-15:])
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == [1, 2], problems[-15:]
    assert configs[1].start_step >= 10  # resumed from the DCP checkpoint, not from step 0
    resumed = [e.step for e in events[events.index(configs[1]) :] if isinstance(e, ProgressEventV1)]
    assert resumed[0] == configs[1].start_step + 1
    assert resumed == sorted(set(resumed))  # rank 0's progress alone, in step order
    assert resumed[-1] == 300
    figure(f"2-process job, rank 1 killed -9 at step >= 12: resumed at {configs[1].start_step}")
    completed = events[-1]
    assert isinstance(completed, CompletedEventV1)
    model = AutoModelForCausalLM.from_pretrained(Path(completed.artifact_path))
    logits = model(torch.zeros((1, 4), dtype=torch.long)).logits
    assert logits.shape[:2] == (1, 4)
    assert bool(torch.isfinite(logits).all())

    await send(stack, _job(stack, "long", 2, steps=100_000))
    ranks = await _rank_pids(service, "long", 1)
    procs = [psutil.Process(pid) for pid in ranks.values()]
    await wait_for_step(watcher, "long", 2, timeout_s=300)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await send(stack, CancelJobV1(job_id="long", reason="test"))
    cancelled = await watcher.until_terminal("long", timeout_s=30)
    terminal_after = loop.time() - sent
    await asyncio.to_thread(psutil.wait_procs, procs, timeout=10)
    all_gone_after = loop.time() - sent
    failed = cancelled[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is ModelTrainerErrorCode.TRAINING_CANCELLED
    assert [pid for pid in ranks.values() if _alive(pid)] == []
    took = max(terminal_after, all_gone_after)
    figure(
        f"2-process cancel through the broker: terminal event {terminal_after:.2f} s, "
        f"last rank gone {all_gone_after:.2f} s after the send"
    )
    assert took < 5.0
    await watcher.poll()
    assert [type(e) for e in of(watcher, "pair") if is_terminal(e)] == [CompletedEventV1]
