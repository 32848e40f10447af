"""``model-trainer serve``: the service, its HTTP endpoints and signal handling."""

from __future__ import annotations

import asyncio
import signal

import structlog

from .health import start_http
from .service import TrainerService
from .settings import Settings

log = structlog.get_logger(__name__)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down within ``shutdown_grace_s``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = TrainerService(settings)

    def readiness() -> dict[str, bool]:
        return {
            "started": service.started.is_set(),
            "broker": service.broker_reachable,
            "publisher": service.publisher.healthy,
            "pool": service.pool.idle() + len(service.pool.running()) > 0,
            "not_stopping": not stop.is_set(),
        }

    runner = None
    if settings.http_port:
        runner = await start_http(settings.http_host, settings.http_port, readiness)
        log.info("http endpoints up", host=settings.http_host, port=settings.http_port)
    try:
        await service.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
