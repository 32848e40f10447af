"""``model-trainer serve``: the service, its HTTP endpoints and signal handling."""

from __future__ import annotations

import signal

import anyio
import structlog

from .health import start_http
from .service import TrainerService
from .settings import Settings

log = structlog.get_logger(__name__)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down within ``shutdown_grace_s``."""
    stop = anyio.Event()
    service = TrainerService(settings)

    def readiness() -> dict[str, bool]:
        return {
            "started": service.started.is_set(),
            "broker": service.broker_reachable and service.broker_problem is None,
            "publisher": service.publisher.healthy,
            "pool": service.pool.live() > 0,
            "not_stopping": not stop.is_set(),
        }

    def reasons() -> dict[str, str]:
        if service.broker_problem is not None:
            return {"broker": service.broker_problem}
        if not service.broker_reachable:
            return {"broker": "no answer to a metadata request within 3 s"}
        return {}

    async def on_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal received; stopping", signal=signal.Signals(signum).name)
                stop.set()

    runner = None
    if settings.http_port:
        runner = await start_http(settings.http_host, settings.http_port, readiness, reasons)
        log.info("http endpoints up", host=settings.http_host, port=settings.http_port)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(on_signals)
            await service.run(stop)
            tasks.cancel_scope.cancel()
    finally:
        if runner is not None:
            await runner.cleanup()
