"""A command that killed the service once is dead-lettered, not handled again.

Before the shell hands a command to the book it writes the command's coordinates to a marker
file of its partition, and removes it once the command's effects are applied. A process that
dies in between (a segfault in a library, the OOM killer, a bug that escapes every guard)
leaves the marker behind; the next start reads it, and that one record is refused with
COMMAND_CRASHED when it comes again. So one record cannot stop an instance twice, nor, after
the rebalance, every other instance on the same host. (The marker is local: an instance on
another host learns of the record only by crashing on it once itself.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import structlog

from model_trainer.book.records import Record

log = structlog.get_logger(__name__)
Coordinates = tuple[str, int, int]  # topic, partition, offset


class CrashMarkers:
    """Markers under ``folder``, one file per partition being handled."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self.suspects: set[Coordinates] = set()

    def load(self) -> set[Coordinates]:
        """The commands that were being handled when this instance last died."""
        if not self._folder.is_dir():
            return set()
        for marker in sorted(self._folder.iterdir()):
            with contextlib.suppress(OSError, ValueError):
                topic, partition, offset = marker.read_text().split("\n")[:3]
                self.suspects.add((topic, int(partition), int(offset)))
                marker.unlink()
        if self.suspects:
            log.warning("commands that were being handled at a crash", commands=len(self.suspects))
        return self.suspects

    def crashed_on(self, record: Record) -> bool:
        return (record.topic, record.partition, record.offset) in self.suspects

    @contextlib.contextmanager
    def handling(self, record: Record) -> Iterator[None]:
        """Mark ``record`` as being handled for the duration of the block. A failing write
        (a full disk) only costs the protection, never the command."""
        path = self._folder / f"{record.topic}-{record.partition}"
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{record.topic}\n{record.partition}\n{record.offset}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("crash marker not written", error=str(exc))
        yield
        with contextlib.suppress(OSError):
            path.unlink()
