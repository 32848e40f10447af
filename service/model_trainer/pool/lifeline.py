"""A pool worker dies with the service that spawned it.

A worker whose service was killed (kill -9, OOM kill) would train on as an orphan, racing
whoever takes its job over. The lifeline thread watches the parent process id: when the
parent is gone it asks the run to stop (checkpoint and stop, through
:func:`orphaned`) and ends the process after ``GRACE_S`` whatever the run is doing, so an
orphan outlives its service by about a second at most. No torch here: it starts before the
worker's imports.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

POLL_S = 0.1
GRACE_S = 0.7  # poll + grace 0.8 s: under a second with room for a busy host's scheduling
ORPHAN_EXIT = 70  # EX_SOFTWARE: nobody reads it (the parent is gone), but logs of a supervisor may

_orphaned = threading.Event()


def orphaned() -> bool:
    """Whether this process's parent died (the run should checkpoint and stop now)."""
    return _orphaned.is_set()


def watch_parent(
    parent: int | None = None,
    *,
    poll_s: float = POLL_S,
    grace_s: float = GRACE_S,
    exit: Callable[[int], object] = os._exit,
) -> threading.Thread:
    """Start the daemon thread that ends this process ``grace_s`` after its parent dies.

    ``parent`` is the pid the spawner gave: a parent that died while this process was still
    starting (a slow interpreter start on a busy host) has already been replaced by init or a
    subreaper, and ``os.getppid()`` alone would watch that one for ever."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        _orphaned.set()
        time.sleep(grace_s)
        exit(ORPHAN_EXIT)

    thread = threading.Thread(target=watch, name="lifeline", daemon=True)
    thread.start()
    return thread
