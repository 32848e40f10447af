"""One job on two processes (gloo, CPU) against the same job on one, in process (no broker).

The two-process runs go through the worker's own launcher (:func:`model_trainer.pool.ranks.launch`):
ranks forked from the forkserver, a local rendezvous, rank 0's events on the pipe. The first
run of a test session starts the forkserver (it imports torch and transformers once: tens of
seconds on a loaded machine), hence ``slow``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psutil
import pytest
from model_trainer.core.layout import CHECKPOINTS
from model_trainer.core.stop import StopReason
from model_trainer.engine import run_job
from model_trainer.engine.checkpoint import FILE, SHARDED
from model_trainer.pool.protocol import (
    JobEnded,
    JobEvent,
    RunOrder,
    StopFlag,
    WorkerDied,
    WorkerMessage,
)
from model_trainer.pool.standalone import launch_here, stop_flag
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    decode_event,
    encode,
)
from safetensors.torch import load_file

from tests.engine.engine_helpers import Env, Event, checkpoint_step, losses
from tests.figures import Figure

pytestmark = pytest.mark.slow
LOSS_TOLERANCE = 1e-5  # relative, per step: only the order of float sums differs
WEIGHT_TOLERANCE = 1e-5  # absolute, per weight, after the run's AdamW steps
RESUME_TOLERANCE = 1e-4  # absolute, per weight, after 40 steps, resumed at another world size


def _ranks() -> list[psutil.Process]:
    """This test process's rank processes (the forkserver's children)."""
    servers = [
        p for p in psutil.Process().children() if any("forkserver" in part for part in p.cmdline())
    ]
    return [child for server in servers for child in server.children()]


def _two(
    env: Env,
    job: SubmitJobV1,
    strategy: str,
    on_progress: Callable[[ProgressEventV1, StopFlag], None] | None = None,
    attempt: int = 1,
) -> tuple[list[Event], WorkerMessage]:
    """Run ``job`` (of two processes) as a worker does: rank 0's events, and the outcome.
    ``on_progress`` sees each progress event, with the run's stop flag."""
    flag = stop_flag()
    events: list[Event] = []

    def read(message: object) -> None:
        assert isinstance(message, JobEvent)
        event = decode_event(message.data)
        assert isinstance(event, ConfigEventV1 | ProgressEventV1)
        events.append(event)
        if on_progress is not None and isinstance(event, ProgressEventV1):
            on_progress(event, flag)

    order = RunOrder(
        encode(job), attempt, "test", env.data_root, env.artifacts_root, 1000, 1 << 30, None
    )
    return events, launch_here(order, strategy, read, flag)


def _jobs(env: Env, backend: str, strategy: str) -> tuple[SubmitJobV1, SubmitJobV1]:
    one = env.job(
        backend, job_id="one", training={"batch_size": 4, "max_steps": 4, "eval_every": 2}
    )
    resources = one.resources.model_copy(update={"processes": 2, "strategy": strategy})
    return one, one.model_copy(update={"job_id": "two", "resources": resources})


@pytest.mark.parametrize(
    ("backend", "strategy"),
    [("llama", "ddp"), ("llama", "fsdp"), ("gpt2", "ddp"), ("gpt2", "fsdp")],
)
def test_two_processes_train_as_one_on_the_same_global_batch(
    env: Env, backend: str, strategy: str
) -> None:
    one, two = _jobs(env, backend, strategy)
    single: list[Event] = []
    run_job(env.ctx(one, single))
    events, outcome = _two(env, two, strategy)
    assert isinstance(outcome, JobEnded)
    completed = decode_event(outcome.data)
    assert isinstance(completed, CompletedEventV1), completed
    assert completed.steps == 4
    curve_one, curve_two = losses(single), losses(events)
    assert list(curve_two) == list(curve_one) == [1, 2, 3, 4]
    for step, loss in curve_one.items():
        assert curve_two[step] == pytest.approx(loss, rel=LOSS_TOLERANCE)
    val_one = [e.val_loss for e in single if isinstance(e, ProgressEventV1) and e.val_loss]
    val_two = [e.val_loss for e in events if isinstance(e, ProgressEventV1) and e.val_loss]
    assert val_two == pytest.approx(val_one, rel=LOSS_TOLERANCE)
    weights_one = load_file(env.artifacts_root / "one" / "model.safetensors")
    weights_two = load_file(env.artifacts_root / "two" / "model.safetensors")
    assert sorted(weights_two) == sorted(weights_one)
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    assert worst < WEIGHT_TOLERANCE
    assert _ranks() == []  # every rank has ended


def test_a_cancelled_two_process_run_resumes_on_one_process_then_on_two(
    env: Env, figure: Figure
) -> None:
    """Cancel (every rank ends within 5 s, none is left): each rank has written its shards
    (DCP). Attempt 2 resumes them on one process (resharded) and is cancelled in turn; attempt
    3 resumes its single-process file on two again; each starts exactly at the next step, and
    the run ends where an uninterrupted 1-process run ends."""
    one, two = _jobs(env, "llama", "fsdp")
    longer = {"max_steps": 40, "eval_every": 20}
    one = one.model_copy(update={"training": one.training.model_copy(update=longer)})
    two = two.model_copy(update={"training": one.training})
    asked: list[float] = []

    def cancel_at_step_2(event: ProgressEventV1, flag: StopFlag) -> None:
        if event.step == 2:
            asked.append(time.monotonic())
            flag.value = int(StopReason.CANCEL)

    _, outcome = _two(env, two, "fsdp", cancel_at_step_2)
    ended = time.monotonic()
    assert isinstance(outcome, JobEnded)
    failed = decode_event(outcome.data)
    assert isinstance(failed, FailedEventV1)
    assert failed.code is ModelTrainerErrorCode.TRAINING_CANCELLED
    figure(f"2-process cancel in process: every rank ended {ended - asked[0]:.2f} s after it")
    assert ended - asked[0] < 5.0  # every rank checkpointed and ended within 5 s
    assert _ranks() == []
    first = env.artifacts_root / "two" / CHECKPOINTS / "attempt-1"
    shards = sorted(f.name for f in (first / SHARDED).glob("*.distcp"))
    assert [name[:3] for name in shards] == ["__0", "__1"]  # each rank wrote its own
    assert not (first / FILE).exists()
    stopped_at = checkpoint_step(env.artifacts_root / "two")
    assert 2 <= stopped_at < 40
    resumed: list[Event] = []
    alone = two.model_copy(update={"resources": one.resources})  # the same job, 1 process
    with pytest.raises(ModelTrainerError) as cancelled:
        run_job(env.ctx(alone, resumed, attempt=2, stop_at_step=stopped_at + 5))
    assert cancelled.value.code is ModelTrainerErrorCode.TRAINING_CANCELLED
    assert min(losses(resumed)) == stopped_at + 1  # exact step: the next one
    again_at = checkpoint_step(env.artifacts_root / "two")
    assert stopped_at + 5 <= again_at < 40
    events, outcome = _two(env, two, "fsdp", attempt=3)
    assert isinstance(outcome, JobEnded)
    assert isinstance(decode_event(outcome.data), CompletedEventV1)
    assert min(losses(events)) == again_at + 1
    run_job(env.ctx(one, []))
    weights_one = load_file(env.artifacts_root / "one" / "model.safetensors")
    weights_two = load_file(env.artifacts_root / "two" / "model.safetensors")
    worst = max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one)
    figure(f"DCP resume 2 -> 1 -> 2 processes vs 1 uninterrupted: max |dw| {worst:.2e}")
    assert worst < RESUME_TOLERANCE


def test_a_rank_killed_mid_run_ends_the_run_as_a_dead_worker(env: Env) -> None:
    _, two = _jobs(env, "gpt2", "ddp")
    two = two.model_copy(update={"training": two.training.model_copy(update={"max_steps": 400})})
    killed: list[int] = []

    def kill_one(event: ProgressEventV1, _: StopFlag) -> None:
        if not killed and event.step >= 2:
            victim = _ranks()[-1]
            killed.append(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)

    _, outcome = _two(env, two, "ddp", kill_one)
    assert isinstance(outcome, WorkerDied)  # retried from the checkpoint by the job book
    assert outcome.exitcode == -signal.SIGKILL
    assert _ranks() == []
