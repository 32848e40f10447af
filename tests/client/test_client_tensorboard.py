"""``export tensorboard``: events from the real broker in, TensorBoard event files out, read
back with TensorBoard's own reader."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from model_trainer_client.cli import app
from model_trainer_contracts import CompletedEventV1, EventBase, ProgressEventV1
from typer.testing import CliRunner

from .stream import Job, Publisher, Topics

if TYPE_CHECKING:
    # Imported where it reads: every test here needs a broker, and tensorboard (with the
    # boto3 and protobuf it pulls in) cost `make test-fast`, which deselects them, a second.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.kafka


def _jobs() -> tuple[list[EventBase], dict[str, list[ProgressEventV1]]]:
    """A completed job, a failed one, and one whose second attempt resumed from step 4."""
    done = Job("tb-done")
    failed = Job("tb-failed")
    resumed = Job("tb-resumed", total_steps=8)
    events: list[EventBase] = [*done.run(steps=6)]
    events += [failed.queued(), failed.config(), failed.progress(2), failed.failed()]
    events.append(resumed.config())
    first = [resumed.progress(step) for step in (2, 4, 6)]
    events += first
    resumed.attempt = 2
    events.append(resumed.config(start_step=4))
    second = [resumed.progress(step) for step in (6, 8)]
    second = [p.model_copy(update={"train_loss": p.train_loss - 1.0}) for p in second]
    events += [*second, resumed.completed()]
    kept = {
        "tb-done": [e for e in events if isinstance(e, ProgressEventV1) and e.job_id == "tb-done"],
        "tb-failed": [
            e for e in events if isinstance(e, ProgressEventV1) and e.job_id == "tb-failed"
        ],
        "tb-resumed": [*first[:2], *second],  # step 6 of the first attempt is replaced
    }
    return events, kept


async def _publish(topics: Topics, events: list[EventBase]) -> None:
    await topics.create(partitions=2)
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, events)


def _read(run: Path) -> EventAccumulator:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_export_writes_one_run_per_job_that_tensorboard_reads_back(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(kafka_bootstrap)
    events, progress = _jobs()
    asyncio.run(_publish(topics, events))
    logdir = tmp_path / "tb"
    done = CliRunner().invoke(
        app, ["export", "tensorboard", "--logdir", str(logdir)], env=topics.env()
    )
    assert done.exit_code == 0, done.output
    assert "exported 3 jobs" in done.stderr
    assert sorted(p.name for p in logdir.iterdir()) == ["tb-done", "tb-failed", "tb-resumed"]

    for job_id, expected in progress.items():
        run = _read(logdir / job_id)
        scalars = run.Tags()["scalars"]
        for tag in ("loss/train", "ppl/train", "optim/lr", "optim/grad_norm"):
            assert tag in scalars, (job_id, tag)
        read = {tag: run.Scalars(tag) for tag in ("loss/train", "throughput/tokens_per_sec")}
        assert [s.step for s in read["loss/train"]] == [e.step for e in expected], job_id
        for got, want in zip(read["loss/train"], expected, strict=True):
            assert got.value == pytest.approx(want.train_loss, rel=1e-6)
            assert got.wall_time == pytest.approx(want.ts.timestamp())
        assert [s.value for s in read["throughput/tokens_per_sec"]] == pytest.approx(
            [e.tokens_per_sec for e in expected]
        )
        config = run.Tensors("config/text_summary")
        assert b"gpt2" in config[0].tensor_proto.string_val[0]

    done_run = _read(logdir / "tb-done")
    val = done_run.Scalars("loss/val")
    assert [(s.step, round(s.value, 5)) for s in val] == [(4, 3.3)]
    completed = next(e for e in events if isinstance(e, CompletedEventV1))
    assert done_run.Scalars("loss/test")[0].value == pytest.approx(completed.test_loss)
    failed_run = _read(logdir / "tb-failed")
    error = failed_run.Tensors("error/text_summary")[0].tensor_proto.string_val[0]
    assert error.startswith(b"CORPUS_NOT_FOUND at prepare")


def test_a_second_export_into_the_same_folder_gives_each_series_once_with_hparams(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(kafka_bootstrap)
    job = Job("tb-twice")
    asyncio.run(_publish(topics, list(job.run(steps=6))))
    logdir = tmp_path / "tb"
    for _ in range(2):
        done = CliRunner().invoke(
            app, ["export", "tensorboard", "--logdir", str(logdir)], env=topics.env()
        )
        assert done.exit_code == 0, done.output
    run = _read(logdir / "tb-twice")
    assert [s.step for s in run.Scalars("loss/train")] == [2, 4, 6]
    assert len(run.Tensors("config/text_summary")) == 1
    hparams = run.PluginTagToContent("hparams")
    assert sorted(hparams) == [
        "_hparams_/experiment",
        "_hparams_/session_end_info",
        "_hparams_/session_start_info",
    ]
    assert b"learning_rate" in hparams["_hparams_/session_start_info"]
    assert b"loss/val" in hparams["_hparams_/experiment"]


def test_export_of_a_missing_topic_says_so(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(kafka_bootstrap)
    env = {**topics.env(), "MODEL_TRAINER_EVENTS_TOPIC": f"absent-{datetime.now(UTC):%H%M%S%f}"}
    done = CliRunner().invoke(app, ["export", "tensorboard", "--logdir", str(tmp_path)], env=env)
    assert done.exit_code == 0, done.output
    assert "nothing done" in done.stderr
