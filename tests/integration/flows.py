"""Steps the integration tests share: send commands, wait for progress, read a job's events."""

from __future__ import annotations

import asyncio

from model_trainer.client import CommandSender, EventWatcher
from model_trainer_contracts import CancelJobV1, Event, ProgressEventV1, SubmitJobV1

from .harness import ServiceProcess, Stack


def long_job(stack: Stack, job_id: str, steps: int = 400) -> SubmitJobV1:
    spec = stack.job(job_id, steps=steps)
    spec["training"] = {
        "max_steps": steps,
        "batch_size": 8,
        "eval_every": 50,
        "eval_batches": 2,
        "checkpoint_every": 10,
    }
    return SubmitJobV1.model_validate(spec)


async def send(stack: Stack, *commands: SubmitJobV1 | CancelJobV1) -> None:
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        for command in commands:
            await sender.send(command)


async def wait_for_step(watcher: EventWatcher, job_id: str, step: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if any(
                isinstance(e, ProgressEventV1) and e.job_id == job_id and e.step >= step
                for e in watcher.seen
            ):
                return
            await watcher.poll()


async def wait_readiness(svc: ServiceProcess, *, ready: bool, timeout_s: float) -> bool:
    """Wait until the service's /readyz says ``ready``; False when it never did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await asyncio.to_thread(svc.ready) == ready:
            return True
        await asyncio.sleep(0.5)
    return False


def of(watcher: EventWatcher, job_id: str) -> list[Event]:
    return [e for e in watcher.seen if e.job_id == job_id]


def assert_seq_contiguous(events: list[Event]) -> None:
    seqs = sorted({e.seq for e in events})
    assert seqs == list(range(len(seqs))), f"seq gaps: {seqs}"
