"""A long corpus download is told in the job's events: ``trainer.metrics.download.v1``, bytes
done of total, spaced out by the worker, the last saying it is done, all before the config
event; the book publishes them in the job's sequence."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_trainer.core import storage
from model_trainer.engine import run_job
from model_trainer.pool.protocol import JobEvent
from model_trainer_contracts import (
    ConfigEventV1,
    DownloadEventV1,
    ProgressEventV1,
    decode_event_tolerant,
    encode,
)

from tests.engine.engine_helpers import Env, make_text
from tests.runtime.book_helpers import new_book, progress, published, record, submit

BUCKET = "model-trainer"
URL = "s3://bucket/corpus/"


def test_the_meter_reports_spaced_out_counts_a_retry_once_and_says_when_done() -> None:
    now = [0.0]
    heard: list[storage.Fetching] = []
    files = [
        storage.RemoteFile("a", URL + "a", 100, "e1"),
        storage.RemoteFile("b", URL + "b", 50, "e2"),
    ]
    meter = storage.DownloadMeter(URL, files, heard.append, every_s=2.0, clock=lambda: now[0])
    meter.start_file()
    for _ in range(4):  # 40 bytes in 1.5 s: nothing said yet
        now[0] += 0.375
        meter.relative_update(10)
    assert heard == []
    meter.start_file()  # the object is fetched again after an outage: counted from zero
    for _ in range(10):
        now[0] += 0.5
        meter.relative_update(10)
    meter.file_done(100)
    meter.start_file()
    now[0] += 2.0
    meter.relative_update(50)
    meter.file_done(50)
    meter.end()
    assert [(f.bytes_done, f.files_done, f.elapsed_s, f.done) for f in heard] == [
        (10, 0, 2.0, False),
        (50, 0, 4.0, False),
        (90, 0, 6.0, False),
        (150, 1, 8.5, False),
        (150, 2, 8.5, True),
    ]
    assert {(f.url, f.bytes_total, f.files_total) for f in heard} == {(URL, 150, 2)}

    quick: list[storage.Fetching] = []
    short = storage.DownloadMeter(URL, files, quick.append, every_s=2.0, clock=lambda: 0.0)
    short.relative_update(150)
    short.end()
    assert quick == []  # a download that ends before the first report says nothing


@pytest.mark.s3
def test_a_long_corpus_download_is_told_in_the_jobs_events(
    s3: storage.ObjectStore, env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~2 MB in two objects; every chunk s3fs streams (64 KiB) is reported, as a slow
    # download's would be every few seconds.
    monkeypatch.setattr(storage, "PROGRESS_EVERY_S", 0.0)
    base = f"s3://{BUCKET}/{tmp_path.name}/books"
    texts = {"a.txt": make_text(1_200_000, seed=1), "b.txt": make_text(800_000, seed=2)}
    for name, text in texts.items():
        s3.pipe_file(f"{base}/{name}", text.encode())
    total = sum(len(t.encode()) for t in texts.values())
    job = env.job(data={"corpus_path": base}, training={"max_steps": 2})
    said: list[ConfigEventV1 | ProgressEventV1 | DownloadEventV1] = []
    ctx = env.ctx(job, [])
    ctx.emit = said.append
    ctx.emit_download = said.append
    run_job(ctx)
    downloads = [e for e in said if isinstance(e, DownloadEventV1)]
    assert len(downloads) > 10
    assert isinstance(said[len(downloads)], ConfigEventV1)  # all of them before the config
    done = [e.bytes_done for e in downloads]
    assert done == sorted(done)
    assert [e.done for e in downloads] == [False] * (len(downloads) - 1) + [True]
    last = downloads[-1]
    assert (last.url, last.bytes_done, last.bytes_total) == (base, total, total)
    assert (last.files_done, last.files_total) == (2, 2)
    assert {e.job_id for e in downloads} == {job.job_id}

    # Fetched once: the same corpus again is read from the download cache, silently.
    again: list[DownloadEventV1] = []
    second = env.ctx(job.model_copy(update={"job_id": "job-2"}), [])
    second.emit_download = again.append
    run_job(second)
    assert again == []


def test_the_book_publishes_a_workers_download_events_in_the_jobs_sequence() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    fetching = DownloadEventV1(
        job_id="a",
        user_id=7,
        seq=0,
        url=URL,
        bytes_done=40,
        bytes_total=100,
        files_done=0,
        files_total=1,
        elapsed_s=2.0,
    )
    out = book.report(JobEvent("a", 1, encode(fetching)), now=1)
    out += book.report(
        JobEvent("a", 1, encode(fetching.model_copy(update={"done": True}))), now=1.01
    )
    out += book.report(JobEvent("a", 1, encode(progress("a", 1))), now=1.02)
    shown = published(out)
    assert [(e.seq, e.type) for e in shown] == [
        (1, "trainer.metrics.download.v1"),
        (2, "trainer.metrics.download.v1"),
        (3, "trainer.metrics.progress.v1"),
    ]
    first = shown[0]
    assert isinstance(first, DownloadEventV1)
    assert first.bytes_done == fetching.bytes_done
    # A reader built before the event existed skips it, as it skips any newer type.
    old = encode(first).replace(b"trainer.metrics.download.v1", b"trainer.metrics.download.v9")
    assert decode_event_tolerant(old) is None
