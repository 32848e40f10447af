"""Kafka library noise, turned into at most two lines per outage.

aiokafka logs every failed reconnection (over a thousand lines in a 30 s broker stop). The
CLI, ``watch`` and the dashboard install :class:`BrokerWatch` instead: aiokafka's records
never reach the user; the first one after the client has been connected says, once, that the
broker went away, and the readers' next poll after a quiet spell says it is back. Before the
client has ever connected it says nothing: the CLI explains a failed start itself, better.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

QUIET_S = 5.0  # no library complaint for this long, after a poll: the broker is back
LIBRARY_LOGGERS = ("aiokafka", "kafka")

Say = Callable[[str], None]


class BrokerWatch(logging.Handler):
    """Swallows the Kafka library's log records and says when the broker goes and comes."""

    def __init__(self, say: Say, *, quiet_s: float = QUIET_S) -> None:
        super().__init__(logging.DEBUG)
        self.say = say
        self.quiet_s = quiet_s
        self.connected = False
        self.down = False
        self.last_complaint = 0.0
        self.first_complaint = ""
        self.listeners: list[Callable[[bool], None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        self.last_complaint = time.monotonic()
        if self.connected and not self.down:
            self.down = True
            self.first_complaint = record.getMessage().splitlines()[0][:200]
            self.say(f"Kafka broker unreachable; retrying ({self.first_complaint})")
            self._tell(False)

    def arm(self) -> None:
        """The client is connected: from now on, an outage is worth a line."""
        self.connected = True

    def polled(self) -> None:
        """A reader's poll returned: once quiet long enough, the broker is back."""
        if self.down and time.monotonic() - self.last_complaint >= self.quiet_s:
            self.down = False
            self.say("Kafka broker reachable again")
            self._tell(True)

    def _tell(self, live: bool) -> None:
        for listener in list(self.listeners):
            listener(live)


_installed: BrokerWatch | None = None


def install(say: Say, *, quiet_s: float = QUIET_S) -> BrokerWatch:
    """Route the Kafka library's logging to a new :class:`BrokerWatch` (replacing any)."""
    global _installed
    watch = BrokerWatch(say, quiet_s=quiet_s)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _installed is not None:
            logger.removeHandler(_installed)
        logger.addHandler(watch)
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    _installed = watch
    return watch


def arm() -> None:
    if _installed is not None:
        _installed.arm()


def polled() -> None:
    if _installed is not None:
        _installed.polled()


def current() -> BrokerWatch | None:
    return _installed
