"""Runs are fenced by attempt: a run that a later attempt took over writes nothing more, and
a new attempt resumes only from what the attempts below it left, never from a stale run."""

from __future__ import annotations

import pytest
from model_trainer.core.layout import CHECKPOINTS, MANIFEST, STAGING
from model_trainer.engine import Preempted, StopReason, run_job
from model_trainer.engine.checkpoint import Fence
from model_trainer.engine.context import Superseded
from model_trainer_contracts import ConfigEventV1, ProgressEventV1

from tests.engine.engine_helpers import Env, Event, checkpoint_step, losses


def test_a_superseded_run_writes_no_checkpoint(env: Env) -> None:
    job = env.job(job_id="z", training={"max_steps": 12, "checkpoint_every": 4})
    first: list[Event] = []
    with pytest.raises(Preempted):
        run_job(env.ctx(job, first, stop_at_step=4, reason=StopReason.SHUTDOWN))
    root = env.artifacts_root / "z" / CHECKPOINTS
    assert checkpoint_step(env.artifacts_root / "z") == 4

    # The zombie: attempt 1 goes on (its service paused); attempt 2 claims the job at step 6.
    zombie = env.ctx(job, [], attempt=1)
    zombie.checkpoint_every = 4
    emit = zombie.emit

    def emit_and_take_over(event: ConfigEventV1 | ProgressEventV1) -> None:
        emit(event)
        if isinstance(event, ProgressEventV1) and event.step == 6:
            Fence(root, 2).claim()

    zombie.emit = emit_and_take_over
    before = (root / "attempt-1" / "checkpoint.pt").stat().st_mtime_ns
    with pytest.raises(Superseded) as superseded:
        run_job(zombie)
    assert (superseded.value.step, superseded.value.by) == (8, 2)  # its next checkpoint
    assert (root / "attempt-1" / "checkpoint.pt").stat().st_mtime_ns == before
    assert sorted(p.name for p in root.iterdir()) == ["attempt-1", "attempt-2"]

    # Attempt 2 resumes from what attempt 1 had written before the claim: step 4.
    second: list[Event] = []
    run_job(env.ctx(job, second, attempt=2))
    config = second[0]
    assert isinstance(config, ConfigEventV1)
    assert config.start_step == 4
    straight: list[Event] = []
    run_job(env.ctx(env.job(job_id="s", training={"max_steps": 12}), straight))
    assert losses(second) == {k: v for k, v in losses(straight).items() if k > 4}


def test_a_superseded_run_never_publishes_its_artifact(env: Env) -> None:
    job = env.job(job_id="a", training={"max_steps": 6})
    root = env.artifacts_root / "a" / CHECKPOINTS
    zombie = env.ctx(job, [], attempt=1)
    emit = zombie.emit

    def emit_and_take_over(event: ConfigEventV1 | ProgressEventV1) -> None:
        emit(event)
        if isinstance(event, ProgressEventV1) and event.step == 6:
            Fence(root, 3).claim()

    zombie.emit = emit_and_take_over
    with pytest.raises(Superseded):
        run_job(zombie)
    job_dir = env.artifacts_root / "a"
    assert not (job_dir / MANIFEST).exists()
    assert not (job_dir / "model.safetensors").exists()
    assert not (job_dir / STAGING).exists()


def test_a_stale_attempt_does_not_start(env: Env) -> None:
    job = env.job(job_id="late")
    Fence(env.artifacts_root / "late" / CHECKPOINTS, 5).claim()
    with pytest.raises(Superseded) as superseded:
        run_job(env.ctx(job, [], attempt=4))
    assert superseded.value.by == 5


def test_resume_from_the_highest_earlier_attempt_with_a_checkpoint(env: Env) -> None:
    job = env.job(job_id="chain", training={"max_steps": 10})
    for attempt, step in ((1, 2), (2, 4)):
        with pytest.raises(Preempted):
            run_job(
                env.ctx(job, [], stop_at_step=step, reason=StopReason.SHUTDOWN, attempt=attempt)
            )
    root = env.artifacts_root / "chain" / CHECKPOINTS
    Fence(root, 3).claim()  # attempt 3 claimed the job and died before its first checkpoint
    (root / "attempt-3" / "checkpoint.pt").unlink()
    (root / "attempt-3" / "checkpoint.pt.sha256").unlink()
    (root / "attempt-3" / "checkpoint.prev.pt").unlink()
    (root / "attempt-3" / "checkpoint.prev.pt.sha256").unlink()
    events: list[Event] = []
    run_job(env.ctx(job, events, attempt=4))
    config = events[0]
    assert isinstance(config, ConfigEventV1)
    assert config.start_step == 4
    # the earlier attempts' files were never written to by the later ones
    assert checkpoint_step(env.artifacts_root / "chain") == 10
    assert [p.name for p in sorted(root.iterdir())] == [
        "attempt-1",
        "attempt-2",
        "attempt-3",
        "attempt-4",
    ]
