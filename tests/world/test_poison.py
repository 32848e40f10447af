"""Poison commands through the real :class:`TrainerService`: one whose admission hangs is
refused ADMISSION_TIMEOUT, and one the instance died on is refused COMMAND_CRASHED by the next
start, once; in both stories the next job still completes. What a test checks is what a client
reads: each job's committed events.

Admission hangs the way a hung network mount does: the job's tokenizer names an artifact whose
manifest is a FIFO with no writer, and admission's ``open()`` of it blocks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
from model_trainer_contracts import (
    CompletedEventV1,
    EventBase,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
)

from .stage import Instance, Stage, until
from .test_shell import all_ended, ended, job

_C = ModelTrainerErrorCode


def tokenized_by(job_id: str, artifact: str) -> SubmitJobV1:
    """A job whose tokenizer is the artifact ``artifact``'s (admission reads its files)."""
    spec = job(job_id, steps=4).model_dump(mode="json")
    return SubmitJobV1.model_validate({**spec, "tokenizer": {"kind": "job", "job_id": artifact}})


def stuck(job_id: str) -> SubmitJobV1:
    """A job whose admission blocks on the FIFO (see :func:`fifo_artifact`)."""
    return tokenized_by(job_id, "fifo-tok")


async def answered(stage: Stage, *jobs: SubmitJobV1, **settings: float) -> None:
    """Instance ``a`` (with these settings) runs until every job has its terminal event."""
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a", **settings)
        tasks.start_soon(a.run)
        await a.service.started.wait()
        await stage.submit(*jobs)
        await until(lambda: all_ended(stage, list(jobs)), 60, "every job is answered")
        await a.stop()


@contextlib.contextmanager
def fifo_artifact(artifacts_root: Path) -> Iterator[Path]:
    """The artifact ``fifo-tok`` under an instance's artifacts root, its manifest a FIFO;
    afterwards a writer comes and goes, so the admission threads it holds return."""
    folder = artifacts_root / "fifo-tok"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{}")
    fifo = folder / "manifest.json"
    os.mkfifo(fifo)
    try:
        yield fifo
    finally:
        with contextlib.suppress(OSError):  # ENXIO: no reader is blocked on it any more
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def refused(events: list[EventBase], code: ModelTrainerErrorCode) -> FailedEventV1:
    """The job's one event: its refusal with ``code``, seq 0."""
    assert [(e.seq, type(e)) for e in events] == [(0, FailedEventV1)], events
    failed = events[0]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is code, failed
    return failed


def completed(events: list[EventBase]) -> None:
    """Exactly one terminal event, last, a completion; seqs 0..n-1."""
    assert [e.seq for e in events] == list(range(len(events))), events
    terminal = [e for e in events if isinstance(e, CompletedEventV1 | FailedEventV1)]
    assert len(terminal) == 1, terminal
    assert isinstance(events[-1], CompletedEventV1), events[-1]


async def test_an_admission_that_hangs_is_refused_and_the_next_job_runs(stage: Stage) -> None:
    settings = stage.settings("a")
    with fifo_artifact(settings.artifacts_root):
        await answered(stage, stuck("hangs"), job("after-hang", steps=6), admission_timeout_s=0.5)
    failed = refused(await stage.events("hangs"), _C.ADMISSION_TIMEOUT)
    assert failed.details == {"admission_timeout_s": 0.5}
    completed(await stage.events("after-hang"))


async def test_a_command_the_instance_died_on_is_refused_once_then_the_next_runs(
    stage: Stage,
) -> None:
    settings = stage.settings("a")
    handling = settings.artifacts_root / ".handling" / settings.group_id
    with fifo_artifact(settings.artifacts_root):
        async with anyio.create_task_group() as tasks:
            first = Instance(stage, "a", admission_timeout_s=300)
            tasks.start_soon(first.run)
            await first.service.started.wait()
            await stage.submit(stuck("died-on"))
            await until(lambda: _marked(handling), 60, "the command is being handled")
            await first.crash()  # mid-command: its marker stays behind
            [marker] = handling.iterdir()
            # The same host's next start (same artifacts root) reads the marker; were the
            # command admitted again it would hang and be refused ADMISSION_TIMEOUT instead.
            second = Instance(stage, "a", admission_timeout_s=2)
            tasks.start_soon(second.run)
            await second.service.started.wait()
            assert not marker.exists()
            await stage.submit(job("after-crash", steps=6))
            await until(lambda: ended(stage, "after-crash"), 90, "the next job ends")
            await until(lambda: _lettered(stage), 30, "the command is dead-lettered")
            await second.stop()
    # A refused command is dead-lettered, unhandled: the job it carried says nothing.
    assert await stage.events("died-on") == []
    letters = await dead_letters(stage)
    assert [letter["error_code"] for letter in letters] == [_C.COMMAND_CRASHED], letters
    assert "died while handling this command (offset 0)" in letters[0]["error_message"]
    completed(await stage.events("after-crash"))
    assert list(handling.iterdir()) == []  # handled to the end: no marker left


async def _marked(folder: Path) -> bool:
    return bool(await anyio.Path(folder).is_dir() and os.listdir(folder))


async def _lettered(stage: Stage) -> bool:
    return bool(await dead_letters(stage))


async def dead_letters(stage: Stage) -> list[dict[str, str]]:
    """The committed dead letters' headers, as a client reads them."""
    letters = await stage.records(stage.settings("a").dead_letter_topic)
    return [{k: v.decode() for k, v in record.headers} for record in letters]


async def test_an_admission_that_raises_anything_is_refused_typed_and_the_next_job_runs(
    stage: Stage,
) -> None:
    """A manifest nested past the parser's recursion limit: reading its owner raises
    RecursionError, which no admission check expects."""
    settings = stage.settings("a")
    folder = settings.artifacts_root / "deep-tok"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "manifest.json").write_text("[" * 100_000)
    await answered(stage, tokenized_by("nested", "deep-tok"), job("after-raise", steps=6))
    failed = refused(await stage.events("nested"), _C.INTERNAL_ERROR)
    assert failed.details == {"exception": "RecursionError"}
    assert failed.message.startswith("the job could not be checked: RecursionError"), failed
    completed(await stage.events("after-raise"))


async def test_a_typed_refusal_from_admission_keeps_its_code(stage: Stage) -> None:
    """The artifact the tokenizer names has no tokenizer file."""
    (stage.settings("a").artifacts_root / "no-tok").mkdir(parents=True)
    await answered(stage, tokenized_by("untokenized", "no-tok"))
    failed = refused(await stage.events("untokenized"), _C.TOKENIZER_NOT_FOUND)
    assert failed.details == {"job_id": "no-tok"}
