"""What the sweep of the artifacts root deletes, decided without a file system (and which jobs
count as ended): the pure planner of ``core/sweep.py`` and the book's side of it."""

from __future__ import annotations

from pathlib import PurePosixPath

from model_trainer.book.effects import Publish
from model_trainer.core.sweep import (
    TEMP_AGE_S,
    Doomed,
    Found,
    Kind,
    Retention,
    ended_jobs,
    plan,
)
from model_trainer_contracts import JobStateV1, JobStatus

from .book_helpers import cancel, completed, is_terminal, new_book, record, submit, user_failure

NOW = 1_000_000.0
DAY = 24 * 3600.0
RETENTION = Retention(token_cache_s=7 * DAY)


def file(path: str, age_s: float = 0.0, size: int = 10) -> Found:
    return Found(PurePosixPath(path), folder=False, mtime=NOW - age_s, size=size)


def folder(path: str, age_s: float = 0.0, size: int = 100) -> Found:
    return Found(PurePosixPath(path), folder=True, mtime=NOW - age_s, size=size)


def doomed(kind: Kind, *paths: str, size: int) -> Doomed:
    return Doomed(kind, tuple(PurePosixPath(p) for p in paths), size)


def test_only_ended_jobs_lose_their_checkpoints_however_fresh() -> None:
    found = [
        folder("done/checkpoints", age_s=0, size=500),
        file("done/checkpoints/checkpoint.pt", size=400),
        file("done/manifest.json"),
        folder("running/checkpoints", age_s=30 * DAY),
        file("running/checkpoints/checkpoint.pt"),
        folder("done/eval", size=7),  # another folder of an ended job: its artifact
    ]
    assert plan(found, {"done"}, NOW, RETENTION) == [
        doomed(Kind.CHECKPOINTS, "done/checkpoints", size=500)
    ]
    assert plan(found, set(), NOW, RETENTION) == []


def test_temp_files_and_staging_folders_go_once_untouched_for_an_hour() -> None:
    found = [
        file("a/.manifest.json.123.tmp", age_s=TEMP_AGE_S, size=3),
        file("a/checkpoints/.checkpoint.pt.9.tmp", age_s=TEMP_AGE_S + 1, size=4),
        file(".token-cache/.abc.npy.77.tmp", age_s=2 * TEMP_AGE_S, size=5),
        folder("b/.staging", age_s=TEMP_AGE_S, size=6),
        file("b/.staging/model.safetensors", age_s=TEMP_AGE_S),
        # a live writer's: changed within the hour
        file("c/.manifest.json.5.tmp", age_s=TEMP_AGE_S - 1),
        folder("c/.staging", age_s=60),
        # not temp files: the pattern is ".<name>.<pid>.tmp"
        file("d/notes.tmp", age_s=DAY),
        file("d/.hidden", age_s=DAY),
        file("d/.x.pid.tmp", age_s=DAY),
        folder("a/checkpoints", age_s=TEMP_AGE_S),
    ]
    assert plan(found, set(), NOW, RETENTION) == [
        doomed(Kind.TEMP, "b/.staging", size=6),
        doomed(Kind.TEMP, ".token-cache/.abc.npy.77.tmp", size=5),
        doomed(Kind.TEMP, "a/.manifest.json.123.tmp", size=3),
        doomed(Kind.TEMP, "a/checkpoints/.checkpoint.pt.9.tmp", size=4),
    ]


def test_a_temp_file_in_an_ended_jobs_checkpoints_goes_with_its_folder() -> None:
    found = [
        folder("a/checkpoints", age_s=DAY, size=9),
        file("a/checkpoints/.checkpoint.pt.9.tmp", age_s=DAY),
    ]
    assert plan(found, {"a"}, NOW, RETENTION) == [doomed(Kind.CHECKPOINTS, "a/checkpoints", size=9)]


def test_token_cache_entries_go_when_unused_for_the_retention() -> None:
    found = [
        file(".token-cache/old.npy", age_s=8 * DAY, size=1000),
        file(".token-cache/old.tokenizer.json", age_s=8 * DAY, size=20),
        # used within the retention: a hit touched one of its files
        file(".token-cache/hit.npy", age_s=8 * DAY),
        file(".token-cache/hit.tokenizer.json", age_s=6 * DAY),
        file(".token-cache/new.npy", age_s=60),
        file(".token-cache/new.tokenizer.json", age_s=60),
        # half an entry (its other file already gone) goes too
        file(".token-cache/half.tokenizer.json", age_s=7 * DAY, size=30),
    ]
    assert plan(found, {"old", "hit"}, NOW, RETENTION) == [
        doomed(Kind.TOKEN_CACHE, ".token-cache/half.tokenizer.json", size=30),
        doomed(
            Kind.TOKEN_CACHE, ".token-cache/old.npy", ".token-cache/old.tokenizer.json", size=1020
        ),
    ]
    assert plan(found, set(), NOW, Retention(token_cache_s=30 * DAY)) == []


def test_a_job_folder_named_like_a_cache_file_is_not_a_cache_entry() -> None:
    found = [file("old/old.npy", age_s=30 * DAY), file("old/tokenizer.json", age_s=30 * DAY)]
    assert plan(found, set(), NOW, RETENTION) == []


def state(job_id: str, status: JobStatus) -> JobStateV1:
    return JobStateV1(job_id=job_id, status=status, request_digest="d")


def test_ended_jobs_are_the_terminal_ones_not_busy() -> None:
    states = {
        s.job_id: s
        for s in [
            state("done", JobStatus.COMPLETED),
            state("failed", JobStatus.FAILED),
            state("dying", JobStatus.FAILED),  # cancelled: its killed run not yet reaped
            state("queued", JobStatus.QUEUED),
            state("running", JobStatus.RUNNING),
            state("refused-cancel", JobStatus.REJECTED),
        ]
    }
    assert ended_jobs(states, {"dying"}) == {"done", "failed"}


def test_every_terminal_event_releases_its_jobs_checkpoints_and_nothing_else_does() -> None:
    book = new_book(slots=2)
    out = book.command(record(submit("ok"), 0), now=0)
    out += book.command(record(submit("nan"), 1), now=0)
    out += book.command(record(submit("queued"), 2), now=0)
    out += book.command(record(cancel("queued"), 3), now=1)  # cancelled while queued
    out += book.command(record(submit("bad-size"), 4), now=1)  # refused at admission
    out += book.command(record(cancel("ghost"), 5), now=1)  # a refusal: ends no job
    out += book.ended("ok", 1, completed("ok"), now=2)
    out += book.ended("nan", 1, user_failure("nan"), now=2)
    out += book.command(record(submit("run"), 6), now=3)
    out += book.command(record(cancel("run"), 7), now=4)
    out += book.tick(now=10)  # past the grace: killed, and ended as cancelled
    releases = [e for e in out if isinstance(e, Publish) and e.ended is not None]
    for publish in releases:
        (terminal,) = [e for e in publish.events if is_terminal(e)]
        assert terminal.job_id == publish.ended
    assert [p.ended for p in releases] == ["queued", "bad-size", "ok", "nan", "run"]
    others = [e for p in out if isinstance(p, Publish) and p.ended is None for e in p.events]
    assert others
    assert not any(is_terminal(e) for e in others)  # queued events, the refusal of a cancel


def test_a_cancelled_job_whose_killed_run_is_still_dying_has_not_ended_yet() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(cancel("a"), 1), now=1)
    book.tick(now=10)  # killed: ended, but the run's death is not reported yet
    assert ended_jobs(book.states, book.jobs.keys() | book.runs.keys()) == set()
    book.died("a", 1, -9, now=11)
    assert ended_jobs(book.states, book.jobs.keys() | book.runs.keys()) == {"a"}


def test_downloaded_corpora_go_after_the_retention_partial_ones_after_an_hour() -> None:
    found = [
        folder(".downloads/old", age_s=8 * DAY, size=500),
        file(".downloads/old/corpus.txt", age_s=8 * DAY, size=500),
        folder(".downloads/used", age_s=DAY, size=400),
        file(".downloads/used/corpus.txt", age_s=DAY, size=400),
        folder(".downloads/.abc.42.partial", age_s=TEMP_AGE_S, size=30),
        file(".downloads/.abc.42.partial/corpus.txt", age_s=TEMP_AGE_S, size=30),
        folder(".downloads/.def.43.partial", age_s=60, size=7),
    ]
    assert plan(found, set(), NOW, RETENTION) == [
        doomed(Kind.TEMP, ".downloads/.abc.42.partial", size=30),
        doomed(Kind.TOKEN_CACHE, ".downloads/old", size=500),
    ]
