"""A worker dies with its service: the lifeline ends it within a second of a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The parent hands its pid over: a child still starting when its parent is killed (a slow
# interpreter start under coverage, on a busy machine) must not watch its new parent instead.
# The child says when its lifeline watches, and the parent passes it on with the child's pid:
# the clock starts at the kill, so a slow interpreter start is not counted as the lifeline's.
_CHILD = (
    "import sys, time; from model_trainer.pool.lifeline import watch_parent; "
    "watch_parent(int(sys.argv[1])); print('watching', flush=True); time.sleep(60)"
)
_PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", {_CHILD!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True
)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_child_whose_parent_died_before_it_watched_ends_at_once() -> None:
    orphan = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "1"],  # pid 1 is not its parent: that one is gone
        stdout=subprocess.DEVNULL,
    )
    assert orphan.wait(timeout=30) == 70  # ORPHAN_EXIT, after the grace


def test_a_worker_outlives_its_killed_parent_by_under_a_second() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())  # its lifeline is watching
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    killed = time.monotonic()
    parent.wait()
    while _alive(child) and time.monotonic() - killed < 5:
        time.sleep(0.02)
    gone_after = time.monotonic() - killed
    assert not _alive(child)
    assert gone_after < 1.0, f"the orphan lived {gone_after:.2f} s"
