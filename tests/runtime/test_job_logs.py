"""A job's log lines: the worker's forwarder (a structlog processor) and the service's
bounded buffer in front of the logs topic. The publishing itself runs against the real
broker in tests/integration/test_client_end_to_end.py."""

from __future__ import annotations

import logging

import structlog
from model_trainer.pool.joblog import LogForwarder, LogShipper
from model_trainer.pool.protocol import JobLog
from model_trainer.settings import Settings
from model_trainer_contracts import LogLineV1, encode


def _lines(sent: list[JobLog]) -> list[LogLineV1]:
    return [LogLineV1.model_validate_json(message.data) for message in sent]


def test_records_bound_to_a_job_are_forwarded_numbered_with_their_traceback() -> None:
    sent: list[JobLog] = []
    logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            LogForwarder(sent.append),
            structlog.processors.JSONRenderer(),
        ],
    )
    logger.info("worker memory", idle_mb=300)  # not bound to a job: stderr only
    with structlog.contextvars.bound_contextvars(job_id="job-1", attempt=2):
        logger.info("engine.checkpoint", step=10, path=object())
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("job crashed")
    lines = _lines(sent)
    assert [(m.job_id, m.attempt) for m in sent] == [("job-1", 2), ("job-1", 2)]
    assert [(x.line, x.level, x.message) for x in lines] == [
        (0, "info", "engine.checkpoint"),
        (1, "error", "job crashed"),
    ]
    assert lines[0].fields["step"] == 10
    assert str(lines[0].fields["path"]).startswith("<object object")  # not JSON: its text
    assert lines[0].exception is None
    exception = lines[1].exception or ""
    assert exception.startswith("Traceback (most recent call last)")
    assert exception.rstrip().endswith("ValueError: boom")


def test_a_librarys_stdlib_warning_during_the_run_is_the_jobs_line_too() -> None:
    sent: list[JobLog] = []
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                LogForwarder(sent.append),
            ],
            processor=structlog.processors.JSONRenderer(),
        )
    )
    library = logging.getLogger("tests.a_library")
    library.addHandler(handler)
    library.propagate = False
    try:
        with structlog.contextvars.bound_contextvars(job_id="job-2", attempt=1):
            library.warning("tokenizer %s is slow", "bpe")
    finally:
        library.removeHandler(handler)
    [line] = _lines(sent)
    assert (line.logger, line.level, line.message) == (
        "tests.a_library",
        "warning",
        "tokenizer bpe is slow",
    )
    assert line.fields == {}


def _log(job_id: str, number: int) -> JobLog:
    line = LogLineV1(job_id=job_id, line=number, level="info", message=f"line {number}")
    return JobLog(job_id, 1, encode(line))


def test_a_full_buffer_drops_its_oldest_lines_and_counts_them_per_job() -> None:
    shipper = LogShipper(Settings(logs_buffer=3))
    for job_id, number in [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("b", 1)]:
        shipper.add(_log(job_id, number))
    taken = shipper.take()
    assert [(m.job_id, LogLineV1.model_validate_json(m.data).line, d) for m, d in taken] == [
        ("a", 1, 1),  # a's line 0 was dropped: said on a's next line
        ("a", 2, 0),
        ("b", 1, 1),
    ]
    assert (shipper.dropped, shipper.pending, shipper.take()) == (2, 0, [])
