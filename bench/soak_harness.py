"""What ``bench/soak.py`` needs to drive the real service: its topics, its processes, and a
reader that keeps every committed event with its offset. The stack (topics, folders,
settings) is the one the integration tests use (``deploy/local_service.py``).

Every service process starts in a session of its own; :func:`kill_leftovers` SIGKILLs what
is left of every session this module started (checked by pid and command line, so nothing
else is ever signalled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from model_trainer_client import is_terminal
from model_trainer_client.readers import TopicReader
from model_trainer_client.settings import client_kwargs
from model_trainer_client.startstop import StartStop
from model_trainer_contracts import (
    ConfigEventV1,
    Event,
    Headers,
    ModelTrainerError,
    ProgressEventV1,
    SubmitJobV1,
    decode_event,
    encode,
)
from model_trainer_contracts import ce_headers as command_headers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from local_service import ServiceProcess, Stack  # noqa: E402

MAX_COMMAND_BYTES = 1_000_000
_STARTED = time.monotonic()
# Process groups (sessions) of every service this module started.
_SESSIONS: set[int] = set()


def say(message: str) -> None:
    """One progress line on stderr."""
    print(f"[soak {time.monotonic() - _STARTED:8.1f}s] {message}", file=sys.stderr, flush=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _pgrp(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[2]) if len(fields) > 2 else None


def session_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` that run our Python (service, workers)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if _pgrp(pid) == pgid and sys.executable.encode() in _cmdline(pid):
            found.append(pid)
    return found


def kill_leftovers() -> int:
    """SIGKILL every process left in the sessions this module started; returns how many."""
    killed = 0
    for pgid in sorted(_SESSIONS):
        for pid in session_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def json_objects(line: str) -> list[dict[str, object]]:
    """The JSON objects of one log line. The service and its workers share one stderr, and a
    line's text and its newline are separate writes, so two objects may share a line."""
    found: list[dict[str, object]] = []
    decoder = json.JSONDecoder()
    at = line.find("{")
    while at != -1:
        try:
            parsed, end = decoder.raw_decode(line, at)
        except json.JSONDecodeError:
            break
        if isinstance(parsed, dict):
            found.append({str(k): v for k, v in parsed.items()})
        at = line.find("{", end)
    return found


def soak_job(
    stack: Stack,
    job_id: str,
    *,
    steps: int,
    checkpoint_every: int | None = None,
    eval_every: int = 50,
) -> SubmitJobV1:
    """A small, real char-level job on the section's corpus."""
    spec = stack.job(job_id, steps=steps, progress={"every_steps": 5}, labels={"suite": "soak"})
    training: dict[str, object] = {
        "max_steps": steps,
        "batch_size": 8,
        "eval_every": eval_every,
        "eval_batches": 2,
    }
    if checkpoint_every is not None:
        training["checkpoint_every"] = checkpoint_every
    return SubmitJobV1.model_validate({**spec, "training": training})


class Service(ServiceProcess):
    """The stack's :class:`ServiceProcess` for the soak: its session remembered for
    :func:`kill_leftovers`, its Prometheus figures, what its log says, and SIGSTOP/SIGCONT."""

    def __init__(self, stack: Stack, name: str, **overrides: str) -> None:
        super().__init__(stack, name, max_command_bytes=str(MAX_COMMAND_BYTES), **overrides)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout_s: float = 300.0) -> Service:
        """Start it and wait until ``/readyz`` answers 200."""
        try:
            super().start(timeout_s)
        finally:
            if self.proc is not None:
                _SESSIONS.add(self.proc.pid)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metric(self, name: str) -> float | None:
        """The sum of a Prometheus metric's samples (None when the service does not answer)."""
        try:
            body = self.metrics()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.split()[-1])
        return total

    def log_lines(self) -> list[dict[str, object]]:
        """The JSON objects of its log, two on a line too (every start of this name appends
        to one file)."""
        if not self.log_path.exists():
            return []
        lines: list[dict[str, object]] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            lines += json_objects(raw)
        return lines

    def line_count(self) -> int:
        if not self.log_path.exists():
            return 0
        return len(self.log_path.read_text(errors="replace").splitlines())

    def said(self, event: str) -> list[dict[str, object]]:
        return [line for line in self.log_lines() if line.get("event") == event]

    def worker_pids(self) -> list[int]:
        """Every other process of its session that runs our Python (workers, forkserver)."""
        return [pid for pid in session_members(self.pid) if pid != self.pid]

    def assigned(self) -> list[int]:
        """The commands partitions its log says it owns now (its last assignment or revoke)."""
        owned: list[int] = []
        for line in self.log_lines():
            if line.get("event") == "partitions revoked":
                owned = []
            elif line.get("event") == "partitions assigned":
                listed = line.get("partitions")
                owned = [int(str(p)) for p in listed] if isinstance(listed, list) else []
        return owned

    def freeze(self, *, group: bool = False) -> None:
        """SIGSTOP the service process alone (its workers go on training), or with ``group``
        its whole session: the service, its workers and their forkserver."""
        self._signal(signal.SIGSTOP, group=group)

    def thaw(self, *, group: bool = False) -> None:
        self._signal(signal.SIGCONT, group=group)

    def _signal(self, signum: signal.Signals, *, group: bool) -> None:
        if group:
            os.killpg(self.pid, signum)  # its own session: the group id is its pid
        else:
            os.kill(self.pid, signum)


@dataclass(frozen=True)
class Seen:
    """One committed event and where it was read."""

    partition: int
    offset: int
    event: Event


@dataclass
class Audit:
    """Per job: missing seq numbers, and events that repeat one (or a second terminal)."""

    seq_gaps: int = 0
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: Audit) -> None:
        self.seq_gaps += other.seq_gaps
        self.duplicates += other.duplicates
        self.notes += other.notes


class WholeTopic(StartStop):
    """The client's committed reader, on every partition of one topic from its beginning
    (waiting for the service to create it)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.reader = TopicReader(bootstrap)

    async def start(self) -> None:
        await self.reader.start()
        await self.reader.add_topic(self.topic)

    async def stop(self) -> None:
        # A stop after a broker outage or a failed section must not hide the section's result.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader.stop(), timeout=10)


class EventLog(WholeTopic):
    """Every committed event of an events topic from its beginning, kept by job.

    Records are told apart by (partition, offset), so a record read twice is not taken for a
    duplicate the service published; two records of one job with the same ``seq`` are.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self._offsets: set[tuple[int, int]] = set()
        self.by_job: dict[str, list[Seen]] = {}
        self.rereads = 0
        self.undecodable = 0

    async def poll(self, timeout_ms: int = 500) -> int:
        """Read what arrives within ``timeout_ms``; returns how many new events."""
        fresh = 0
        for record in await self.reader.poll(timeout_ms):
            where = (record.partition, record.offset)
            if where in self._offsets:
                self.rereads += 1
                continue
            self._offsets.add(where)
            try:
                event = decode_event(record.value)
            except ModelTrainerError:
                self.undecodable += 1
                continue
            self.by_job.setdefault(event.job_id, []).append(
                Seen(record.partition, record.offset, event)
            )
            fresh += 1
        return fresh

    async def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll until ``done()``; TimeoutError naming ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
            await self.poll()

    async def settle(self, quiet_s: float = 3.0) -> None:
        """Read until nothing new arrives for ``quiet_s`` (a late duplicate would show)."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_s:
            if await self.poll():
                quiet_since = time.monotonic()

    def seen(self, job_id: str) -> list[Seen]:
        """The job's events in the order of its partition's offsets (its key's partition)."""
        return sorted(self.by_job.get(job_id, []), key=lambda s: (s.partition, s.offset))

    def events(self, job_id: str) -> list[Event]:
        return [seen.event for seen in self.by_job.get(job_id, [])]

    def terminals(self, job_id: str) -> list[Event]:
        """The job's terminal events, one per seq."""
        by_seq = {e.seq: e for e in self.events(job_id) if is_terminal(e)}
        return [by_seq[seq] for seq in sorted(by_seq)]

    def ended(self, job_id: str) -> bool:
        return bool(self.terminals(job_id))

    def max_step(self, job_id: str) -> int:
        steps = [e.step for e in self.events(job_id) if isinstance(e, ProgressEventV1)]
        return max(steps, default=-1)

    def configs(self, job_id: str) -> list[ConfigEventV1]:
        return [e for e in self.events(job_id) if isinstance(e, ConfigEventV1)]

    def audit(self, job_ids: list[str] | None = None) -> Audit:
        """Seq gaps and duplicates of ``job_ids`` (default: every job read)."""
        result = Audit()
        for job_id in self.by_job if job_ids is None else job_ids:
            seqs = [e.seq for e in self.events(job_id)]
            if not seqs:
                continue
            distinct = set(seqs)
            gaps = max(distinct) + 1 - len(distinct)
            dups = len(seqs) - len(distinct) + max(0, len(self.terminals(job_id)) - 1)
            if gaps or dups:
                missing = sorted(set(range(max(distinct) + 1)) - distinct)[:10]
                result.notes.append(f"{job_id}: {gaps} seq missing {missing}, {dups} duplicated")
            result.seq_gaps += gaps
            result.duplicates += dups
        return result


class Producer(StartStop):
    """A plain idempotent producer (acks=all) that sends batches without waiting per record."""

    def __init__(self, bootstrap: str, max_request_size: int = 2 * MAX_COMMAND_BYTES) -> None:
        self._producer = AIOKafkaProducer(
            **client_kwargs(bootstrap),
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=max_request_size,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_many(
        self,
        topic: str,
        records: list[tuple[bytes, bytes | None]],
        headers: Headers | None = None,
    ) -> None:
        """Send (value, key) records in order, then wait until the broker has them all."""
        await self.send_routed(topic, [(value, key, None) for value, key in records], headers)

    async def send_routed(
        self,
        topic: str,
        records: list[tuple[bytes, bytes | None, int | None]],
        headers: Headers | None = None,
    ) -> list[tuple[int, int]]:
        """Send (value, key, partition) records in order (partition None: the key's), wait
        until the broker has them all; the (partition, offset) each was written at."""
        pending: list[asyncio.Future[RecordMetadata]] = []
        written: list[tuple[int, int]] = []
        for value, key, partition in records:
            pending.append(
                await self._producer.send(
                    topic, value, key=key, partition=partition, headers=headers
                )
            )
            if len(pending) >= 2000:
                written += [(m.partition, m.offset) for m in await asyncio.gather(*pending)]
                pending.clear()
        written += [(m.partition, m.offset) for m in await asyncio.gather(*pending)]
        return written

    async def submit(self, topic: str, *jobs: SubmitJobV1) -> None:
        """Submit commands keyed by job_id, with their CloudEvents headers."""
        pending: list[asyncio.Future[object]] = []
        for job in jobs:
            pending.append(
                await self._producer.send(
                    topic, encode(job), key=job.job_id.encode(), headers=command_headers(job)
                )
            )
        await asyncio.gather(*pending)


class DeadLetters(WholeTopic):
    """Counts the committed records of a dead-letter topic from its beginning, by origin and
    error code."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.records = 0
        self.origins: set[tuple[bytes, bytes]] = set()  # (original partition, offset)
        self.codes: dict[str, int] = {}

    async def poll(self) -> int:
        fresh = 0
        for record in await self.reader.poll():
            headers = dict(record.headers)
            origin = (
                headers.get("original_partition", b""),
                headers.get("original_offset", b""),
            )
            self.origins.add(origin)
            code = headers.get("error_code", b"").decode(errors="replace")
            self.codes[code] = self.codes.get(code, 0) + 1
            self.records += 1
            fresh += 1
        return fresh
