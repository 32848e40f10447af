"""A worker's ``_run`` turns whatever a run raises into the one message the pool gets.

The run is replaced through ``_run``'s ``ranks`` seam (what it calls instead of ``run_job``
for a job of several processes), so each outcome is made to happen without training."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from model_trainer.engine.context import Preempted, RunContext, Superseded
from model_trainer.pool.protocol import (
    JobEnded,
    JobPreempted,
    RunOrder,
    WorkerMemory,
    WorkerMessage,
)
from model_trainer.pool.worker import _run
from model_trainer_contracts import (
    FailedEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    decode_event,
    encode,
)

from tests.engine.engine_helpers import Env

_C = ModelTrainerErrorCode


def _order_and_ctx(tmp_path: Path) -> tuple[RunOrder, RunContext]:
    env = Env(tmp_path)
    job = env.job(job_id="job-run")
    order = RunOrder(encode(job), 3, "test", env.data_root, env.artifacts_root, 1000, 1 << 30, None)
    return order, env.ctx(job, [], attempt=order.attempt)


def _raising(exc: BaseException) -> Callable[[], WorkerMessage]:
    def run() -> WorkerMessage:
        raise exc

    return run


def _failed(message: WorkerMessage) -> FailedEventV1:
    assert isinstance(message, JobEnded)
    assert (message.job_id, message.attempt) == ("job-run", 3)
    event = decode_event(message.data)
    assert isinstance(event, FailedEventV1), event
    assert event.job_id == "job-run"
    return event


@pytest.mark.parametrize(
    ("memory", "budget"),
    [(WorkerMemory(limit_mb=512), {"budget_mb": 512}), (WorkerMemory(), {})],
)
def test_a_typed_oom_carries_the_worker_budget_when_it_has_one(
    tmp_path: Path, memory: WorkerMemory, budget: dict[str, int]
) -> None:
    order, ctx = _order_and_ctx(tmp_path)
    exc = ModelTrainerError(_C.TRAINING_OOM, "too big", stage="train", details={"step": 2})
    event = _failed(_run(ctx, order, memory, _raising(exc)))
    assert (event.code, event.message, event.stage) == (_C.TRAINING_OOM, "too big", "train")
    assert event.details == {"step": 2, **budget}


def test_a_typed_failure_other_than_oom_keeps_its_details(tmp_path: Path) -> None:
    order, ctx = _order_and_ctx(tmp_path)
    exc = ModelTrainerError(_C.TRAINING_CANCELLED, "cancelled", stage="train")
    event = _failed(_run(ctx, order, WorkerMemory(limit_mb=512), _raising(exc)))
    assert (event.code, event.details) == (_C.TRAINING_CANCELLED, {})


@pytest.mark.parametrize(
    "exc", [Preempted(5), Superseded(7, by=4)], ids=["preempted", "superseded"]
)
def test_a_stopped_run_is_reported_preempted_at_its_step(tmp_path: Path, exc: Preempted) -> None:
    order, ctx = _order_and_ctx(tmp_path)
    message = _run(ctx, order, WorkerMemory(), _raising(exc))
    assert message == JobPreempted("job-run", 3, exc.step)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device", "/data/ckpt.pt"),
        # torch.save into a full disk: a RuntimeError whose cause is the OSError.
        RuntimeError("unexpected pos"),
    ],
    ids=["enospc", "chained"],
)
def test_a_full_disk_outside_the_stages_is_disk_full(tmp_path: Path, exc: Exception) -> None:
    if isinstance(exc, RuntimeError):
        exc.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/ckpt.pt")
    order, ctx = _order_and_ctx(tmp_path)
    event = _failed(_run(ctx, order, WorkerMemory(limit_mb=512), _raising(exc)))
    assert (event.code, event.stage, event.retryable) == (_C.DISK_FULL, "train", True)
    assert event.details == {"path": "/data/ckpt.pt"}


@pytest.mark.parametrize(
    ("memory", "details"),
    [(WorkerMemory(limit_mb=256), {"budget_mb": 256}), (WorkerMemory(), {})],
)
def test_host_memory_running_out_is_training_oom(
    tmp_path: Path, memory: WorkerMemory, details: dict[str, int]
) -> None:
    order, ctx = _order_and_ctx(tmp_path)
    event = _failed(_run(ctx, order, memory, _raising(MemoryError())))
    assert (event.code, event.message, event.stage) == (
        _C.TRAINING_OOM,
        "host memory ran out",
        "train",
    )
    assert event.details == details


def test_anything_else_is_an_internal_error_with_its_traceback(tmp_path: Path) -> None:
    order, ctx = _order_and_ctx(tmp_path)
    event = _failed(_run(ctx, order, WorkerMemory(), _raising(RuntimeError("boom"))))
    assert (event.code, event.message, event.stage) == (
        _C.INTERNAL_ERROR,
        "RuntimeError: boom",
        "train",
    )
    trace = event.details["traceback"]
    assert isinstance(trace, str)
    assert "Traceback" in trace
    assert "RuntimeError: boom" in trace
    assert list(event.details) == ["traceback"]


def test_the_ranks_outcome_is_the_message(tmp_path: Path) -> None:
    order, ctx = _order_and_ctx(tmp_path)
    outcome = JobPreempted("job-run", 3, 9)
    assert _run(ctx, order, WorkerMemory(), lambda: outcome) is outcome
