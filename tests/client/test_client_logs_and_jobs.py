"""``logs`` lines as printed, and ``jobs``' duration filter and its columns from events."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from model_trainer_client.board import JobBoard, JobView
from model_trainer_client.durations import parse_duration
from model_trainer_client.joblogs import decode_log_line, log_text
from model_trainer_client.render import render_jobs, run_time
from model_trainer_contracts import JobStatus, LogLineV1, encode
from rich.console import Console

from .stream import T0, Job


def test_a_log_line_prints_on_one_line_with_its_traceback_below() -> None:
    line = LogLineV1(
        job_id="j-1",
        attempt=2,
        line=7,
        ts=datetime(2030, 1, 1, 12, 0, 1, 250_000, tzinfo=UTC),
        level="info",
        message="job failed",
        fields={"code": "CORPUS_NOT_DECODABLE", "stage": "prepare"},
        exception="Traceback (most recent call last):\n  File ...\nModelTrainerError: bad\n",
        dropped=3,
    )
    decoded = decode_log_line(encode(line))
    assert decoded == line
    assert log_text(line).splitlines() == [
        "2030-01-01T12:00:01.250Z info    attempt 2 job failed code=CORPUS_NOT_DECODABLE "
        "stage=prepare (3 lines dropped before this one)",
        "Traceback (most recent call last):",
        "  File ...",
        "ModelTrainerError: bad",
    ]
    assert decode_log_line(b'{"type": "trainer.job.log.v2"}') is None
    assert decode_log_line(b"not json") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86_400), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_durations_as_people_type_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "1x", "0s", "1h 30m", "-1h"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def _views() -> list[JobView]:
    done, running, waiting = Job("done-job"), Job("running-job"), Job("waiting-job")
    board = JobBoard()
    board.apply_all(
        [
            done.config(),
            done.progress(10),
            done.completed(),
            running.config(),
            running.progress(4),
            waiting.queued(),
        ]
    )
    board.apply_all(
        [
            done.state(JobStatus.COMPLETED),
            running.state(JobStatus.RUNNING),
            waiting.state(JobStatus.QUEUED),
        ]
    )
    return [view for j in ("done-job", "running-job", "waiting-job") if (view := board.get(j))]


def _text(views: list[JobView], width: int | None, now: datetime) -> list[str]:
    console = Console(file=io.StringIO(), width=width or 400, record=True, color_system=None)
    console.print(render_jobs(views, width=width, now=now))
    return console.export_text().splitlines()


def _cells(line: str) -> list[str]:
    return [cell for cell in re.split(r"[│┃\s]+", line) if cell]


def test_jobs_shows_progress_loss_and_duration_and_a_narrow_terminal_drops_them_first() -> None:
    now = T0 + timedelta(seconds=100)
    views = _views()
    assert [run_time(view, now) for view in views] == [12.5, 100.0, None]
    wide = _text(views, None, now)
    header = _cells(wide[2])
    assert header[-3:] == ["progress", "loss", "duration"]
    rows = {_cells(line)[0]: _cells(line) for line in wide[4:7]}
    assert rows["done-job"][-3:] == ["10/10", "2.0000", "0:12"]
    assert rows["running-job"][-3:] == ["4/10", "3.2000", "1:40"]
    assert rows["waiting-job"][-3:] == ["-", "-", "-"]
    narrow = _text(views, 80, now)
    assert max(len(line) for line in narrow) <= 80
    kept = _cells(narrow[2])
    assert kept[:3] == ["job", "status", "reason"]
    assert [name for name in ("progress", "loss", "duration") if name in kept] == []
