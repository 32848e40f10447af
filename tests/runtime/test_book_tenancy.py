"""Tenants in the book: a command acts for the tenant whose topic it came on. Another
tenant's cancel is JOB_FORBIDDEN (the admin's is not), building on another tenant's job is
JOB_FORBIDDEN, reusing its job id is JOB_ID_CONFLICT, and each tenant's runs keep their files
under its own folder; offsets, commits and tombstones stay per topic partition."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from model_trainer.book.book import JobBook
from model_trainer.book.effects import FORWARDED_FROM, FORWARDED_TENANT, Effect, Publish, Run, Stop
from model_trainer.book.records import TP, Record
from model_trainer.core.stop import StopReason
from model_trainer.core.sweep import Retention
from model_trainer.core.tenancy import Tenancy, tenant_root, tenant_url
from model_trainer.settings import Settings
from model_trainer.shell.journal import policy_of
from model_trainer.shell.sweeper import listing, sweep
from model_trainer.shell.wire import Outgoing
from model_trainer_client.settings import ClientSettings
from model_trainer_contracts import (
    CancelJobV1,
    FailedEventV1,
    JobStatus,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
    encode,
)

from .book_helpers import (
    TOPIC,
    cancel,
    commits,
    completed,
    policy,
    published,
    records_of,
    refuse_bad,
    states,
)

C = ModelTrainerErrorCode
ALICE, BOB, OPS = f"{TOPIC}.alice", f"{TOPIC}.bob", f"{TOPIC}.ops"
TOPICS = [TOPIC, ALICE, BOB, OPS]


def crc32(key: bytes, count: int) -> int:
    return zlib.crc32(key) % count


def tenant_book() -> JobBook:
    rules = dataclasses.replace(
        policy(slots=4), tenants=("alice", "bob"), admin_tenant="ops", artifacts_url="s3://b/a"
    )
    book = JobBook(rules, refuse_bad, partitioner=crc32, partition_count=2)
    tps = [TP(topic, p) for topic in TOPICS for p in range(2)]
    book.assign(tps, dict.fromkeys(tps, 0))
    return book


def job(job_id: str, **fields: object) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 7,
            "backend": "char_lstm",
            "data": {"inline_text": "hello world " * 10},
            "training": {"max_steps": 10},
            **fields,
        }
    )


def on(
    topic: str,
    command: SubmitJobV1 | CancelJobV1,
    offset: int,
    headers: Sequence[tuple[str, bytes]] = (),
) -> Record:
    """``command`` as a client produces it to ``topic``: keyed by job_id, partitioned by it."""
    key = command.job_id.encode()
    return Record(topic, crc32(key, 2), offset, key, encode(command), [*headers])


def arrived(moved: Outgoing, offset: int) -> Record:
    """A forwarded record as its partition's owner reads it."""
    assert moved.partition is not None
    assert moved.value is not None
    return Record(moved.topic, moved.partition, offset, moved.key, moved.value, moved.headers)


def forwarded(effects: Sequence[Effect]) -> Outgoing:
    [moved] = [
        r for e in effects if isinstance(e, Publish) for r in records_of(e) if r.topic in TOPICS
    ]
    return moved


def failures(effects: Sequence[Effect]) -> list[tuple[str, int, ModelTrainerErrorCode]]:
    return [(e.job_id, e.seq, e.code) for e in published(effects) if isinstance(e, FailedEventV1)]


def runs(effects: Sequence[Effect]) -> list[Run]:
    return [e for e in effects if isinstance(e, Run)]


def test_a_job_belongs_to_its_topics_tenant_and_keeps_its_files_in_the_tenants_folder() -> None:
    book = tenant_book()
    assert [book.tenant_of(t) for t in (ALICE, TOPIC, "jobs.eve")] == ["alice", "default", None]
    started = book.command(on(ALICE, job("a1"), 0), now=0)
    [run] = runs(started)
    assert run.order.artifacts_root == Path("/artifacts/.tenants/alice")
    assert run.order.artifacts_url == "s3://b/a/.tenants/alice"
    assert [s.tenant for s in states(started)] == ["alice", "alice"]
    [plain] = runs(book.command(on(TOPIC, job("d1"), 0), now=0))
    assert (plain.order.artifacts_root, plain.order.artifacts_url) == (
        Path("/artifacts"),
        "s3://b/a",
    )
    assert book.states["d1"].tenant == "default"


def test_another_tenants_cancel_is_forwarded_to_the_job_and_refused_job_forbidden() -> None:
    book = tenant_book()
    book.command(on(ALICE, job("a1"), 0), now=0)
    home = book.jobs["a1"].record
    sent = book.command(on(BOB, cancel("a1"), 0), now=1)
    moved = forwarded(sent)
    assert (moved.topic, moved.partition) == home  # the job's own partition numbers the answer
    assert dict(moved.headers)[FORWARDED_TENANT] == b"bob"
    assert commits(sent) == {TP(BOB, on(BOB, cancel("a1"), 0).partition): 1}
    answer = book.command(arrived(moved, 1), now=2)
    assert failures(answer) == [("a1", 1, C.JOB_FORBIDDEN)]  # the seq after its queued event
    assert [e for e in answer if isinstance(e, Stop)] == []
    assert "a1" in book.jobs  # still running
    assert book.states["a1"].status is JobStatus.RUNNING
    # Alice's own cancel stops it.
    stop = book.command(on(ALICE, cancel("a1"), 2), now=3)
    assert [(e.job_id, e.reason) for e in stop if isinstance(e, Stop)] == [
        ("a1", StopReason.CANCEL)
    ]


def test_the_admin_tenant_may_cancel_any_job() -> None:
    book = tenant_book()
    book.command(on(ALICE, job("a1"), 0), now=0)
    moved = forwarded(book.command(on(OPS, cancel("a1"), 0), now=1))
    assert dict(moved.headers)[FORWARDED_TENANT] == b"ops"
    stop = book.command(arrived(moved, 1), now=2)
    assert [e.job_id for e in stop if isinstance(e, Stop)] == ["a1"]


def test_a_cancel_of_a_default_jobs_from_a_tenant_is_refused_too() -> None:
    book = tenant_book()
    book.command(on(TOPIC, job("d1"), 0), now=0)
    moved = forwarded(book.command(on(BOB, cancel("d1"), 0), now=1))
    assert moved.topic == TOPIC
    assert [c for _, _, c in failures(book.command(arrived(moved, 1), now=2))] == [C.JOB_FORBIDDEN]


def test_init_from_or_the_tokenizer_of_another_tenants_job_is_job_forbidden() -> None:
    book = tenant_book()
    book.command(on(ALICE, job("a1"), 0), now=0)
    running = book.command(on(BOB, job("b1", init_from="a1"), 0), now=1)  # a1 still running
    assert [c for _, _, c in failures(running)] == [C.JOB_FORBIDDEN]
    assert runs(running) == []
    book.ended("a1", 1, completed("a1"), now=2)
    tok = job("b2", tokenizer={"kind": "job", "job_id": "a1"})
    ended = book.command(on(BOB, tok, 1), now=3)  # a1 ended: its state tells the owner
    assert [c for _, _, c in failures(ended)] == [C.JOB_FORBIDDEN]
    assert book.states["b2"].status is JobStatus.FAILED
    # Alice builds on her own job.
    assert [
        r.job_id for r in runs(book.command(on(ALICE, job("a2", init_from="a1"), 1), now=4))
    ] == ["a2"]


def test_a_job_id_held_by_another_tenant_is_refused_whatever_the_spec() -> None:
    book = tenant_book()
    book.command(on(ALICE, job("a1"), 0), now=0)
    before = book.states["a1"].last_seq
    moved = forwarded(book.command(on(BOB, job("a1"), 0), now=1))  # the same spec
    assert dict(moved.headers)[FORWARDED_TENANT] == b"bob"
    assert book.admits(arrived(moved, 1)) is None  # no files checked for it either
    answer = book.command(arrived(moved, 1), now=2)
    assert failures(answer) == [("a1", before + 1, C.JOB_ID_CONFLICT)]
    assert runs(answer) == []
    assert book.jobs["a1"].tenant == "alice"


def test_once_the_state_is_gone_the_id_is_free_and_its_run_is_in_the_new_tenants_folder() -> None:
    book = tenant_book()
    book.command(on(ALICE, job("a1"), 0), now=0)
    book.ended("a1", 1, completed("a1"), now=1)
    book.forget("a1")  # its tombstone, past retention
    [run] = runs(book.command(on(BOB, job("a1"), 0), now=2))
    assert run.order.artifacts_root == tenant_root(Path("/artifacts"), "bob")
    assert book.states["a1"].tenant == "bob"


def test_a_forged_tenant_header_can_only_lower_the_writers_rights() -> None:
    book = tenant_book()
    book.command(on(ALICE, job("a1"), 0), now=0)
    home = book.jobs["a1"].record
    fake = [(FORWARDED_FROM, b"0:0"), (FORWARDED_TENANT, b"ops")]
    # Bob claims to be the admin, on his own topic: a1 is not there, and a forwarded
    # command is never forwarded again.
    bob = on(BOB, cancel("a1"), 0, fake)
    [letter] = [
        r for e in book.command(bob, now=1) if isinstance(e, Publish) for r in records_of(e)
    ]
    assert (letter.topic, dict(letter.headers)["error_code"]) == ("dlq", b"JOB_ON_OTHER_PARTITION")
    # Alice naming another tenant on her own topic loses her own submit.
    claimed = Record(
        ALICE,
        home.partition,
        1,
        b"a9",
        encode(job("a9")),
        [(FORWARDED_FROM, b"0:0"), (FORWARDED_TENANT, b"bob")],
    )
    out = book.command(claimed, now=2)
    assert [c for _, _, c in failures(out)] == [C.JOB_ID_CONFLICT]
    # A tenant nobody knows: dead-lettered.
    unknown = Record(
        ALICE,
        0,
        2,
        b"a8",
        encode(job("a8")),
        [(FORWARDED_FROM, b"0:0"), (FORWARDED_TENANT, b"mallory")],
    )
    [letter] = [
        r for e in book.command(unknown, now=3) if isinstance(e, Publish) for r in records_of(e)
    ]
    assert dict(letter.headers)["error_code"] == b"COMMAND_INVALID"


def test_a_record_from_a_topic_of_no_tenant_is_dead_lettered() -> None:
    book = tenant_book()
    out = book.command(Record("jobs.eve", 0, 0, b"e1", encode(job("e1")), []), now=0)
    [letter] = [r for e in out if isinstance(e, Publish) for r in records_of(e)]
    assert (letter.topic, dict(letter.headers)["error_code"]) == ("dlq", b"COMMAND_INVALID")
    assert commits(out) == {TP("jobs.eve", 0): 1}
    assert book.jobs == {}


def test_offsets_commits_and_tombstones_stay_per_topic_partition() -> None:
    book = tenant_book()
    a, b = job("x1"), job("x2")
    ra = Record(ALICE, 0, 0, b"x1", encode(a), [])
    rb = Record(BOB, 0, 0, b"x2", encode(b), [])
    book.partition_count = 0  # jobs live where they came
    book.command(ra, now=0)
    book.command(rb, now=0)
    ended = book.ended("x2", 1, completed("x2"), now=1)
    assert commits(ended) == {TP(BOB, 0): 1}  # Bob's end commits Bob's partition only
    assert [e.via for e in ended if isinstance(e, Publish)] == [TP(BOB, 0)]
    # Released, Alice's partition 0 takes back only its own jobs' states.
    book.release([TP(ALICE, 0)])
    assert "x1" not in book.states
    assert "x2" in book.states
    assert book.unsure([TP(BOB, 0)]) == {}
    # Expired: Bob's state is tombstoned through Bob's partition.
    gone = book.tick(now=1 + book.policy.state_retention_s + 61)
    tombs = [(e.via, r.key) for e in gone if isinstance(e, Publish) for r in records_of(e)]
    assert tombs == [(TP(BOB, 0), b"x2")]


def test_a_refused_record_ends_its_job_only_on_the_jobs_own_topic() -> None:
    book = tenant_book()
    book.partition_count = 0
    book.command(Record(ALICE, 0, 0, b"x1", encode(job("x1")), []), now=0)
    book.release([TP(ALICE, 0)])  # the job went; its state stays as read (none here)
    book.load(states(book.command(Record(BOB, 0, 0, b"y1", encode(job("y1")), []), now=0))[-1])
    book.jobs.clear()
    book.runs.clear()
    error = ModelTrainerError(C.COMMAND_CRASHED, "crashed")
    other = book.refuse(Record(ALICE, 0, 5, b"y1", encode(job("y1")), []), error, now=1)
    assert failures(other) == []  # y1 lives on Bob's topic: only the dead letter
    own = book.refuse(Record(BOB, 0, 5, b"y1", encode(job("y1")), []), error, now=1)
    assert [c for _, _, c in failures(own)] == [C.COMMAND_CRASHED]


def test_tenancy_names_topics_and_folders() -> None:
    tenancy = Tenancy("jobs", ("alice", "ops"), "ops")
    assert tenancy.topics() == ["jobs", "jobs.alice", "jobs.ops"]
    assert [tenancy.tenant_of(t) for t in ("jobs", "jobs.alice", "jobs.eve", "other")] == [
        "default",
        "alice",
        None,
        None,
    ]
    assert Tenancy("jobs", (), "ops").names == ("ops",)
    assert tenant_url(None, "alice") is None
    assert tenant_url("s3://b/", "default") == "s3://b/"
    for bad in ("default", "a.b", "Alice", ""):
        with pytest.raises(ValueError, match="tenant"):
            Tenancy("jobs", (bad,))


def test_the_settings_name_the_tenants_topics_and_refuse_a_clash() -> None:
    settings = Settings(tenants="alice, bob,alice", admin_tenant="ops")
    assert settings.tenancy.topics() == [
        "trainer.jobs",
        "trainer.jobs.alice",
        "trainer.jobs.bob",
        "trainer.jobs.ops",
    ]
    policy_ = policy_of(settings)
    assert (policy_.tenants, policy_.admin_tenant) == (("alice", "bob"), "ops")
    with pytest.raises(ValueError, match=r"another topic: \['trainer.jobs.dlq'\]"):
        Settings(tenants="dlq")
    with pytest.raises(ValueError, match="tenant 'Bob'"):
        Settings(tenants="Bob")
    # The client: MODEL_TRAINER_TENANT picks the tenant's topic.
    env = {"MODEL_TRAINER_COMMANDS_TOPIC": "jobs", "MODEL_TRAINER_TENANT": "bob"}
    assert ClientSettings.from_env(env=env).commands_topic == "jobs.bob"
    assert ClientSettings.from_env(env={"MODEL_TRAINER_TENANT": "default"}).commands_topic == (
        "trainer.jobs"
    )


def test_the_sweep_takes_each_tenants_folder_on_its_own(tmp_path: Path) -> None:
    alice = tenant_root(tmp_path, "alice")
    for root in (tmp_path, alice):
        (root / "done" / "checkpoints").mkdir(parents=True)
        (root / "done" / "checkpoints" / "step-1.pt").write_bytes(b"x")
        (root / "done" / "manifest.json").write_text("{}")
    assert [f.path.parts[0] for f in listing(tmp_path)] == ["done"] * 3  # no .tenants
    sweep(alice, {"done"}, now=0.0, retention=Retention(token_cache_s=1.0))
    assert not (alice / "done" / "checkpoints").exists()
    assert (alice / "done" / "manifest.json").is_file()
    assert (tmp_path / "done" / "checkpoints" / "step-1.pt").is_file()  # not swept from here
