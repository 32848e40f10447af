"""Soak of the service against a real local broker: kill -9s, a broker outage, a command
fuzz, a load of tiny jobs over two instances, and a large state-topic replay (issue 9);
frozen owners (zombies) and hostile valid-looking commands (poison pills, issue 17).

Starts its own broker in a temporary folder and the service as subprocesses (their logs in
that folder; ``--keep`` keeps it), and leaves nothing running, on failure too. Progress goes
to stderr; the last stdout line is one JSON object with every figure and ``passed``.

    .venv/bin/python bench/soak.py                      # the full soak (30-60 min on 2 cores)
    .venv/bin/python bench/soak.py --quick              # small parameters, for development
    .venv/bin/python bench/soak.py --only kill9,fuzz --kill9-rounds 5

Sections (``--only``): kill9, outage, fuzz, load, replay, zombie, poison. Targets: every
kill -9'd job ends once, completed and resumed from a checkpoint; the job through the outage
completes; no fuzzed command crashes the service and each is dead-lettered; every load job
ends once; the replay of the state topic takes at most 10 s; every zombie round's job (its
owner SIGSTOPped past the session timeout, ``--group``: with its workers) ends once, seq
0..n-1 in offset order, nothing of the frozen attempt committed after the takeover; no
hostile command stops the service, each is answered and a good job after them completes;
no seq gap and no duplicate anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from local_kafka import LocalKafka, free_port  # noqa: E402
from local_service import Stack, alive  # noqa: E402
from model_trainer_client import is_terminal  # noqa: E402
from model_trainer_client.kafka import partition_for_key  # noqa: E402
from model_trainer_contracts import (  # noqa: E402
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    SubmitJobV1,
    encode,
    salvage_job_id,
)
from soak_fuzz import CommandFuzzer, HostileCommands, Routed, make_hostile_tree  # noqa: E402
from soak_harness import (  # noqa: E402
    MAX_COMMAND_BYTES,
    Audit,
    DeadLetters,
    EventLog,
    Producer,
    Service,
    json_objects,
    kill_leftovers,
    rss_mb,
    say,
    soak_job,
)

SECTIONS = ("kill9", "outage", "fuzz", "load", "replay", "zombie", "poison")
FULL = {
    "kill9_rounds": 20,
    "broker_outage_s": 60,
    "fuzz_commands": 10_000,
    "load_jobs": 1_000,
    "state_records": 100_000,
    "zombie_rounds": 20,
    "poison_commands": 10_000,
}
QUICK = {
    "kill9_rounds": 3,
    "broker_outage_s": 15,
    "fuzz_commands": 500,
    "load_jobs": 50,
    "state_records": 10_000,
    "zombie_rounds": 2,
    "poison_commands": 500,
}
GOOD_FUZZ_JOBS = 20
STATE_REPLAY_TARGET_S = 10.0
TOPIC_PARTITIONS = 4  # the service's default, for the topics it creates


@dataclass
class Soak:
    """What the sections share: the broker, the figures so far, and the audit of events."""

    broker: LocalKafka
    root: Path
    args: argparse.Namespace
    rng: random.Random
    figures: dict[str, object] = field(default_factory=dict)
    audit: Audit = field(default_factory=Audit)
    missed: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def stack(self, name: str) -> Stack:
        return Stack(self.bootstrap, self.root / name)

    def target(self, ok: bool, what: str) -> None:
        if not ok:
            self.missed.append(what)
            say(f"TARGET MISSED: {what}")


def reached(events: EventLog, job_id: str, step: int) -> Callable[[], bool]:
    return lambda: events.ended(job_id) or events.max_step(job_id) >= step


def ended(events: EventLog, *job_ids: str) -> Callable[[], bool]:
    return lambda: all(events.ended(job_id) for job_id in job_ids)


async def start(*services: Service) -> None:
    """Start services at once (each waits for its /readyz)."""
    began = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in services))
    say(f"{', '.join(s.name for s in services)} ready in {time.monotonic() - began:.1f}s")


async def stop(*services: Service) -> None:
    await asyncio.gather(*(asyncio.to_thread(s.stop) for s in services))


async def calibrate(
    soak: Soak, section: str, stack: Stack, events: EventLog, producer: Producer
) -> float:
    """Training steps a second of the soak's job on this machine now (the load of a shared
    machine changes, so each section that sizes a job by time measures it again)."""
    job = soak_job(stack, f"calibrate-{stack.uid}", steps=300, checkpoint_every=12)
    await producer.submit(stack.commands_topic, job)
    await events.until(ended(events, job.job_id), 300, "calibration job")
    done = events.terminals(job.job_id)[0]
    if not isinstance(done, CompletedEventV1) or done.duration_s <= 0:
        raise RuntimeError(f"calibration job did not complete: {done}")
    rate = done.steps / done.duration_s
    soak.figures[f"{section}_steps_per_s"] = round(rate, 1)
    say(f"{section}: calibration {rate:.0f} steps/s")
    return rate


async def gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive after waiting up to ``timeout_s`` for them to exit."""
    deadline = time.monotonic() + timeout_s
    left = alive(pids)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = alive(left)
    return left


def resumed_once(events: EventLog, job_id: str) -> str | None:
    """Why the job is not: ended once, completed, resumed from a checkpoint (None: it is)."""
    terminals = events.terminals(job_id)
    if len(terminals) != 1:
        return f"{len(terminals)} terminal events"
    end = terminals[0]
    if isinstance(end, FailedEventV1):
        return f"failed {end.code}: {end.message[:200]}"
    configs = [(c.attempt, c.start_step) for c in events.configs(job_id)]
    if not any(attempt >= 2 and start_step > 0 for attempt, start_step in configs):
        return f"not resumed from a checkpoint: (attempt, start_step) {configs}"
    audit = events.audit([job_id])
    if audit.seq_gaps or audit.duplicates:
        return "; ".join(audit.notes)
    return None


# ---------------------------------------------------------------------------- sections


async def kill9(soak: Soak) -> None:
    """Each round: submit a ~10 s job, kill -9 the service mid-job, restart it (same id)."""
    rounds = soak.args.kill9_rounds
    stack = soak.stack("kill9")
    svc = Service(stack, "kill9", instance_id="kill9")
    await start(svc)
    job_ids: list[str] = []
    orphans = 0
    try:
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            Producer(soak.bootstrap) as producer,
        ):
            rate = await calibrate(soak, "kill9", stack, events, producer)
            steps = max(100, round(rate * soak.args.kill9_job_s))
            every = max(5, steps // 25)
            for i in range(rounds):
                job = soak_job(stack, f"kill9-{i}", steps=steps, checkpoint_every=every)
                job_ids.append(job.job_id)
                await producer.submit(stack.commands_topic, job)
                kill_at = soak.rng.randint(max(2 * every, steps // 5), max(3 * every, steps // 2))
                await events.until(reached(events, job.job_id, kill_at), 300, f"{job.job_id} step")
                if events.ended(job.job_id):
                    say(f"round {i + 1}: {job.job_id} ended before the kill")
                workers = svc.worker_pids()
                svc.kill()
                at = events.max_step(job.job_id)
                left = await gone(workers, 15)
                if left:
                    orphans += len(left)
                    say(f"round {i + 1}: workers {left} outlived the killed service by 15 s")
                    kill_leftovers()
                svc = Service(stack, "kill9", instance_id="kill9")
                await start(svc)
                await events.until(ended(events, job.job_id), 600, f"{job.job_id} end")
                why = resumed_once(events, job.job_id)
                say(
                    f"round {i + 1}/{rounds}: killed at step >= {at} of {steps}; "
                    f"{'ok' if why is None else why}"
                )
            await events.settle()
            problems = {j: w for j in job_ids if (w := resumed_once(events, j)) is not None}
            soak.audit.add(events.audit())
    finally:
        await stop(svc)
    soak.figures.update(
        kill9_rounds=rounds,
        kill9_job_steps=steps,
        kill9_jobs_ok=rounds - len(problems),
        kill9_orphan_workers=orphans,
    )
    for job_id, why in problems.items():
        say(f"kill9: {job_id}: {why}")
    soak.target(not problems, f"kill9: {len(problems)} of {rounds} jobs not ok: {problems}")
    soak.target(orphans == 0, f"kill9: {orphans} workers outlived their killed service")


def outage_lines(svc: Service, first: int, last: int) -> list[str]:
    """The ``event`` of each record the service logged from line ``first`` to ``last``."""
    said: list[str] = []
    for raw in svc.log_path.read_text(errors="replace").splitlines()[first:last]:
        records = json_objects(raw)
        said += [str(record.get("event")) for record in records]
        if not records and raw.strip():
            said.append(raw[:80])  # not JSON: the text itself
    return said


async def outage(soak: Soak) -> None:
    """Stop the broker for ``broker_outage_s`` while a job trains, then start it again."""
    outage_s = soak.args.broker_outage_s
    stack = soak.stack("outage")
    svc = Service(stack, "outage")
    await start(svc)
    try:
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            Producer(soak.bootstrap) as producer,
        ):
            rate = await calibrate(soak, "outage", stack, events, producer)
            # Long enough to train through the outage and well past the broker's return
            # (stopping and starting it take up to 20 s each).
            steps = round(rate * (2 * outage_s + 60))
            job = soak_job(stack, "outage-1", steps=steps, checkpoint_every=max(5, steps // 25))
            await producer.submit(stack.commands_topic, job)
            await events.until(reached(events, job.job_id, steps // 20), 300, "outage job step")
            before_step = events.max_step(job.job_id)
        first = svc.line_count()
        say(f"stopping the broker for {outage_s}s (job at step {before_step} of {steps})")
        stopping = time.monotonic()
        await asyncio.to_thread(soak.broker.stop)
        down = time.monotonic()
        unready = False
        while time.monotonic() - down < outage_s:
            await asyncio.sleep(1)
            unready = unready or not await asyncio.to_thread(svc.ready)
            if not svc.alive():
                raise RuntimeError(f"the service exited during the outage: {svc.tail()}")
        await asyncio.to_thread(soak.broker.start)
        back = time.monotonic()
        last = svc.line_count()
        say(
            f"broker back: stopping took {down - stopping:.0f}s, down {back - down:.0f}s "
            f"(until it listened again)"
        )
        while not await asyncio.to_thread(svc.ready):
            if time.monotonic() - back > 180:
                raise TimeoutError("the service was not ready within 180 s of the broker's return")
            await asyncio.sleep(0.5)
        ready_after = time.monotonic() - back
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            Producer(soak.bootstrap) as producer,
        ):
            await events.until(ended(events, job.job_id), 900, "outage job end")
            later = soak_job(stack, "outage-2", steps=10)  # the consumer is not stuck afterwards
            await producer.submit(stack.commands_topic, later)
            await events.until(ended(events, later.job_id), 300, "job after the outage")
            await events.settle()
            audit = events.audit()
            soak.audit.add(audit)
            terminals = events.terminals(job.job_id)
            attempts = sorted({c.attempt for c in events.configs(job.job_id)})
            later_done = [e for e in events.terminals(later.job_id)]
    finally:
        if soak.broker.running_pid() is None:
            await asyncio.to_thread(soak.broker.start)
        await stop(svc)
    said = outage_lines(svc, first, last)
    completed = len(terminals) == 1 and isinstance(terminals[0], CompletedEventV1)
    soak.figures.update(
        outage_s=outage_s,
        outage_broker_down_s=round(back - down, 1),
        outage_job_completed=completed,
        outage_job_attempts=attempts,
        outage_log_lines=len(said),
        outage_log_events=dict(Counter(said)),
        outage_unready_seen=unready,
        outage_ready_again_s=round(ready_after, 1),
        outage_later_job_completed=bool(later_done) and isinstance(later_done[0], CompletedEventV1),
    )
    say(f"outage: {len(said)} log lines during it: {dict(Counter(said))}")
    soak.target(completed, f"outage: the job ended with {terminals}")
    soak.target(not (audit.seq_gaps or audit.duplicates), f"outage: {audit.notes}")
    soak.target(bool(soak.figures["outage_later_job_completed"]), "outage: later job failed")


async def fuzz(soak: Soak) -> None:
    """Malformed commands interleaved with good jobs; every bad one must be dead-lettered."""
    count = soak.args.fuzz_commands
    stack = soak.stack("fuzz")
    svc = Service(stack, "fuzz")
    await start(svc)
    template = soak_job(stack, "fz-template", steps=5)
    fuzzer = CommandFuzzer(
        soak.rng, template, MAX_COMMAND_BYTES, huge_tags=not soak.args.fuzz_spare_tags
    )
    good = [soak_job(stack, f"fz-good-{i}", steps=20) for i in range(GOOD_FUZZ_JOBS)]
    every = max(1, count // GOOD_FUZZ_JOBS)
    sent_bytes = 0
    try:
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            DeadLetters(soak.bootstrap, stack.dead_letter_topic) as letters,
            Producer(soak.bootstrap) as producer,
        ):
            batch: list[tuple[bytes, bytes | None]] = []
            for n in range(count):
                if n % every == 0 and n // every < len(good):
                    await producer.send_many(stack.commands_topic, batch)
                    batch = []
                    await producer.submit(stack.commands_topic, good[n // every])
                batch.append(fuzzer.malformed(n))
                sent_bytes += len(batch[-1][0])
                if len(batch) >= 200 or sum(len(v) for v, _ in batch) > 4_000_000:
                    await producer.send_many(stack.commands_topic, batch)
                    batch = []
                    await letters.poll()
                if n % 1000 == 999:
                    say(f"fuzz: {n + 1}/{count} sent, {letters.records} dead-lettered")
            await producer.send_many(stack.commands_topic, batch)
            await producer.submit(stack.commands_topic, *good[len(range(0, count, every)) :])
            say(f"fuzz: all {count} sent ({sent_bytes / 1e6:.1f} MB); kinds {dict(fuzzer.kinds)}")
            good_ids = [job.job_id for job in good]
            quiet_since = time.monotonic()
            while len(letters.origins) < count or not ended(events, *good_ids)():
                fresh = await letters.poll() + await events.poll()
                if fresh:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 120:
                    say("fuzz: nothing new for 120 s; stopped waiting")
                    break
            await events.settle()
            soak.audit.add(events.audit())
            completed = sum(
                1
                for job_id in good_ids
                if [type(e) for e in events.terminals(job_id)] == [CompletedEventV1]
            )
        restarts = svc.metric("model_trainer_worker_restarts_total")
    finally:
        alive = svc.alive()
        await stop(svc)
    crashes = (0 if alive else 1) + max(0, len(svc.said("service started")) - 1)
    soak.figures.update(
        fuzz_commands=count,
        fuzz_spare_tags=soak.args.fuzz_spare_tags,
        fuzz_malformed_sent=count,
        fuzz_bytes_sent=sent_bytes,
        fuzz_kinds=dict(fuzzer.kinds),
        fuzz_crashes=crashes,
        fuzz_worker_restarts=restarts,
        fuzz_dead_lettered=len(letters.origins),
        fuzz_dead_letter_records=letters.records,
        fuzz_dead_letter_codes=letters.codes,
        fuzz_good_completed=completed,
    )
    soak.target(crashes == 0, f"fuzz: the service crashed or restarted {crashes} times")
    soak.target(
        len(letters.origins) == count and letters.records == count,
        f"fuzz: {letters.records} dead letters ({len(letters.origins)} distinct) for "
        f"{count} malformed commands",
    )
    soak.target(completed == GOOD_FUZZ_JOBS, f"fuzz: {completed} of {GOOD_FUZZ_JOBS} good jobs")


async def load(soak: Soak) -> None:
    """Tiny jobs (1-3 steps) over two instances of one group, one worker each."""
    count = soak.args.load_jobs
    stack = soak.stack("load")
    instances = [Service(stack, f"load-{x}", instance_id=f"load-{x}") for x in "ab"]
    await start(*instances)
    jobs: list[SubmitJobV1] = [
        soak_job(stack, f"load-{i}", steps=soak.rng.randint(1, 3)) for i in range(count)
    ]
    ids = [job.job_id for job in jobs]
    try:
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            Producer(soak.bootstrap) as producer,
        ):
            for _ in range(240):  # both instances own partitions before the clock starts
                if all(svc.said("partitions assigned") for svc in instances):
                    break
                await asyncio.sleep(0.5)
            began = time.monotonic()
            await producer.submit(stack.commands_topic, *jobs)
            say(f"load: {count} jobs sent in {time.monotonic() - began:.1f}s")
            reported = began
            while not ended(events, *ids)():
                if not await events.poll() and time.monotonic() - began > 120 + count * 5:
                    raise TimeoutError(f"load: {sum(map(events.ended, ids))} of {count} ended")
                if time.monotonic() - reported > 30:
                    reported = time.monotonic()
                    done = sum(map(events.ended, ids))
                    say(f"load: {done}/{count} ended after {reported - began:.0f}s")
            took = time.monotonic() - began
            await events.settle()
            audit = events.audit()
            soak.audit.add(audit)
            terminal = sum(map(events.ended, ids))
            once = sum(len(events.terminals(i)) == 1 for i in ids)
            completed = sum(
                [type(e) for e in events.terminals(i)] == [CompletedEventV1] for i in ids
            )
    finally:
        crashed = [svc.name for svc in instances if not svc.alive()]
        await stop(*instances)
    accepted = {svc.name: len(svc.said("job accepted")) for svc in instances}
    soak.figures.update(
        load_jobs=count,
        load_terminal=terminal,
        load_completed=completed,
        load_wall_s=round(took, 1),
        load_jobs_per_s=round(count / took, 2),
        load_accepted_by_instance=accepted,
    )
    soak.target(not crashed, f"load: {crashed} exited")
    soak.target(terminal == count and once == count, f"load: {terminal} ended, {once} once")
    soak.target(not audit.duplicates, f"load: duplicates {audit.notes}")


async def make_state_topic(bootstrap: str, topic: str) -> None:
    """The state topic as the service creates it: compacted, four partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}
        await admin.create_topics([NewTopic(topic, TOPIC_PARTITIONS, 1, None, config)])
    finally:
        await admin.close()


def ended_state(job_id: str, now: datetime, rng: random.Random) -> JobStateV1:
    failed = rng.random() < 0.1
    return JobStateV1(
        job_id=job_id,
        user_id=rng.randint(0, 50),
        labels={"team": f"t{rng.randint(0, 9)}", "suite": "soak"},
        status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
        request_digest=f"{rng.getrandbits(256):064x}",
        partition=partition_for_key(job_id.encode(), TOPIC_PARTITIONS),
        attempt=1,
        last_seq=rng.randint(3, 60),
        error_code="TRAINING_DIVERGED" if failed else None,
        submitted_at=now,
        updated_at=now,
    )


async def replay(soak: Soak) -> None:
    """Time a service's start-up replay of a state topic holding ``state_records`` jobs."""
    count = soak.args.state_records
    stack = soak.stack("replay")
    await make_state_topic(soak.bootstrap, stack.state_topic)
    now = datetime.now(UTC)
    began = time.monotonic()
    async with Producer(soak.bootstrap) as producer:
        for first in range(0, count, 10_000):
            records: list[tuple[bytes, bytes | None]] = [
                (encode(ended_state(f"state-{i:07d}", now, soak.rng)), f"state-{i:07d}".encode())
                for i in range(first, min(count, first + 10_000))
            ]
            await producer.send_many(stack.state_topic, records)
    say(f"replay: {count} state records produced in {time.monotonic() - began:.1f}s")
    svc = Service(stack, "replay")
    try:
        await start(svc)
        await asyncio.sleep(2)
        rss = rss_mb(svc.pid)
        prometheus = svc.metric("process_resident_memory_bytes")
    finally:
        await stop(svc)
    lines = svc.said("job states replayed")
    if not lines:
        raise RuntimeError(f"no 'job states replayed' line: {svc.tail()}")
    seconds = float(str(lines[-1].get("seconds")))
    replayed = int(str(lines[-1].get("records")))
    soak.figures.update(
        state_records=count,
        state_replay_records=replayed,
        state_replay_s=round(seconds, 2),
        state_replay_rss_mb=round(rss, 1),
        state_replay_rss_mb_prometheus=None if prometheus is None else round(prometheus / 2**20, 1),
    )
    say(f"replay: {replayed} records in {seconds:.2f}s; RSS {rss:.0f} MB")
    soak.target(replayed == count, f"replay: {replayed} of {count} records replayed")
    soak.target(seconds <= STATE_REPLAY_TARGET_S, f"replay: {seconds:.1f}s > 10 s")


# ---------------------------------------------------------------------------- zombie


@dataclass
class Fencing:
    """What a read_committed reader sees of one job whose owner was frozen."""

    terminals: list[str]
    completed: bool  # its one terminal event is a completion
    seqs: list[int]
    attempts: list[int]  # of its config events (a run that fails preparing publishes none)
    last_attempt: int  # of any of its events
    stale: int  # events of an attempt older than one whose config was committed before them

    @property
    def seq_reused(self) -> int:
        return len(self.seqs) - len(set(self.seqs))

    @property
    def attempts_repeated(self) -> int:
        """Config events naming an attempt an earlier run of the job already named."""
        return len(self.attempts) - len(set(self.attempts))

    def why_not(self) -> str | None:
        """Why the round failed (None: it passed)."""
        if len(self.terminals) != 1:
            return f"{len(self.terminals)} terminal events {self.terminals}"
        if self.seqs != list(range(len(self.seqs))):
            return f"seqs not 0..{len(self.seqs) - 1} in offset order: {self.seqs}"
        if self.stale:
            return f"{self.stale} events of a stale attempt after the takeover"
        if not self.completed:
            return f"ended {self.terminals[0]}"
        if self.last_attempt < 2:
            return f"not taken over: config attempts {self.attempts}"
        return None


def fencing(events: EventLog, job_id: str) -> Fencing:
    """The job's committed events in offset order: every terminal (not one per seq), the
    seqs as a list, and the events of an attempt older than one whose config came first."""
    seen = events.seen(job_id)
    stale = newest = 0
    for record in seen:
        if isinstance(record.event, ConfigEventV1):
            newest = max(newest, record.event.attempt)
        stale += record.event.attempt < newest
    ends = [r.event for r in seen if is_terminal(r.event)]
    return Fencing(
        terminals=[
            f"{type(e).__name__} seq {e.seq} attempt {e.attempt}"
            + (f" {e.code}: {e.message[:120]}" if isinstance(e, FailedEventV1) else "")
            for e in ends
        ],
        completed=[type(e) for e in ends] == [CompletedEventV1],
        seqs=[r.event.seq for r in seen],
        attempts=[c.attempt for c in events.configs(job_id)],
        last_attempt=max((r.event.attempt for r in seen), default=0),
        stale=stale,
    )


async def owned_by(target: Service, other: Service, stack: Stack, i: int) -> str:
    """A job id on a partition that ``target`` owns now (both own some, none of them both)."""
    for _ in range(240):
        mine, theirs = target.assigned(), other.assigned()
        if mine and theirs and not set(mine) & set(theirs):
            for k in range(1000):
                job_id = f"zombie-{i}-{k}"
                if partition_for_key(job_id.encode(), TOPIC_PARTITIONS) in mine:
                    return job_id
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no settled assignment: {target.assigned()} and {other.assigned()}")


def dispatched(svc: Service, job_id: str, attempt: int) -> bool:
    return any(
        line.get("job_id") == job_id and line.get("attempt") == attempt
        for line in svc.said("job dispatched")
    )


def taken_over(events: EventLog, job_id: str) -> Callable[[], bool]:
    return lambda: events.ended(job_id) or any(c.attempt >= 2 for c in events.configs(job_id))


async def zombie(soak: Soak) -> None:
    """Each round: a job long enough to span the freeze; SIGSTOP its owner's service process
    (``--group``: its whole process group) past the session timeout, until the other
    instance's config event of a later attempt is committed; SIGCONT. Stopped instances
    alternate. A read_committed reader must see one terminal event, seq 0..n-1 in offset
    order, and no event of the frozen attempt after the new attempt's config."""
    rounds, group = soak.args.zombie_rounds, soak.args.group
    session_ms = soak.args.zombie_session_ms
    stack = soak.stack("zombie")
    overrides = {
        "session_timeout_ms": str(session_ms),
        "heartbeat_interval_ms": str(max(100, session_ms // 8)),
    }
    instances = [
        Service(stack, f"zombie-{x}", instance_id=f"zombie-{x}", **overrides) for x in "ab"
    ]
    await start(*instances)
    job_ids: list[str] = []
    paused: list[float] = []
    elsewhere = exits = 0
    try:
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            Producer(soak.bootstrap) as producer,
        ):
            rate = await calibrate(soak, "zombie", stack, events, producer)
            steps = max(200, round(rate * soak.args.zombie_job_s))
            every = max(5, steps // 50)
            for i in range(rounds):
                target, other = instances[i % 2], instances[1 - i % 2]
                job = soak_job(
                    stack,
                    await owned_by(target, other, stack, i),
                    steps=steps,
                    checkpoint_every=every,
                )
                job_ids.append(job.job_id)
                await producer.submit(stack.commands_topic, job)
                await events.until(reached(events, job.job_id, steps // 10), 300, "first steps")
                owner = next((s for s in instances if dispatched(s, job.job_id, 1)), None)
                if owner is None or events.ended(job.job_id):
                    raise RuntimeError(f"{job.job_id}: no owner to freeze (ended early?)")
                elsewhere += owner is not target
                frozen = time.monotonic()
                owner.freeze(group=group)
                try:
                    await events.until(
                        taken_over(events, job.job_id), session_ms / 1000 + 300, "takeover"
                    )
                finally:
                    owner.thaw(group=group)
                paused.append(time.monotonic() - frozen)
                await events.until(ended(events, job.job_id), 900, f"{job.job_id} end")
                await events.settle(5)  # the thawed instance's buffered commits, if any
                why = fencing(events, job.job_id).why_not()
                say(
                    f"round {i + 1}/{rounds}: froze {owner.name} "
                    f"{'(group) ' if group else ''}for {paused[-1]:.1f}s; "
                    f"{'ok' if why is None else why}"
                )
                for x, svc in enumerate(instances):
                    if not svc.alive():
                        exits += 1
                        say(f"{svc.name} exited: {svc.tail(5)}")
                        instances[x] = Service(stack, svc.name, instance_id=svc.name, **overrides)
                        await start(instances[x])
            await events.settle(10)  # late commits of a zombie show here
            verdicts = {job_id: fencing(events, job_id) for job_id in job_ids}
            soak.audit.add(events.audit())
    finally:
        await stop(*instances)
    failed = {j: w for j, v in verdicts.items() if (w := v.why_not()) is not None}
    reused = sum(v.seq_reused for v in verdicts.values())
    per_job = Counter(len(v.terminals) for v in verdicts.values())
    soak.figures.update(
        zombie_group=group,
        zombie_rounds=rounds,
        zombie_rounds_ok=rounds - len(failed),
        zombie_seq_reused=reused,
        zombie_terminals_per_job={str(k): n for k, n in sorted(per_job.items())},
        zombie_stale_events=sum(v.stale for v in verdicts.values()),
        zombie_attempts={j: v.attempts for j, v in verdicts.items()},
        zombie_attempts_repeated=sum(v.attempts_repeated for v in verdicts.values()),
        zombie_job_steps=steps,
        zombie_session_timeout_ms=session_ms,
        zombie_frozen_s_max=round(max(paused, default=0.0), 1),
        zombie_frozen_s_mean=round(sum(paused) / max(1, len(paused)), 1),
        zombie_owner_not_the_chosen=elsewhere,
        zombie_instance_exits=exits,
    )
    say(f"zombie_rounds_ok {rounds - len(failed)} of {rounds}")
    say(f"seq_reused {reused}")
    say(f"terminals per job: {dict(per_job)} (terminal events: jobs)")
    for job_id, why in failed.items():
        say(f"zombie: {job_id}: {why}")
    soak.target(not failed, f"zombie: {len(failed)} of {rounds} rounds not ok: {failed}")
    soak.target(reused == 0, f"zombie: {reused} seqs reused")


# ---------------------------------------------------------------------------- poison


def answered(
    sent: list[tuple[str | None, tuple[int, int]]], events: EventLog, letters: DeadLetters
) -> tuple[int, int]:
    """Of the commands sent: how many were dead-lettered, and how many others have an event
    of their job (a refusal, a cancel's JOB_NOT_FOUND, a forwarded job's run)."""
    lettered = evented = 0
    for job_id, (partition, offset) in sent:
        if (str(partition).encode(), str(offset).encode()) in letters.origins:
            lettered += 1
        elif job_id is not None and job_id in events.by_job:
            evented += 1
    return lettered, evented


async def poison(soak: Soak) -> None:
    """Valid-looking commands with hostile values and keys at one instance, then a good job:
    the service never exits, every command is answered, the good job completes."""
    count = soak.args.poison_commands
    stack = soak.stack("poison")
    make_hostile_tree(stack.data_root)
    svc = Service(stack, "poison")
    await start(svc)
    hostile = HostileCommands(soak.rng, soak_job(stack, "px-template", steps=2), TOPIC_PARTITIONS)
    good = soak_job(stack, "px-good", steps=20)
    sent: list[tuple[str | None, tuple[int, int]]] = []
    began = time.monotonic()
    try:
        async with (
            EventLog(soak.bootstrap, stack.events_topic) as events,
            DeadLetters(soak.bootstrap, stack.dead_letter_topic) as letters,
            Producer(soak.bootstrap) as producer,
        ):
            batch: list[Routed] = []
            for n in range(count + 1):
                if n < count:
                    batch.append(hostile.command(n))
                size = sum(len(v) + len(k or b"") for v, k, _ in batch)
                if batch and (n == count or len(batch) >= 200 or size > 4_000_000):
                    written = await producer.send_routed(stack.commands_topic, batch)
                    for (value, key, _), where in zip(batch, written, strict=True):
                        job_id = salvage_job_id(value)
                        keyed = job_id is not None and key == job_id.encode()
                        sent.append((job_id if keyed else None, where))
                    batch = []
                    await letters.poll()
                if n % 1000 == 999:
                    say(f"poison: {n + 1}/{count} sent, {letters.records} dead-lettered")
            await producer.submit(stack.commands_topic, good)
            say(
                f"poison: all {count} sent in {time.monotonic() - began:.0f}s; "
                f"kinds {dict(hostile.kinds)}"
            )
            quiet_since = time.monotonic()
            while sum(answered(sent, events, letters)) < count or not events.ended(good.job_id):
                if await letters.poll() + await events.poll():
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 120:
                    say("poison: nothing new for 120 s; stopped waiting")
                    break
            took = time.monotonic() - began
            await events.settle()
            soak.audit.add(events.audit())
            lettered, evented = answered(sent, events, letters)
            codes = Counter(
                str(e.code)
                for job_id in events.by_job
                for e in events.events(job_id)
                if isinstance(e, FailedEventV1)
            )
            # The untyped answers, by what they say (the first 120 characters), to be typed next.
            internal = Counter(
                e.message[:120]
                for job_id in events.by_job
                for e in events.events(job_id)
                if isinstance(e, FailedEventV1) and str(e.code) == "INTERNAL_ERROR"
            )
            done = [type(e) for e in events.terminals(good.job_id)] == [CompletedEventV1]
    finally:
        alive = svc.alive()
        await stop(svc)
    exits = (0 if alive else 1) + max(0, len(svc.said("service started")) - 1)
    soak.figures.update(
        poison_commands=count,
        poison_kinds=dict(hostile.kinds),
        service_exits=exits,
        poison_answered=lettered + evented,
        poison_dead_lettered=lettered,
        poison_answered_by_event=evented,
        poison_dead_letter_codes=letters.codes,
        poison_failed_event_codes=dict(codes),
        poison_internal_errors=dict(internal.most_common(10)),
        poison_good_job_completed=done,
        poison_s=round(took, 1),
    )
    say(
        f"service_exits {exits}; answered {lettered + evented} of {count} "
        f"({lettered} dead letters, {evented} by an event); good job completed: {done}; "
        f"{took:.0f}s"
    )
    soak.target(exits == 0, f"poison: the service exited or restarted {exits} times")
    soak.target(lettered + evented == count, f"poison: {lettered + evented} of {count} answered")
    soak.target(done, "poison: the good job did not complete")


RUNNERS: dict[str, Callable[[Soak], Awaitable[None]]] = {
    "kill9": kill9,
    "outage": outage,
    "fuzz": fuzz,
    "load": load,
    "replay": replay,
    "zombie": zombie,
    "poison": poison,
}


async def run(soak: Soak, sections: list[str]) -> None:
    timings: dict[str, float] = {}
    soak.figures["sections_s"] = timings
    for name in sections:
        say(f"== {name}")
        began = time.monotonic()
        try:
            await RUNNERS[name](soak)
        except Exception as exc:
            soak.missed.append(f"{name}: {type(exc).__name__}: {exc}"[:2000])
            say(f"{name} FAILED: {type(exc).__name__}: {exc}")
        finally:
            timings[name] = round(time.monotonic() - began, 1)
            left = kill_leftovers()
            if left:
                soak.missed.append(f"{name}: {left} service processes left running")
        say(f"== {name} done in {timings[name]:.0f}s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small parameters (development)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--kill9-rounds", type=int)
    parser.add_argument("--kill9-job-s", type=float, default=10.0, help="each job's length")
    parser.add_argument("--broker-outage-s", type=int)
    parser.add_argument("--fuzz-commands", type=int)
    parser.add_argument(
        "--fuzz-spare-tags",
        action="store_true",
        help="no huge strings in the type tag (its refusal quotes it, twice)",
    )
    parser.add_argument("--load-jobs", type=int)
    parser.add_argument("--state-records", type=int)
    parser.add_argument("--zombie-rounds", type=int)
    parser.add_argument("--zombie-job-s", type=float, default=40.0, help="each job's length")
    parser.add_argument(
        "--zombie-session-ms", type=int, default=8000, help="the instances' session timeout"
    )
    parser.add_argument(
        "--group",
        action="store_true",
        help="zombie: freeze the owner's whole process group (its workers too)",
    )
    parser.add_argument("--poison-commands", type=int)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    sections = [name for name in SECTIONS if name in args.only.split(",")]
    signal.signal(signal.SIGTERM, _terminate)
    # aiokafka's reconnect attempts while the broker is away: not progress.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = LocalKafka(workdir=root / "kafka", port=free_port())
    soak = Soak(broker=broker, root=root, args=args, rng=random.Random(args.seed))
    began = time.monotonic()
    try:
        say(f"work folder {root}; starting a local Kafka broker")
        broker.start()
        asyncio.run(run(soak, sections))
    except BaseException as exc:
        soak.missed.append(f"aborted: {type(exc).__name__}: {exc}")
        raise
    finally:
        left = kill_leftovers()
        if left:
            say(f"killed {left} leftover service processes")
        broker.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        report(soak, sections, time.monotonic() - began)
    return 0 if not soak.missed else 1


def report(soak: Soak, sections: list[str], wall_s: float) -> None:
    """The last stdout line: every figure, the overall ones, and the verdict."""
    soak.target(soak.audit.seq_gaps == 0, f"seq gaps: {soak.audit.notes}")
    soak.target(soak.audit.duplicates == 0, f"duplicates: {soak.audit.notes}")
    overall: dict[str, object] = {
        "sections": sections,
        "seq_gaps": soak.audit.seq_gaps,
        "duplicates": soak.audit.duplicates,
        "wall_s": round(wall_s, 1),
        "passed": not soak.missed,
        "missed": soak.missed,
    }
    print(json.dumps({**soak.figures, **overall}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
