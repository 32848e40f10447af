"""The memory budget per worker, through the real service on the real broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from local_service import ServiceProcess, Stack
from model_trainer.core.memory import check_memory, corpus_bytes, vocabulary
from model_trainer_client import EventWatcher
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
)

from tests.figures import Figure

from .flows import of, send, wait_readiness

pytestmark = pytest.mark.kafka
C = ModelTrainerErrorCode


async def test_an_oversized_job_is_refused_at_acceptance(stack: Stack, figure: Figure) -> None:
    """The issue's spec (965M non-embedding parameters, context 8192, batch 16, a 65,536 BPE
    vocabulary) is within the model-size bounds; its memory estimate is not, against the
    default budget (a fair share of this host) or any other this host could give."""
    spec = stack.job("oversized")
    spec["backend"] = "gpt2"
    spec["model"] = {"n_layer": 12, "n_embd": 2560, "n_head": 4, "block_size": 8192}
    spec["tokenizer"] = {"kind": "bpe", "vocab_size": 65_536}
    spec["training"] = {"batch_size": 16}
    job = SubmitJobV1.model_validate(spec)
    svc = ServiceProcess(stack).start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            sent = datetime.now(UTC)
            await send(stack, job)
            events = await watcher.until_terminal("oversized", timeout_s=60)
    finally:
        svc.stop()
    failed = events[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is C.RESOURCE_LIMIT_EXCEEDED
    assert (failed.http_status, failed.retryable, failed.stage) == (422, False, "validate")
    assert not [e for e in of(watcher, "oversized") if isinstance(e, ConfigEventV1)]
    took = (failed.ts - sent).total_seconds()  # the service's clock: this host's
    figure(f"memory (service): oversized job refused {took * 1000:.0f} ms after it was sent")
    assert took <= 1.0, f"refused {took:.2f}s after it was sent"
    estimate_mb, budget_mb = failed.details["estimate_mb"], failed.details["budget_mb"]
    assert isinstance(estimate_mb, int)
    assert isinstance(budget_mb, int)
    assert estimate_mb > budget_mb
    assert isinstance(failed.details["breakdown_mb"], dict)


async def test_a_job_past_its_workers_limit_fails_typed_and_harms_no_other(
    stack: Stack, figure: Figure
) -> None:
    """Two workers with a 300 MB budget each. How the overshoot is produced: the acceptance
    check is switched off (``MODEL_TRAINER_MEMORY_CHECK=false``), so a job whose estimate is
    about 750 MB (a GPT-2 step over a batch of 128 windows of 128 tokens) is admitted anyway,
    and only the worker's ``RLIMIT_DATA`` (idle size + 300 MB) stands in its way. With the
    check on, the same job is refused at acceptance. A small job runs on the other worker
    meanwhile. The big job ends with TRAINING_OOM on its first attempt (not retried, no
    RUN_WORKER_DIED), the small one completes, no worker is replaced and the service stays
    ready."""
    big = stack.job("oom-big", steps=50)
    big["backend"] = "gpt2"
    big["model"] = {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 128}
    big["training"] = {"max_steps": 50, "batch_size": 128, "eval_every": 25, "eval_batches": 1}
    small = stack.job("oom-small", steps=40)
    job = SubmitJobV1.model_validate(big)
    with pytest.raises(ModelTrainerError) as refused:  # what the check would have said
        check_memory(
            job,
            300,
            vocabulary=vocabulary(job, stack.artifacts_root),
            corpus_bytes=corpus_bytes(job, stack.data_root),
            device="cpu",
            precision="fp32",
        )
    estimate_mb = refused.value.details["estimate_mb"]
    assert isinstance(estimate_mb, int)
    assert estimate_mb > 2 * 300
    svc = ServiceProcess(
        stack,
        workers="2",
        worker_memory_mb="300",
        memory_check="false",
        max_attempts="2",
        worker_preload="char_lstm,gpt2",  # transformers imported before the limit is set
    ).start(timeout_s=300)
    try:
        pids = svc.worker_pids()
        assert len(pids) == 2
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, SubmitJobV1.model_validate(small), job)
            big_events, small_events = await asyncio.gather(
                watcher.until_terminal("oom-big", timeout_s=180),
                watcher.until_terminal("oom-small", timeout_s=180),
            )
            assert await wait_readiness(svc, ready=True, timeout_s=10)
            assert svc.readyz()[0] == 200
        assert sorted(svc.worker_pids()) == sorted(pids), "a worker was replaced"
        assert "model_trainer_worker_restarts_total 0.0" in svc.metrics()
        assert svc.proc is not None
        assert svc.proc.poll() is None
        limits = [line for line in svc.log_lines() if line.get("event") == "worker memory"]
        for line in limits:
            figure(
                f"memory (service): worker idle VmData {line['idle_mb']} MB, "
                f"limit {line['limit_mb']} MB"
            )
    finally:
        svc.stop()
    failed = big_events[-1]
    assert isinstance(failed, FailedEventV1), failed
    assert failed.code is C.TRAINING_OOM
    assert (failed.attempt, failed.retryable) == (1, False)
    assert failed.details["budget_mb"] == 300
    assert [e.attempt for e in big_events if isinstance(e, ConfigEventV1)] == [1]
    assert isinstance(small_events[-1], CompletedEventV1)
