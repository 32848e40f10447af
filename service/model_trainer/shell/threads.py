"""Blocking calls off the event loop, in threads that never keep the process alive.

anyio's and concurrent.futures' worker threads are not daemons: the interpreter joins them at
exit, so one stuck for ever (an ``open()`` of a FIFO, a hung network mount) would keep a
stopped service from exiting. A call abandoned at its time bound is left to a daemon thread
of its own instead, which dies with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _succeed(done: asyncio.Future[T], result: T) -> None:
    if not done.done():  # else the caller gave up on it (cancelled at its time bound)
        done.set_result(result)


def _fail(done: asyncio.Future[T], error: BaseException) -> None:
    if not done.done():
        done.set_exception(error)


async def run_in_daemon_thread(call: Callable[[], T], name: str) -> T:
    """``call()`` in a new daemon thread; cancelling the wait abandons the thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        # RuntimeError: the loop closed while the call ran; nobody waits for it any more.
        try:
            result = call()
        except BaseException as exc:  # handed to the waiting task, which re-raises it
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_fail, done, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_succeed, done, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await done
