"""The client's pure parts: tolerant decoding, the job board, renderers, dashboard payloads,
partitioning, settings. No broker."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from aiokafka.partitioner import DefaultPartitioner
from model_trainer.settings import Settings
from model_trainer_client.board import JobBoard
from model_trainer_client.dashboard import Cursors, delta, snapshot, sse
from model_trainer_client.decode import QueuedNotice, decode_state, decode_update, is_rejection
from model_trainer_client.flows import select_states, shown
from model_trainer_client.kafka import partition_for_key
from model_trainer_client.render import render_board, render_states, render_status
from model_trainer_client.settings import ClientSettings, client_kwargs
from model_trainer_contracts import (
    CompletedEventV1,
    JobStatus,
    ModelTrainerErrorCode,
    ProgressEventV1,
    encode,
)
from rich.console import Console, RenderableType

from .stream import T0, Job, unknown_event


def text(renderable: RenderableType, width: int = 140) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def status(board: JobBoard, job_id: str) -> JobStatus:
    view = board.get(job_id)
    assert view is not None
    return view.status


def test_decode_skips_unknown_types_and_garbage_but_reads_queued() -> None:
    job = Job("dec-1")
    queued = job.queued(position=3)
    decoded = decode_update(encode(queued))
    assert isinstance(decoded, QueuedNotice)
    assert (decoded.position, decoded.reason) == (3, "busy")
    assert decode_update(unknown_event("dec-1", 9)) is None
    assert decode_update(b"\xff not json") is None
    assert decode_update(b"[1, 2]") is None
    assert isinstance(decode_update(encode(job.progress(2))), ProgressEventV1)
    state = job.state(JobStatus.RUNNING)
    assert decode_state(encode(state)) == state
    assert decode_state(b"") is None  # tombstone
    old_format = b'{"job_id":"x","spec_digest":"d","status":"running","attempt":1}'
    assert decode_state(old_format) is None


def test_board_follows_a_job_from_queued_to_completed() -> None:
    job = Job("b-1")
    board = JobBoard()
    events = job.run(steps=8)
    board.apply(events[0])
    view = board.get("b-1")
    assert view is not None
    assert view.status is JobStatus.QUEUED
    assert view.queue_position == 0
    board.apply_all(events[1:4])
    assert status(board, "b-1") is JobStatus.RUNNING
    assert (view.step, view.total_steps, view.model) == (4, 8, "gpt2 0.80M")
    assert view.series["train_loss"].points == [(2, 3.6), (4, 3.2)]
    assert [(s, round(v, 6)) for s, v in view.series["val_loss"].points] == [(4, 3.3)]
    assert view.exit_code is None
    board.apply_all(events[4:])
    view = board.get("b-1")
    assert view is not None
    assert view.status is JobStatus.COMPLETED
    assert view.exit_code == 0
    assert view.artifact_path == "/artifacts/b-1"
    assert len(view.series["train_loss"].points) == 4
    assert board.apply(events[3]) is None, "an event read twice changes nothing"


def test_board_state_records_and_events_merge_by_seq() -> None:
    job = Job("b-2")
    board = JobBoard()
    queued = job.queued()
    board.apply(queued)
    board.apply(job.state(JobStatus.RUNNING))  # dispatched: newer than the queued event
    view = board.get("b-2")
    assert view is not None
    assert view.status is JobStatus.RUNNING
    board.apply(job.config())
    board.apply(job.progress(2))
    stale = job.state(JobStatus.RUNNING, last_seq=0)
    board.apply(stale)
    assert view.status is JobStatus.RUNNING
    board.apply(job.failed())
    board.apply(job.state(JobStatus.RUNNING, last_seq=1))  # an old record read late
    assert status(board, "b-2") is JobStatus.FAILED
    assert view.error_code == "CORPUS_NOT_FOUND"
    assert view.exit_code == 1


def test_rejections_do_not_end_a_known_job_but_show_an_unknown_one() -> None:
    board = JobBoard()
    known = Job("b-3")
    board.apply_all([known.queued(), known.config()])
    refusal = known.failed(ModelTrainerErrorCode.JOB_ID_CONFLICT, rejected=True)
    assert is_rejection(refusal)
    assert board.apply(refusal) is None
    view = board.get("b-3")
    assert view is not None
    assert view.status is JobStatus.RUNNING
    stranger = Job("b-4")
    board.apply(stranger.failed(ModelTrainerErrorCode.COMMAND_INVALID, rejected=True))
    other = board.get("b-4")
    assert other is not None
    assert other.rejected
    assert other.status is JobStatus.REJECTED
    assert other.exit_code == 5  # the README's exit code for a rejected id
    board.apply(Job("b-4").queued())  # accepted later under the same id
    again = board.get("b-4")
    assert again is not None
    assert again.status is JobStatus.QUEUED
    assert not again.rejected


def test_a_resumed_attempt_rewinds_the_series() -> None:
    job = Job("b-5", total_steps=10)
    board = JobBoard()
    board.apply_all([job.config(), job.progress(2), job.progress(4), job.progress(6)])
    view = board.get("b-5")
    assert view is not None
    epoch = view.series["train_loss"].epoch
    job.attempt = 2
    board.apply_all([job.config(start_step=4), job.progress(6), job.progress(8)])
    assert [step for step, _ in view.series["train_loss"].points] == [2, 4, 6, 8]
    assert view.series["train_loss"].epoch == epoch + 1
    assert view.attempt == 2


def test_render_board_one_refresh() -> None:
    board = JobBoard()
    running = Job("run-1")
    board.apply_all([running.queued(), running.config(), running.progress(4)])
    waiting = Job("wait-1")
    board.apply(waiting.queued(position=2))
    done = Job("done-1")
    board.apply_all(done.run(steps=4))
    now = T0 + timedelta(seconds=5)  # the progress event at T0+2s said 6 s left
    out = text(render_board(board.views(), now, title="active jobs"))
    assert "active jobs" in out
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    lines = {cells[1].strip(): "│".join(cells) for cells in rows}
    assert "running" in lines["run-1"]
    assert "4/10" in lines["run-1"]
    assert "3.2000" in lines["run-1"]
    assert "1,040" in lines["run-1"]
    assert "0:03" in lines["run-1"]  # ETA aged by the 3 s since that event
    assert "waiting #2" in lines["wait-1"]
    assert "completed" in lines["done-1"]
    assert "no active jobs" in text(render_board([], now))


def test_watch_shows_active_jobs_and_those_that_ended_while_watched() -> None:
    board = JobBoard()
    board.apply_all(Job("old-1").run(steps=2))
    live = Job("live-1")
    board.apply(live.queued())
    ending = Job("ending-1")
    board.apply_all([ending.queued(), ending.config()])
    watched: set[str] = set()
    assert [view.job_id for view in shown(board, watched)] == ["live-1", "ending-1"]
    board.apply(ending.completed())
    assert [view.job_id for view in shown(board, watched)] == ["live-1", "ending-1"]
    rows = shown(board, watched)
    assert [view.status for view in rows] == [JobStatus.QUEUED, JobStatus.COMPLETED]


def test_render_status_of_completed_and_failed_jobs() -> None:
    board = JobBoard()
    done = Job("st-1")
    board.apply_all(done.run(steps=4))
    failed = Job("st-2")
    board.apply_all([failed.queued(), failed.config(), failed.failed()])
    now = T0 + timedelta(minutes=1)
    view = board.get("st-1")
    assert view is not None
    out = text(render_status(view, now))
    assert "completed" in out
    assert "/artifacts/st-1" in out
    assert "team=nlp" in out
    bad = board.get("st-2")
    assert bad is not None
    out = text(render_status(bad, now))
    assert "CORPUS_NOT_FOUND at prepare" in out
    assert "corpus_not_found happened" in out


def test_jobs_filters_and_table() -> None:
    a = Job("j-a", user_id=1, labels={"team": "nlp", "size": "s"})
    b = Job("j-b", user_id=2, labels={"team": "vision"}, t0=T0 + timedelta(minutes=1))
    c = Job("j-c", user_id=1, labels={"team": "nlp"}, t0=T0 + timedelta(minutes=2))
    states = [
        a.state(JobStatus.COMPLETED),
        b.state(JobStatus.RUNNING),
        c.state(JobStatus.FAILED, error_code="CORPUS_NOT_FOUND"),
    ]
    ids = [s.job_id for s in select_states(states)]
    assert ids == ["j-c", "j-b", "j-a"]
    assert [s.job_id for s in select_states(states, user_id=1)] == ["j-c", "j-a"]
    assert [s.job_id for s in select_states(states, labels={"team": "nlp", "size": "s"})] == ["j-a"]
    assert [s.job_id for s in select_states(states, status=JobStatus.RUNNING)] == ["j-b"]
    out = text(render_states(select_states(states)))
    assert "3 jobs" in out
    assert "CORPUS_NOT_FOUND" in out


def test_dashboard_payloads_snapshot_then_deltas() -> None:
    board = JobBoard()
    job = Job("d-1")
    events = job.run(steps=6)
    board.apply_all(events[:3])  # queued, config, progress 2
    snap = snapshot(board)
    jobs = snap["jobs"]
    assert isinstance(jobs, list)
    assert jobs[0] == board.views()[0].row()
    cursors: Cursors = {}
    first = delta(board, {"d-1"}, cursors)
    assert first["series"] == {
        "d-1": {
            "train_loss": {"reset": True, "points": [[2, 3.6]]},
            "learning_rate": {"reset": True, "points": [[2, pytest.approx(5e-4)]]},
            "tokens_per_sec": {"reset": True, "points": [[2, 1020.0]]},
            "val_loss": {"reset": True, "points": []},
        }
    }
    changed = board.apply_all(events[3:5])  # progress 4 (with val) and 6
    second = delta(board, changed, cursors)
    series = second["series"]
    assert isinstance(series, dict)
    assert series["d-1"] == {
        "train_loss": {"reset": False, "points": [[4, 3.2], [6, pytest.approx(2.8)]]},
        "learning_rate": {
            "reset": False,
            "points": [[4, pytest.approx(4e-4)], [6, pytest.approx(3e-4)]],
        },
        "tokens_per_sec": {"reset": False, "points": [[4, 1040.0], [6, 1060.0]]},
        "val_loss": {"reset": False, "points": [[4, pytest.approx(3.3)]]},
    }
    board.apply(events[5])
    last = delta(board, {"d-1"}, cursors)
    rows = last["jobs"]
    assert isinstance(rows, list)
    row = rows[0]
    assert isinstance(row, dict)
    assert row["status"] == "completed"
    assert last["series"] == {}
    assert sse("delta", last).startswith(b"event: delta\ndata: {")


def test_partition_for_key_is_kafkas_default_partitioner() -> None:
    # Kafka's own tests of Utils.murmur2 (Java, signed ints) pin these values.
    java = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, hashed in java.items():
        for count in (1, 3, 4, 7, 12):
            expected = (hashed & 0x7FFFFFFF) % count
            assert partition_for_key(key, count) == expected
            assert DefaultPartitioner()(key, list(range(count)), []) == expected
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for_key(b"x", 0)


def test_client_settings_from_env_match_the_services_defaults() -> None:
    default = ClientSettings.from_env(env={})
    service = Settings()
    assert default.bootstrap_servers == service.bootstrap_servers
    assert default.commands_topic == service.commands_topic
    assert default.events_topic == service.events_topic
    assert default.state_topic == service.state_topic
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k:1",
        "MODEL_TRAINER_EVENTS_TOPIC": "ev",
        "MODEL_TRAINER_STATE_TOPIC": "st",
        "MODEL_TRAINER_COMMANDS_TOPIC": "cm",
    }
    chosen = ClientSettings.from_env(env=env)
    assert (chosen.bootstrap_servers, chosen.events_topic) == ("k:1", "ev")
    assert (chosen.state_topic, chosen.commands_topic) == ("st", "cm")
    env["MODEL_TRAINER_BOOTSTRAP_SERVERS"] = "m:2"
    assert ClientSettings.from_env(env=env).bootstrap_servers == "m:2"
    assert ClientSettings.from_env("b:3", env=env).bootstrap_servers == "b:3"
    assert client_kwargs(chosen.connection) == {"bootstrap_servers": "k:1"}


def test_completed_event_rows_are_json() -> None:
    board = JobBoard()
    board.apply_all(Job("js-1").run(steps=2))
    view = board.get("js-1")
    assert view is not None
    row = view.row()
    assert row["status"] == "completed"
    assert isinstance(row["submitted_at"], str)
    assert isinstance(Job("x").completed(), CompletedEventV1)
