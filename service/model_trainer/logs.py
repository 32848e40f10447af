"""structlog set-up: JSON lines (or a console renderer) on stderr, context bound per job."""

from __future__ import annotations

import logging
import sys

import structlog

from .metrics import CONNECTION_ERRORS

# What aiokafka says on every reconnect attempt while the broker is away: counted, not
# logged (the service logs one line when the broker goes and one when it is back).
_CONNECTION_NOISE = (
    "Unable connect to",
    "Unexpected error in sender routine",
    "Unable to update metadata",
    "Unable to request metadata",
    "Failed fetch messages",
    "Failed fetch offsets",
    "Group Coordinator Request failed",
    "Heartbeat failed",
    "Error sending",
    "Cannot send",
    "NodeNotReadyError",
    "KafkaConnectionError",
)


class _ConnectionNoise(logging.Filter):
    """Drops aiokafka's per-attempt connection errors, counting them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in _CONNECTION_NOISE):
            CONNECTION_ERRORS.inc()
            return False
        return True


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", fmt: str = "json", forward: structlog.types.Processor | None = None
) -> None:
    """Route structlog (and stdlib loggers such as aiokafka's) to stderr in one format;
    ``forward`` sees every record too, just before it is rendered (a worker's job logs)."""
    extra = [] if forward is None else [forward]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, *extra, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write a record: the service and its workers share stderr, and two records must
        # never land on one line.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=[*shared, *extra], processor=renderer)
    )
    handler.addFilter(_ConnectionNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
