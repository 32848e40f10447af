"""A full disk mid-run, on a real filesystem that fills: a small tmpfs mounted as the
artifacts root (root in a container may mount one; elsewhere these tests skip, saying why).

The checkpoint that meets ENOSPC fails the run with DISK_FULL (retryable), the last good
checkpoint and the one before it stay as they were, no temp file is left behind, and once
space returns the next attempt resumes from the last good checkpoint and finishes exactly as
an uninterrupted run does."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_trainer.core.layout import CHECKPOINTS
from model_trainer.engine import run_job
from model_trainer.engine.checkpoint import DIGEST, FILE, PREVIOUS
from model_trainer.engine.files import sha256_file
from model_trainer_contracts import (
    ConfigEventV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
)

from tests.engine.engine_helpers import Env, Event, losses, step_of
from tests.small_disk import fill, mounted_tmpfs

SMALL_DISK_MB = 32


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SMALL_DISK_MB mounted under tmp_path, unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    with mounted_tmpfs(mount, SMALL_DISK_MB):
        yield mount


def test_enospc_mid_checkpoint_keeps_the_last_good_one_and_resumes_from_it(
    env: Env, small_disk: Path
) -> None:
    training = {"max_steps": 8, "eval_every": 4}
    straight: list[Event] = []
    run_job(env.ctx(env.job(job_id="whole", training=training), straight))

    env.artifacts_root = small_disk / "artifacts"
    job = env.job(job_id="full", training=training)
    first: list[Event] = []
    ctx = env.ctx(job, first)
    filled: list[Path] = []

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        ctx.emit(event)
        if isinstance(event, ProgressEventV1) and event.step == 5 and not filled:
            filled.append(fill(small_disk))  # checkpoints of steps 2 and 4 are written

    with pytest.raises(ModelTrainerError) as err:
        run_job(dataclasses.replace(ctx, emit=emit, checkpoint_every=2))
    assert (err.value.code, err.value.retryable, err.value.stage) == (
        ModelTrainerErrorCode.DISK_FULL,
        True,
        "train",
    )
    folder = env.artifacts_root / "full" / CHECKPOINTS / "attempt-1"
    names = [FILE, FILE + DIGEST, PREVIOUS, PREVIOUS + DIGEST]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temp file left
    assert [step_of(folder / FILE), step_of(folder / PREVIOUS)] == [4, 2]
    for name in (FILE, PREVIOUS):
        assert (folder / (name + DIGEST)).read_text() == sha256_file(folder / name)

    filled[0].unlink()  # space returns
    second: list[Event] = []
    done = run_job(dataclasses.replace(env.ctx(job, second, attempt=2), checkpoint_every=2))
    config = second[0]
    assert isinstance(config, ConfigEventV1)
    assert (config.start_step, done.steps) == (4, 8)
    assert losses(first) == {
        k: v for k, v in losses(straight).items() if k <= 6
    }  # step 6's checkpoint failed
    assert losses(second) == {k: v for k, v in losses(straight).items() if k > 4}
