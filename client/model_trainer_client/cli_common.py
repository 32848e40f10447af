"""What every client command shares: its consoles, and how a command's settings are read
and its flow is run (exit codes for a missing or refusing broker). A leaf of the command
modules (:mod:`.cli`, :mod:`.mlflow_cli`); their connection options: :mod:`.cli_connection`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import NoReturn

import typer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from rich.console import Console
from rich.markup import escape

from . import outage
from .board import EXIT_BAD_INPUT, EXIT_TIMED_OUT
from .kafka import probe_brokers
from .settings import ClientSettings, ConnectionOverrides, KafkaConfigError

console = Console(stderr=True)
# The broker's ACLs refused the client's user an operation: exit 3, as a broker that refuses
# the connection.
NOT_ALLOWED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
out = Console()
# Ctrl-C cancels the flow, and again every RECANCEL_S until it ends: Python 3.11's
# asyncio.wait_for (aiokafka's too) can lose a cancellation that races a completing future,
# and asyncio.run cancels only once, so a follow could outlive its Ctrl-C. A flow still not
# ended FORCE_AFTER_S after the Ctrl-C (a thread the loop waits for at exit) exits unclean.
RECANCEL_S = 1.0
FORCE_AFTER_S = 10.0


def _force_exit(code: int) -> None:
    console.print(f"not stopped {FORCE_AFTER_S:.0f}s after Ctrl-C: exiting now", style="yellow")
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


async def _interruptible(flow: Coroutine[object, object, int], interrupted: int) -> int:
    """``flow``'s exit code, or ``interrupted`` once Ctrl-C has ended it."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(flow)
    pressed = threading.Event()

    def cancel() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(RECANCEL_S, cancel)

    def ctrl_c() -> None:
        if not pressed.is_set():
            pressed.set()
            force = threading.Timer(FORCE_AFTER_S, _force_exit, args=(interrupted,))
            force.daemon = True
            force.start()
        cancel()

    # Only the main thread receives signals (a command run in a thread, as a test's CliRunner
    # in asyncio.to_thread, keeps Python's own handling).
    handles = threading.current_thread() is threading.main_thread()
    if handles:
        loop.add_signal_handler(signal.SIGINT, ctrl_c)
    try:
        return await task
    except asyncio.CancelledError:
        if pressed.is_set():
            return interrupted
        raise
    finally:
        if handles:
            loop.remove_signal_handler(signal.SIGINT)


def _say(title: str, text: object) -> None:
    """An error on stderr: ``title`` in red, ``text`` as it is (no markup, not wrapped)."""
    console.print(f"[red]{title}[/red]: {escape(str(text))}", highlight=False, soft_wrap=True)


def _settings(overrides: ConnectionOverrides) -> ClientSettings:
    """The settings from the environment and the options; inconsistent ones exit 2."""
    try:
        return ClientSettings.from_env(overrides=overrides)
    except KafkaConfigError as exc:
        _say("Kafka connection settings", exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _explain(settings: ClientSettings, exc: Exception) -> None:
    """Say why Kafka could not be used: aiokafka's own error only says it could not
    bootstrap, so ask the brokers (a refused password, an untrusted certificate)."""
    probe = asyncio.run(probe_brokers(settings.connection, timeout_s=5))
    if probe.refused is not None:
        _say("Kafka refused the connection", probe.refused)
    else:
        where = settings.connection.describe()
        _say(f"no Kafka broker answered at {escape(where)}", probe.problem or exc)


def _run(
    settings: ClientSettings,
    main: Callable[[], Coroutine[object, object, int]],
    *,
    interrupted: int = 130,
) -> NoReturn:
    """Run a flow and exit with its code; no broker (or one that refuses us, or whose ACLs
    refuse what we ask) is exit 3, a TLS file that cannot be read exit 2, Ctrl-C
    ``interrupted``."""
    outage.install(lambda line: console.print(line, style="yellow", soft_wrap=True))
    try:
        code = asyncio.run(_interruptible(main(), interrupted))
    except KafkaConnectionError as exc:
        with contextlib.suppress(KeyboardInterrupt):
            _explain(settings, exc)
        code = EXIT_TIMED_OUT
    except KafkaConfigError as exc:
        _say("Kafka connection settings", exc)
        code = EXIT_BAD_INPUT
    except NOT_ALLOWED as exc:
        user = settings.connection.sasl_username or "this client"
        _say(
            "Kafka refused",
            f"{user} may not do this ({exc}); a tenant writes only to its own commands topic "
            f"(this was {settings.commands_topic}; MODEL_TRAINER_TENANT chooses it)",
        )
        code = EXIT_TIMED_OUT
    except KeyboardInterrupt:
        code = interrupted
    raise typer.Exit(code)
