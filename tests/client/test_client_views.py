"""Every job status and every event type through every view (status, jobs, watch, the
dashboard's rows, the follow printer, the TensorBoard export), and the CLI's output in a pipe.
No broker."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import typing
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from model_trainer.book.effects import request_digest
from model_trainer_client.board import JobBoard, JobView, ViewStatus, view_status
from model_trainer_client.cli import app, load_job, violation_text
from model_trainer_client.dashboard import Feed, snapshot
from model_trainer_client.decode import Update
from model_trainer_client.flows import FollowPrinter, board_line, select_states
from model_trainer_client.hints import spec_digest
from model_trainer_client.outage import BrokerWatch, install
from model_trainer_client.render import render_board, render_states, render_status
from model_trainer_client.settings import ClientSettings
from model_trainer_client.tb_export import TensorBoardExport
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    Event,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    ModelTrainerErrorCode,
    ProgressEventV1,
    QueuedEventV1,
    SubmitJobV1,
)
from model_trainer_contracts.examples import EXAMPLES
from rich.console import Console, RenderableType
from typer.testing import CliRunner

from .stream import T0, Job

ROOT = Path(__file__).resolve().parents[2]
EVENT_TYPES: tuple[type, ...] = typing.get_args(typing.get_args(Event)[0])
_C = ModelTrainerErrorCode


def text(renderable: RenderableType, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def pipe() -> tuple[Console, io.StringIO]:
    """A console as the CLI gets one without a terminal: 80 columns, not interactive."""
    buffer = io.StringIO()
    return Console(file=buffer, width=80, color_system=None, force_terminal=False), buffer


def followed(job_id: str, events: Sequence[Update]) -> list[str]:
    """The lines ``follow`` prints for these events of one job, without a terminal."""
    console, buffer = pipe()
    board = JobBoard()
    with FollowPrinter(console, job_id) as printer:
        for event in events:
            view = board.apply(event)
            assert view is not None
            printer.show(view, event)
    return buffer.getvalue().splitlines()


def one_of_each(job: Job, kind: type) -> Update:
    """One event of ``kind`` for ``job`` (every event type of the contracts has one)."""
    if kind is QueuedEventV1:
        return job.queued()
    if kind is ConfigEventV1:
        return job.config()
    if kind is ProgressEventV1:
        return job.progress(4, val=True)
    if kind is DownloadEventV1:
        return job.download()
    if kind is CompletedEventV1:
        return job.completed()
    if kind is FailedEventV1:
        return job.failed(_C.TRAINING_CANCELLED)
    raise AssertionError(f"a new event type: {kind}; show it in every view, then here")


class Writer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def add_scalar(self, tag: str, scalar_value: float, global_step: int, walltime: float) -> None:
        self.calls.append(tag)

    def add_text(self, tag: str, text_string: str, global_step: int, walltime: float) -> None:
        self.calls.append(tag)

    def add_hparams(self, hparams: dict[str, str | int | float | bool], metrics: list[str]) -> None:
        self.calls.append("hparams")

    def close(self) -> None:
        self.calls.append("close")


def test_the_event_types_are_the_ones_the_views_know() -> None:
    assert [kind.__name__ for kind in EVENT_TYPES] == [
        "QueuedEventV1",
        "ConfigEventV1",
        "ProgressEventV1",
        "DownloadEventV1",
        "CompletedEventV1",
        "FailedEventV1",
    ]


@pytest.mark.parametrize("status", list(JobStatus))
def test_every_status_and_every_event_type_through_every_view(
    status: JobStatus, tmp_path: Path
) -> None:
    now = T0 + timedelta(minutes=1)
    job = Job(f"v-{status}")
    code = str(_C.JOB_NOT_FOUND) if status is JobStatus.REJECTED else None
    message = "no queued or running job to cancel" if code else None
    state = job.state(status, error_code=code, error_message=message)
    board = JobBoard()
    board.apply(state)
    views: list[JobView] = []
    for kind in EVENT_TYPES:
        event = one_of_each(job, kind)
        board.apply(event)
        view = board.get(job.job_id)
        assert view is not None
        views.append(view)
        shown = view.shown
        assert shown in list(ViewStatus)
        assert str(shown) in text(render_status(view, now))
        assert job.job_id in text(render_board([view], now))
        assert board_line(view, now).startswith(f"{job.job_id} {shown}")
        row = snapshot(board)["jobs"]
        assert isinstance(row, list)
        assert row[0] == view.row()
        json.dumps(row)
        console, buffer = pipe()
        with FollowPrinter(console, job.job_id) as printer:
            printer.show(view, event)
            printer.result(view)
        assert "━" not in buffer.getvalue()  # no bar without a terminal
        exporter = TensorBoardExport(tmp_path, lambda *_: Writer())
        exporter.apply(event)
        exporter.close()
    assert job.job_id in text(render_states([state]))
    assert select_states([state], status=view_status(status, code)) == [state]


def test_each_status_is_shown_with_its_own_name_style_and_exit_code() -> None:
    cases = [
        (JobStatus.QUEUED, None, ViewStatus.QUEUED, None),
        (JobStatus.RUNNING, None, ViewStatus.RUNNING, None),
        (JobStatus.COMPLETED, None, ViewStatus.COMPLETED, 0),
        (JobStatus.FAILED, "CORPUS_NOT_FOUND", ViewStatus.FAILED, 1),
        (JobStatus.FAILED, "TRAINING_CANCELLED", ViewStatus.CANCELLED, 4),
        (JobStatus.REJECTED, "JOB_NOT_FOUND", ViewStatus.REJECTED, 5),
    ]
    found = [
        (status, code, view_status(status, code), view_status(status, code).exit_code)
        for status, code, _, _ in cases
    ]
    assert found == cases
    assert sorted({shown for _, _, shown, _ in cases}) == sorted(ViewStatus)
    js = (ROOT / "client/model_trainer_client/static/dashboard.js").read_text()
    css = (ROOT / "client/model_trainer_client/static/dashboard.css").read_text()
    listed = re.search(r"const STATUSES = \[(.*?)\];", js)
    assert listed is not None
    assert re.findall(r'"(\w+)"', listed.group(1)) == [str(s) for s in ViewStatus]
    assert [s for s in ViewStatus if f".badge.{s} " not in css] == []


def test_a_rejected_id_shows_its_reason_in_status_jobs_watch_and_the_dashboard() -> None:
    now = T0
    typo = Job("nope-job", user_id=0)
    # what the service writes for a refused cancel: the refusal, then its state record
    refusal = typo.failed(_C.JOB_NOT_FOUND, rejected=True)
    state = typo.state(
        JobStatus.REJECTED, error_code="JOB_NOT_FOUND", error_message=refusal.message
    )
    orders: list[list[Update | JobStateV1]] = [[state], [refusal, state], [state, refusal]]
    for items in orders:
        board = JobBoard()
        board.apply_all(items)
        view = board.get("nope-job")
        assert view is not None
        assert view.shown is ViewStatus.REJECTED
        assert not view.active
        assert view.exit_code == 5
        assert view.error_message == refusal.message
        status = text(render_status(view, now))
        assert "rejected" in status
        assert refusal.message in status, status
        assert "JOB_NOT_FOUND" in text(render_board([view], now))
        assert refusal.message in board_line(view, now)
        assert snapshot(board)["jobs"] == [view.row()]
        assert view.row()["status"] == "rejected"
    listed = text(render_states([state]))
    assert "rejected" in listed
    assert f"JOB_NOT_FOUND: {refusal.message}" in listed


def test_a_cancelled_job_is_not_a_failed_one() -> None:
    job = Job("c-1")
    board = JobBoard()
    board.apply_all(
        [job.queued(), job.config(), job.progress(2), job.failed(_C.TRAINING_CANCELLED)]
    )
    view = board.get("c-1")
    assert view is not None
    assert (view.status, view.shown, view.exit_code) == (JobStatus.FAILED, "cancelled", 4)
    assert "cancelled" in text(render_status(view, T0))
    assert view.row()["status"] == "cancelled"
    state = job.state(JobStatus.FAILED, error_code="TRAINING_CANCELLED")
    assert select_states([state], status=ViewStatus.CANCELLED) == [state]
    assert select_states([state], status=ViewStatus.FAILED) == []


def test_follow_output_in_a_pipe_is_one_whole_line_per_event_and_nothing_twice() -> None:
    job = Job("p-1", total_steps=8)
    events = job.run(steps=8, every=2)
    lines = followed(job.job_id, events)
    assert len(lines) == len(events) + 1  # the completed event is two lines: result, artifact
    assert lines[1].startswith("config: ")
    assert lines[1].endswith("attempt 1")
    assert len(lines[1]) > 80  # longer than the pipe's 80 columns, and not cut
    assert [line.split()[1] for line in lines if line.startswith("step ")] == [
        "2/8",
        "4/8",
        "6/8",
        "8/8",
    ]
    assert "lr " in lines[2]
    assert "grad_norm " in lines[2]
    assert sum("artifact: /artifacts/p-1" in line for line in lines) == 1
    assert not any("━" in line for line in lines)


def test_jobs_in_a_pipe_keeps_every_column_whole_and_a_narrow_terminal_drops_the_least_useful() -> (
    None
):
    long_labels = {"team": "nlp", "purpose": "a rather long label value for a narrow screen"}
    states = [
        Job("j-1", labels=long_labels).state(JobStatus.RUNNING),
        Job("j-2").state(
            JobStatus.REJECTED,
            error_code="COMMAND_INVALID",
            error_message="invalid command: learning_rate: did you mean learning_rate?",
        ),
    ]
    table = render_states(states)
    wide = text(table, width=400)
    assert "a rather long label value for a narrow screen" in wide
    assert "did you mean learning_rate?" in wide
    narrow = text(render_states(states, width=80), width=80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    header = narrow.splitlines()[2]
    assert [name for name in ("job", "status", "reason") if name not in header] == []
    assert "labels" not in header  # the least useful columns go first


def test_the_client_computes_the_services_request_digest() -> None:
    job = next(e for e in EXAMPLES if e.type == "trainer.job.submit.v1")
    assert job.type == "trainer.job.submit.v1"
    submit = load_job_from(job.model_dump_json())
    assert spec_digest(submit) == request_digest(submit)


def load_job_from(body: str, tmp: Path | None = None, job_id: str | None = None) -> SubmitJobV1:
    path = (tmp or Path("/tmp")) / "job-under-test.json"
    path.write_text(body)
    return load_job(path, job_id)


def test_job_id_is_filled_before_validation_and_generated_when_missing(tmp_path: Path) -> None:
    example = next(e for e in EXAMPLES if e.type == "trainer.job.submit.v1")
    spec = example.model_dump(mode="json")
    del spec["job_id"]
    given = load_job_from(json.dumps(spec), tmp_path, "from-the-option")
    assert given.job_id == "from-the-option"
    generated = load_job_from(json.dumps(spec), tmp_path)
    assert re.fullmatch(r"job-under-test-[0-9a-f]{8}", generated.job_id)
    assert load_job_from(json.dumps(spec), tmp_path).job_id != generated.job_id


def test_validation_errors_are_printed_once_each_in_words(tmp_path: Path) -> None:
    assert violation_text(
        {"field": "type", "error": "Unable to extract tag using discriminator 'type'"}
    ) == ("type: missing; expected one of trainer.job.submit.v1, trainer.job.cancel.v1")
    (tmp_path / "bad.json").write_text(
        '{"type": "trainer.job.submit.v1", "job_id": "x", "user_id": 1, "lr": 3}'
    )
    (tmp_path / "untyped.json").write_text('{"job_id": "x"}')
    runner = CliRunner()
    bad = runner.invoke(app, ["submit", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2
    assert bad.stderr.count("lr: Extra inputs are not permitted") == 1, bad.stderr
    assert bad.stderr.count("backend: Field required") == 1, bad.stderr
    untyped = runner.invoke(app, ["submit", str(tmp_path / "untyped.json")])
    assert untyped.exit_code == 2
    assert "type: missing; expected one of trainer.job.submit.v1" in untyped.stderr
    assert "discriminator" not in untyped.stderr


def test_version_and_completion() -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["--version"])
    assert shown.exit_code == 0
    assert re.fullmatch(r"model-trainer-client \d+\.\d+\.\d+\n", shown.stdout)
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout
    from model_trainer.commands.cli import app as service_app  # registers the same commands again

    assert runner.invoke(service_app, ["--version"]).stdout.startswith("model-trainer 0.")
    assert runner.invoke(app, ["--version"]).stdout.startswith("model-trainer-client 0.")


def test_a_broker_outage_is_two_lines_however_loud_the_library() -> None:
    said: list[str] = []
    watch = BrokerWatch(said.append, quiet_s=0.0)
    logger = logging.getLogger("aiokafka.test-outage")
    logger.addHandler(watch)
    logger.propagate = False
    try:
        logger.error("Unable connect to node with id 1: refused")  # before connecting: ours
        watch.arm()
        for _ in range(1000):
            logger.error("Unable connect to node with id 1: refused")
            logger.warning("Failed fetch messages from 1: NodeNotReadyError")
        watch.polled()
        watch.polled()
    finally:
        logger.removeHandler(watch)
    assert said == [
        "Kafka broker unreachable; retrying (Unable connect to node with id 1: refused)",
        "Kafka broker reachable again",
    ]


async def test_the_dashboard_marks_its_page_stale_while_kafka_is_away() -> None:
    watch = install(lambda line: None)
    feed = Feed(ClientSettings())
    page = feed.subscribe()
    watch.arm()
    logging.getLogger("aiokafka.conn").error("Unable connect to node with id 1")
    watch.quiet_s = 0.0
    watch.polled()
    sent = [m for _ in range(page.queue.qsize()) if (m := page.queue.get_nowait()) is not None]
    assert [message.split(b"\n")[0] for message in sent] == [
        b"event: snapshot",
        b"event: kafka",
        b"event: kafka",
    ]
    assert [json.loads(m.split(b"data: ")[1]) for m in sent[1:]] == [
        {"live": False},
        {"live": True},
    ]
    assert feed.kafka_live


def test_dashboard_on_a_taken_port_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = CliRunner().invoke(app, ["dashboard", "--port", str(port)])
    assert done.exit_code == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"cannot serve the dashboard at 127.0.0.1:{port}: ")


def test_follow_prints_the_held_out_answers_of_a_completed_event() -> None:
    job = Job("g-1", total_steps=2)
    events = job.run(steps=2, every=2)
    done = events[-1]
    assert isinstance(done, CompletedEventV1)
    answers = [
        {
            "prompt": "<|im_start|>user\nWho?<|im_end|>\n",
            "completion": " The [king].\n",
            "reference": "A king.",
        }
    ]
    events[-1] = CompletedEventV1.model_validate(
        {**done.model_dump(mode="json"), "generations": answers}
    )
    lines = followed(job.job_id, events)
    assert lines[-2:] == ["held-out answer: 'The [king].'", "  expected: 'A king.'"]
