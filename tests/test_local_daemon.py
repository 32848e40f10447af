"""The local stack's background servers (``deploy/local_daemon.py``, under the broker and the
S3 server): started in a session of their own, found through the pid file, stopped with
the whole session, and a start that fails says why."""

from __future__ import annotations

import sys
from pathlib import Path

import local_daemon

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_server_is_found_by_its_pid_file_and_stopped_with_its_session(tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "x.pid", tmp_path / "x.log"
    assert local_daemon.running_pid(pid_file) is None
    proc = local_daemon.launch(SLEEPER, pid_file=pid_file, log_file=log_file, cwd=tmp_path)
    assert local_daemon.running_pid(pid_file) == proc.pid
    local_daemon.stop(pid_file, grace_s=5.0, poll_s=0.05)
    assert [local_daemon.alive(proc.pid), pid_file.exists()] == [False, False]
    local_daemon.stop(pid_file, grace_s=5.0, poll_s=0.05)  # nothing runs: a no-op


def test_a_start_that_fails_says_why_and_leaves_nothing_running(tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "x.pid", tmp_path / "x.log"
    failing = local_daemon.launch(
        [sys.executable, "-c", "raise SystemExit(3)"], pid_file=pid_file, log_file=log_file
    )
    why = local_daemon.wait_ready(
        failing, lambda: False, pid_file=pid_file, timeout_s=30.0, poll_s=0.05, grace_s=1.0
    )
    assert [why, pid_file.exists()] == ["exited with 3", False]
    slow = local_daemon.launch(SLEEPER, pid_file=pid_file, log_file=log_file)
    why = local_daemon.wait_ready(
        slow, lambda: False, pid_file=pid_file, timeout_s=0.3, poll_s=0.05, grace_s=5.0
    )
    assert [why, local_daemon.alive(slow.pid), pid_file.exists()] == [
        "was not ready within 0.3s",
        False,
        False,
    ]
    ready = local_daemon.launch(SLEEPER, pid_file=pid_file, log_file=log_file)
    assert (
        local_daemon.wait_ready(
            ready, lambda: True, pid_file=pid_file, timeout_s=5.0, poll_s=0.05, grace_s=5.0
        )
        is None
    )
    local_daemon.stop(pid_file, grace_s=5.0, poll_s=0.05)
    assert not local_daemon.alive(ready.pid)
