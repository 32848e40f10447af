"""``logs``: a job's own log lines (its worker's and its training engine's), read from the
logs topic like its events: only the partition that holds the job, filtered by key. With
``follow``, the job's events are read on the same consumer, and the command ends with the
job's terminal event (exiting with its code)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC

from aiokafka import TopicPartition
from model_trainer_contracts import LogLineV1
from pydantic import ValidationError
from rich.console import Console

from .board import EXIT_BAD_INPUT, EXIT_TIMED_OUT, JobBoard
from .decode import decode_update
from .kafka import Record
from .readers import TopicReader, job_partition
from .settings import ClientSettings

LINGER_S = 2.0  # after the job's end: lines logged before it may still be on their way


def decode_log_line(data: bytes) -> LogLineV1 | None:
    """The log line in ``data``; ``None`` for anything else (tolerant, like events)."""
    try:
        return LogLineV1.model_validate_json(data)
    except ValidationError:
        return None


def log_text(line: LogLineV1) -> str:
    """One log line as text: time (UTC), level, attempt, message, its fields; the traceback
    on the lines below."""
    ts = line.ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    pairs = "".join(f" {name}={value}" for name, value in line.fields.items())
    lost = f" ({line.dropped} lines dropped before this one)" if line.dropped else ""
    text = f"{ts} {line.level:<7} attempt {line.attempt} {line.message}{pairs}{lost}"
    if line.exception:
        text += "\n" + line.exception.rstrip("\n")
    return text


async def read_log_lines(settings: ClientSettings, job_id: str, last: int = 500) -> list[LogLineV1]:
    """The job's log lines on the logs topic as it stands (the ``last`` ones)."""
    lines: list[LogLineV1] = []
    key = job_id.encode()
    partition = await job_partition(settings.connection, settings.logs_topic, job_id)
    if partition is None:
        return lines
    async with TopicReader(settings.connection) as reader:
        await reader.add({TopicPartition(settings.logs_topic, partition): None})
        for record in await reader.read_to_end():
            line = decode_log_line(record.value) if record.key == key else None
            if line is not None and line.job_id == job_id:
                lines.append(line)
    return lines[-last:]


class _JobLogs:
    """The job's logs partition, and with ``follow`` its events partition, on one reader."""

    def __init__(self, settings: ClientSettings, job_id: str, out: Console, follow: bool) -> None:
        self.settings = settings
        self.job_id = job_id
        self.key = job_id.encode()
        self.out = out
        self.topics = [settings.logs_topic] + ([settings.events_topic] if follow else [])
        self.reader = TopicReader(settings.connection)
        self.located: set[str] = set()
        self.board = JobBoard()
        self.lines = 0

    async def locate(self) -> None:
        """Read the partitions of the topics that exist by now (from their beginning)."""
        starts: dict[TopicPartition, int | None] = {}
        for topic in self.topics:
            if topic in self.located:
                continue
            partition = await job_partition(self.settings.connection, topic, self.job_id)
            if partition is not None:
                starts[TopicPartition(topic, partition)] = None
                self.located.add(topic)
        if starts:
            await self.reader.add(starts)

    def take(self, records: list[Record]) -> int:
        """Print the job's log lines, apply its events; the number of lines printed."""
        printed = 0
        for record in records:
            if record.key != self.key:
                continue
            if record.topic == self.settings.logs_topic:
                line = decode_log_line(record.value)
                if line is not None and line.job_id == self.job_id:
                    self.out.print(log_text(line), soft_wrap=True, highlight=False, markup=False)
                    printed += 1
            else:
                # a refusal too, as ``watch JOB_ID`` reads it: an id only refused ends (5)
                update = decode_update(record.value)
                if update is not None and update.job_id == self.job_id:
                    self.board.apply(update)
        self.lines += printed
        return printed

    def exit_code(self) -> int | None:
        view = self.board.get(self.job_id)
        return None if view is None else view.exit_code


async def logs(
    settings: ClientSettings,
    job_id: str,
    *,
    follow: bool,
    console: Console,
    out: Console,
    timeout_s: float = 3600.0,
    linger_s: float = LINGER_S,
) -> int:
    """Print the job's log lines on ``out``; with ``follow``, go on until the job ends and
    exit with its code. Without: 0, or 2 when nothing of the job is on the logs topic."""
    job = _JobLogs(settings, job_id, out, follow)
    async with job.reader:
        await job.locate()
        job.take(await job.reader.read_to_end())
        if not follow:
            if job.lines == 0:
                console.print(
                    f"no log lines of {job_id} on {settings.logs_topic}",
                    soft_wrap=True,
                    highlight=False,
                )
                return EXIT_BAD_INPUT
            return 0
        try:
            async with asyncio.timeout(timeout_s):
                while (code := job.exit_code()) is None:
                    if len(job.located) < len(job.topics):
                        await job.locate()
                    job.take(await job.reader.poll())
        except TimeoutError:
            console.print(
                f"[yellow]{job_id} had not ended within {timeout_s:.0f}s[/yellow]", soft_wrap=True
            )
            return EXIT_TIMED_OUT
        # The end came on the events topic; its last lines come on another producer's.
        job.take(await job.reader.read_to_end())
        quiet_until = time.monotonic() + linger_s
        while time.monotonic() < quiet_until:
            if job.take(await job.reader.poll(timeout_ms=250)):
                quiet_until = min(quiet_until, time.monotonic() + 0.5)
        return code
