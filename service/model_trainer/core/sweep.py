"""What the sweep of the artifacts root deletes: a pure decision over a listing of it.

Three things would otherwise grow for ever:

* temp files of atomic writes (``.<name>.<pid>.tmp``) and artifact staging folders that a
  killed writer left behind: deleted once untouched for ``TEMP_AGE_S``, long past any live
  write (a writer's file changes as it writes; a staging folder lives for seconds);
* token-cache entries (``.token-cache/<key>.npy`` and ``<key>.tokenizer.json``) no job has
  used for the retention: a cache hit touches them, so their newest mtime is the last use;
* corpora downloaded from object storage (``.downloads/<key>``) unused for the same
  retention, and partial downloads untouched for ``TEMP_AGE_S``;
* the ``checkpoints`` folders of ended jobs (completed, failed or cancelled), which nothing
  resumes: the service removes them when a terminal event commits, and the sweep catches
  what a crash in between, or a killed run still writing, left.

The listing (:class:`Found`) and the deletions are the shell's (:mod:`model_trainer.shell.sweeper`);
time is passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from model_trainer_contracts import JobStateV1

from .layout import CACHE_DIR, CHECKPOINTS, DOWNLOADS, STAGING, TEMP_NAME

TEMP_AGE_S = 3600.0  # a temp file or staging folder untouched this long has no writer


class Kind(StrEnum):
    TEMP = "temp"  # a temp file or staging folder
    TOKEN_CACHE = "token_cache"  # one entry: its tokens and its tokenizer
    CHECKPOINTS = "checkpoints"  # an ended job's checkpoints folder


@dataclass(frozen=True)
class Found:
    """A file or folder under the artifacts root (files two or three levels down, folders
    two levels down: ``<job_id>/checkpoints``, ``.token-cache/<file>``)."""

    path: PurePosixPath  # relative to the artifacts root
    folder: bool
    mtime: float  # a folder: the newest mtime of it and of everything in it
    size: int  # bytes; a folder: of every file in it


@dataclass(frozen=True)
class Retention:
    token_cache_s: float  # an entry unused this long goes
    temp_s: float = TEMP_AGE_S


@dataclass(frozen=True)
class Doomed:
    """One thing to delete: its paths (relative to the root), in this order, and its bytes."""

    kind: Kind
    paths: tuple[PurePosixPath, ...]
    size: int


def ended_jobs(states: Mapping[str, JobStateV1], busy: Container[str]) -> set[str]:
    """The jobs known to have ended for good: a terminal state, and not ``busy`` (active in
    the book, or a run of it still dying)."""
    return {job_id for job_id, s in states.items() if s.status.terminal and job_id not in busy}


def plan(
    found: Iterable[Found], ended: Collection[str], now: float, retention: Retention
) -> list[Doomed]:
    """What to delete, in a stable order: checkpoints of ``ended`` jobs, stale temps, then
    token-cache entries unused for the retention."""
    listing = sorted(found, key=lambda f: f.path)
    doomed = [
        Doomed(Kind.CHECKPOINTS, (f.path,), f.size)
        for f in listing
        if _job_folder(f, CHECKPOINTS) and f.path.parts[0] in ended
    ]
    doomed += [
        Doomed(Kind.TEMP, (f.path,), f.size)
        for f in listing
        if _job_folder(f, STAGING) and _stale(f, now, retention.temp_s)
    ]
    doomed += _downloads(listing, now, retention)
    folders = {d.paths[0] for d in doomed}
    files = [f for f in listing if not f.folder and not folders.intersection(f.path.parents)]
    doomed += [
        Doomed(Kind.TEMP, (f.path,), f.size)
        for f in files
        if TEMP_NAME.match(f.path.name) and _stale(f, now, retention.temp_s)
    ]
    entries: dict[str, list[Found]] = {}
    for f in files:
        if f.path.parent.as_posix() == CACHE_DIR and not TEMP_NAME.match(f.path.name):
            entries.setdefault(f.path.name.split(".", 1)[0], []).append(f)
    for parts in entries.values():
        if now - max(f.mtime for f in parts) >= retention.token_cache_s:
            size = sum(f.size for f in parts)
            doomed.append(Doomed(Kind.TOKEN_CACHE, tuple(f.path for f in parts), size))
    return doomed


def _downloads(listing: list[Found], now: float, retention: Retention) -> list[Doomed]:
    """Corpora fetched from object storage (``.downloads/<key>``, touched when used again)
    unused for the token-cache retention, and partial fetches a killed worker left."""
    doomed: list[Doomed] = []
    for f in listing:
        if not (f.folder and len(f.path.parts) == 2 and f.path.parts[0] == DOWNLOADS):
            continue
        if f.path.name.startswith("."):
            if _stale(f, now, retention.temp_s):
                doomed.append(Doomed(Kind.TEMP, (f.path,), f.size))
        elif _stale(f, now, retention.token_cache_s):
            doomed.append(Doomed(Kind.TOKEN_CACHE, (f.path,), f.size))
    return doomed


def _job_folder(f: Found, name: str) -> bool:
    """``f`` is the folder ``<job_id>/<name>``."""
    return f.folder and len(f.path.parts) == 2 and f.path.name == name


def _stale(f: Found, now: float, age_s: float) -> bool:
    return now - f.mtime >= age_s
