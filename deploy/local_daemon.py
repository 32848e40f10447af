"""A server of the local stack (the Kafka broker, the S3 server) run in the background: a
process in a session of its own, found again through its pid file, stopped with SIGTERM and,
after a grace, SIGKILL of its whole session, so no orphan is left behind.

Standard library only: the test fixtures import it through :mod:`local_kafka` and
:mod:`local_s3`, which run as scripts too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it when it is our own exited child."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_pid(pid_file: Path) -> int | None:
    """The pid its pid file names when that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def launch(
    command: list[str],
    *,
    pid_file: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, its output appended to ``log_file``."""
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    pid_file: Path,
    timeout_s: float,
    poll_s: float,
    grace_s: float,
) -> str | None:
    """Wait until ``ready()``; None then, else why not (it exited, or it was stopped after
    ``timeout_s``), for the caller's own error."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            return f"exited with {proc.returncode}"
        if time.monotonic() > deadline:
            stop(pid_file, grace_s=grace_s, poll_s=poll_s)
            return f"was not ready within {timeout_s}s"
        time.sleep(poll_s)
    return None


def stop(pid_file: Path, *, grace_s: float, poll_s: float) -> None:
    """SIGTERM to the session its pid file names, SIGKILL after ``grace_s``; the pid file
    goes. A no-op when nothing runs."""
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(poll_s)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(poll_s / 2)
    pid_file.unlink(missing_ok=True)
