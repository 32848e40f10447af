"""A job of two processes through the real broker and service (two worker slots).

One service start for both lines: a 2-process llama job trains to its completed event and its
artifact loads in stock transformers; a 3-process job is refused at once with its code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
)
from transformers import AutoModelForCausalLM

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def service(stack: Stack) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(stack, workers="2", worker_preload="llama").start(timeout_s=400)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
async def watcher(stack: Stack, service: ServiceProcess) -> AsyncIterator[EventWatcher]:
    async with EventWatcher(stack.bootstrap, stack.events_topic) as w:
        yield w


def _job(stack: Stack, job_id: str, processes: int) -> SubmitJobV1:
    spec = stack.job(job_id, steps=6)
    model = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16, "block_size": 16}
    training = {
        "max_steps": 6,
        "batch_size": 6,
        "eval_every": 3,
        "eval_batches": 2,
        "device": "cpu",
    }
    spec.update(
        backend="llama",
        model=model,
        training=training,
        resources={"processes": processes, "strategy": "fsdp"},
    )
    return SubmitJobV1.model_validate(spec)


async def test_two_process_job_completes_and_three_is_refused(
    stack: Stack, service: ServiceProcess, watcher: EventWatcher
) -> None:
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        await sender.send(_job(stack, "three", 3))
        await sender.send(_job(stack, "pair", 2))
    (refused,) = await watcher.until_terminal("three", timeout_s=120)
    assert isinstance(refused, FailedEventV1)
    assert refused.code is ModelTrainerErrorCode.RESOURCE_LIMIT_EXCEEDED
    assert refused.details["field"] == "resources.processes"
    events = await watcher.until_terminal("pair", timeout_s=600)
    kinds = [type(e) for e in events[1:]]
    problems = [
        line[:600]
        for line in service.log_path.read_text().splitlines()
        if '"warning"' in line or '"error"' in line
    ]
    assert kinds[0] is ConfigEventV1, ([e.type for e in events], problems[-15:])
    assert kinds[-1] is CompletedEventV1
    progress = [e for e in events if isinstance(e, ProgressEventV1)]
    assert [p.step for p in progress] == sorted({p.step for p in progress})  # rank 0 alone
    assert progress[-1].step == 6
    completed = events[-1]
    assert isinstance(completed, CompletedEventV1)
    model = AutoModelForCausalLM.from_pretrained(Path(completed.artifact_path))
    logits = model(torch.zeros((1, 4), dtype=torch.long)).logits
    assert logits.shape[:2] == (1, 4)
    assert bool(torch.isfinite(logits).all())
