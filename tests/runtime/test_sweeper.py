"""The sweep's shell on a real folder: listing, deleting, counting, and its loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
from model_trainer.core.sweep import Kind, Retention
from model_trainer.metrics import REGISTRY
from model_trainer.settings import Settings
from model_trainer.shell.publisher import Publisher
from model_trainer.shell.sweeper import Swept, committed_ends, sweep, sweep_forever
from structlog.testing import capture_logs

from .book_helpers import cancel, new_book, record, submit

DAY = 24 * 3600.0
RETENTION = Retention(token_cache_s=7 * DAY)


def put(root: Path, relative: str, *, age_s: float = 0.0, size: int = 10) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    age(path, age_s)
    return path


def age(path: Path, age_s: float) -> None:
    then = time.time() - age_s
    os.utime(path, (then, then), follow_symlinks=False)


def tree(root: Path) -> set[str]:
    found = root.rglob("*")
    return {p.relative_to(root).as_posix() for p in found if p.is_symlink() or not p.is_dir()}


def test_a_sweep_deletes_what_is_stale_or_ended_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    put(root, "done/checkpoints/checkpoint.pt", size=300)
    put(root, "done/checkpoints/checkpoint.pt.sha256", size=64)
    put(root, "done/manifest.json")
    put(root, "live/checkpoints/checkpoint.pt", age_s=30 * DAY)
    put(root, "live/.manifest.json.123.tmp", age_s=2 * 3600, size=7)  # a killed writer's
    put(root, "live/.metrics.jsonl.9.tmp")  # a live writer's
    put(root, "old/.staging/model.safetensors", age_s=2 * 3600, size=50)
    age(root / "old/.staging", 2 * 3600)
    put(root, ".token-cache/old.npy", age_s=8 * DAY, size=1000)
    put(root, ".token-cache/old.tokenizer.json", age_s=8 * DAY, size=20)
    put(root, ".token-cache/new.npy", age_s=6 * DAY)
    put(root, ".token-cache/new.tokenizer.json", age_s=6 * DAY)
    put(root, ".token-cache/.new.npy.77.tmp", age_s=2 * 3600, size=5)
    # Symlinks are never followed nor deleted, whatever their name or age.
    outside = put(tmp_path, "elsewhere/precious.bin", age_s=30 * DAY)
    (root / "live/.link.json.1.tmp").symlink_to(outside)
    age(root / "live/.link.json.1.tmp", 30 * DAY)
    (root / "done/checkpoints-link").symlink_to(outside.parent)

    swept = sweep(root, {"done", "never-ran"}, time.time(), RETENTION)

    assert tree(root) == {
        "done/manifest.json",
        "done/checkpoints-link",
        "live/checkpoints/checkpoint.pt",
        "live/.metrics.jsonl.9.tmp",
        "live/.link.json.1.tmp",
        ".token-cache/new.npy",
        ".token-cache/new.tokenizer.json",
    }
    assert outside.is_file()
    assert not (root / "old/.staging").exists()
    assert swept.count == {Kind.CHECKPOINTS: 1, Kind.TEMP: 3, Kind.TOKEN_CACHE: 1}
    assert swept.freed == {Kind.CHECKPOINTS: 364, Kind.TEMP: 7 + 50 + 5, Kind.TOKEN_CACHE: 1020}
    assert swept.failed == 0


def test_a_missing_root_or_a_sweep_racing_another_is_no_error(tmp_path: Path) -> None:
    assert sweep(tmp_path / "absent", {"a"}, time.time(), RETENTION) == Swept()
    put(tmp_path, "a/checkpoints/checkpoint.pt")
    racing = sweep(tmp_path, {"a"}, time.time(), RETENTION)
    assert racing.count[Kind.CHECKPOINTS] == 1
    assert sweep(tmp_path, {"a"}, time.time(), RETENTION) == Swept()  # nothing left


def test_each_sweep_is_logged_once_and_counted(tmp_path: Path) -> None:
    def total(name: str, kind: Kind) -> float:
        return REGISTRY.get_sample_value(name, {"kind": kind.value}) or 0.0

    before = total("model_trainer_swept_total", Kind.TOKEN_CACHE)
    freed = total("model_trainer_swept_bytes_total", Kind.TOKEN_CACHE)
    put(tmp_path, ".token-cache/k.npy", age_s=8 * DAY, size=100)
    with capture_logs() as logs:
        sweep(tmp_path, set(), time.time(), RETENTION).report(0.25)
    assert total("model_trainer_swept_total", Kind.TOKEN_CACHE) == before + 1
    assert total("model_trainer_swept_bytes_total", Kind.TOKEN_CACHE) == freed + 100
    (line,) = [line for line in logs if line["event"] == "artifacts swept"]
    assert line["token_cache"] == 1
    assert line["bytes_freed"] == 100
    assert (line["temp"], line["checkpoints"], line["failed"]) == (0, 0, 0)


def test_ends_are_known_only_once_everything_published_is_committed() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(cancel("a"), 1), now=1)
    book.tick(now=10)
    book.died("a", 1, -9, now=11)
    quiet = Publisher(Settings(), transactional_id="t")
    assert committed_ends(book, quiet) == {"a"}


async def test_a_publisher_with_batches_not_committed_hides_the_ends() -> None:
    book = new_book()
    busy = Publisher(Settings(), transactional_id="t")
    busy.publish([])  # not committed: no broker, and nothing runs it
    assert committed_ends(book, busy) is None


async def test_the_loop_sweeps_at_once_then_every_interval(tmp_path: Path) -> None:
    settings = Settings(artifacts_root=tmp_path, sweep_interval_s=0.2)
    put(tmp_path, "a/checkpoints/checkpoint.pt")
    asked: list[str] = []

    def ended() -> set[str] | None:
        asked.append("?")
        return None if len(asked) < 3 else {"a"}  # unsettled twice, as while publishing

    async def until_gone(path: Path) -> None:
        with anyio.fail_after(5):
            while True:
                if not await anyio.Path(path).exists():
                    return
                await anyio.sleep(0.02)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sweep_forever, settings, ended)
        await until_gone(tmp_path / "a/checkpoints")
        stale = put(tmp_path, "b/.manifest.json.4.tmp", age_s=2 * 3600)
        await until_gone(stale)  # by the next sweep
        tasks.cancel_scope.cancel()
    assert len(asked) >= 4
