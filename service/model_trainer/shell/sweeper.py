"""The sweep of the artifacts root, at start-up and every ``sweep_interval_s``.

It lists the root, asks :func:`~.core.sweep.plan` what to delete (temp files a killed writer
left, token-cache entries unused for ``token_cache_retention_s``, checkpoints of ended jobs),
deletes that in a worker thread, logs one line and counts it in Prometheus. Another instance
sweeping the same shared root at once is harmless: what is already gone counts as deleted.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import anyio
import anyio.to_thread
import structlog

from model_trainer.book.book import JobBook
from model_trainer.core.sweep import Doomed, Found, Kind, Retention, ended_jobs, plan
from model_trainer.core.tenancy import TENANTS_DIR, tenant_root
from model_trainer.metrics import SWEPT, SWEPT_BYTES
from model_trainer.settings import Settings

log = structlog.get_logger(__name__)
SETTLE_WAIT_S = 60.0  # a sweep waits this long at most for every end to be committed
SETTLE_POLL_S = 0.2


class Pending(Protocol):
    """What the sweep asks of the publishers: batches not yet committed."""

    @property
    def pending(self) -> int: ...


def committed_ends(book: JobBook, publisher: Pending) -> set[str] | None:
    """The jobs that ended for good, their terminal events committed; None while the
    publisher holds uncommitted batches: the book may then know an end that a crash would
    undo, and the job's next owner would resume it from the checkpoints a sweep deleted."""
    if publisher.pending:
        return None
    return ended_jobs(book.states, book.jobs.keys() | book.runs.keys())


def sweeping(
    settings: Settings, book: JobBook, publisher: Pending
) -> Callable[[], Coroutine[object, object, None]]:
    """The service's sweep loop: :func:`sweep_forever` with the ends its book has committed."""
    return lambda: sweep_forever(settings, lambda: committed_ends(book, publisher))


async def sweep_forever(settings: Settings, ended: Callable[[], Collection[str] | None]) -> None:
    """Sweep now, then every ``sweep_interval_s``. ``ended`` says which jobs ended for good
    (None: not known now; asked again shortly). A sweep the file system fails is logged and
    done again at the next interval: it never stops the service."""
    root = settings.artifacts_root
    roots = [root, *(tenant_root(root, name) for name in settings.tenancy.names)]
    retention = Retention(token_cache_s=settings.token_cache_retention_s)
    while True:
        jobs = await _settled(ended)
        started = time.monotonic()
        try:
            for folder in roots:  # each tenant's jobs are in a folder of its own
                # Abandoned on shutdown rather than waited for: deleting again is harmless.
                swept = await anyio.to_thread.run_sync(
                    sweep, folder, jobs, time.time(), retention, abandon_on_cancel=True
                )
                swept.report(time.monotonic() - started)
        except OSError as exc:
            log.warning("artifacts sweep failed", error=repr(exc))
        await anyio.sleep(settings.sweep_interval_s)


async def _settled(ended: Callable[[], Collection[str] | None]) -> Collection[str]:
    """``ended()`` once it knows; no job (every checkpoint kept this time) if it does not
    within ``SETTLE_WAIT_S``, as while the broker is away."""
    for _ in range(round(SETTLE_WAIT_S / SETTLE_POLL_S)):  # polled: the publisher signals none
        jobs = ended()
        if jobs is not None:
            return jobs
        await anyio.sleep(SETTLE_POLL_S)
    log.warning("sweeping without checkpoints: terminal events not committed yet")
    return frozenset()


@dataclass
class Swept:
    """What one sweep deleted (by kind: things and bytes), and what it could not."""

    count: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    freed: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    failed: int = 0

    def report(self, seconds: float) -> None:
        for kind in Kind:
            SWEPT.labels(kind=kind.value).inc(self.count[kind])
            SWEPT_BYTES.labels(kind=kind.value).inc(self.freed[kind])
        log.info(
            "artifacts swept",
            **{kind.value: self.count[kind] for kind in Kind},
            bytes_freed=sum(self.freed.values()),
            failed=self.failed,
            seconds=round(seconds, 3),
        )


def sweep(root: Path, ended: Collection[str], now: float, retention: Retention) -> Swept:
    """List ``root``, plan and delete (blocking: the service runs it in a worker thread)."""
    swept = Swept()
    for doomed in plan(listing(root), ended, now, retention):
        if remove(root, doomed):
            swept.count[doomed.kind] += 1
            swept.freed[doomed.kind] += doomed.size
        else:
            swept.failed += 1
    return swept


def remove(root: Path, doomed: Doomed) -> bool:
    """Delete ``doomed``'s paths in order; False (logged) when one could not be deleted.
    A path already gone (another instance's sweep, or its writer's rename) is fine."""
    for relative in doomed.paths:
        path = root / relative
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue  # something in the folder went meanwhile: the next sweep takes the rest
        except OSError as exc:
            log.warning("artifacts sweep could not delete", path=str(relative), error=str(exc))
            return False
    return True


def listing(root: Path) -> list[Found]:
    """What :func:`~.core.sweep.plan` decides on: regular files two and three levels under
    ``root`` and folders two levels under it (with what they hold summed up). Symlinks are
    never followed or listed; what vanishes while listing is left out."""
    found: list[Found] = []
    for top in _folders(root):
        if top.name == TENANTS_DIR:
            continue  # each tenant's root is swept on its own
        for entry in _entries(top.path):
            relative = PurePosixPath(top.name, entry.name)
            if entry.is_dir(follow_symlinks=False):
                summed = _summed(entry, relative)
                if summed is not None:
                    found.append(summed)
                    found += _files(entry.path, relative)
            elif entry.is_file(follow_symlinks=False):
                found += _stat(entry, relative)
    return found


def _entries(folder: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _folders(folder: Path) -> list[os.DirEntry[str]]:
    return [e for e in _entries(folder) if e.is_dir(follow_symlinks=False)]


def _files(folder: str, relative: PurePosixPath) -> list[Found]:
    found: list[Found] = []
    for entry in _entries(folder):
        if entry.is_file(follow_symlinks=False):
            found += _stat(entry, relative / entry.name)
    return found


def _stat(entry: os.DirEntry[str], relative: PurePosixPath) -> list[Found]:
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return []
    return [Found(relative, folder=False, mtime=st.st_mtime, size=st.st_size)]


def _summed(entry: os.DirEntry[str], relative: PurePosixPath) -> Found | None:
    """The folder with the bytes of every file in it and the newest mtime of all of it."""
    try:
        newest, size = entry.stat(follow_symlinks=False).st_mtime, 0
    except FileNotFoundError:
        return None
    for parent, folders, files in os.walk(entry.path):
        for name in folders + files:
            try:
                st = os.lstat(os.path.join(parent, name))
            except FileNotFoundError:
                continue
            newest = max(newest, st.st_mtime)
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return Found(relative, folder=True, mtime=newest, size=size)
