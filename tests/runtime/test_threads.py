"""Blocking calls in daemon threads: a result, an error, and a call abandoned at its bound
that cannot keep the process from exiting."""

from __future__ import annotations

import threading

import anyio
import pytest
from model_trainer.shell.threads import run_in_daemon_thread


async def test_a_result_an_error_and_an_abandoned_call() -> None:
    assert await run_in_daemon_thread(lambda: 6 * 7, "t") == 42

    def fails() -> int:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError):
        await run_in_daemon_thread(fails, "t")

    release = threading.Event()
    with pytest.raises(TimeoutError), anyio.fail_after(0.2):
        await run_in_daemon_thread(release.wait, "stuck")
    (stuck,) = [t for t in threading.enumerate() if t.name == "stuck"]
    assert stuck.daemon  # the interpreter does not join it at exit
    release.set()  # its late result goes to a future nobody waits on: no error
    stuck.join(2)
    await anyio.sleep(0.05)
    assert not stuck.is_alive()
