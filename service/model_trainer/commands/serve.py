"""``model-trainer serve``: the service, its HTTP endpoints and signal handling."""

from __future__ import annotations

import signal
import time

import anyio
import structlog

from model_trainer.settings import Settings
from model_trainer.shell.budgets import disk_problem
from model_trainer.shell.health import start_http
from model_trainer.shell.service import AssignmentFailedError, TrainerService

log = structlog.get_logger(__name__)
EXIT_UNPUBLISHED = 1
EXIT_UNASSIGNABLE = 4


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then shut down within ``shutdown_grace_s``.

    Returns the exit code: 0 after a clean stop, 1 when batches were left unpublished (their
    commands stay uncommitted, so the next owner resumes those jobs), 4 when partitions
    assigned to it could not be taken up (a fenced partition is given up, not fatal). (2 and
    3, bad settings and no Kafka, come from the CLI.)"""
    stop = anyio.Event()
    service = TrainerService(settings)

    def readiness() -> dict[str, bool]:
        return {
            "started": service.started.is_set(),
            "broker": service.broker.reachable and service.broker_problem is None,
            "publisher": service.publisher.healthy,
            "pool": service.pool.serving,
            "not_stopping": not stop.is_set(),
            "disk": disk_problem(settings) is None,
        }

    def reasons() -> dict[str, str]:
        disk = disk_problem(settings)
        if disk is not None:
            return {"disk": disk}
        if service.broker_problem is not None:
            return {"broker": service.broker_problem}
        if not service.broker.reachable:
            return {"broker": "no answer to a metadata request within 3 s"}
        return {}

    async def on_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal received; stopping", signal=signal.Signals(signum).name)
                stop.set()

    def liveness() -> dict[str, bool]:
        failing = service.publisher.failing_since
        stalled = failing is not None and time.monotonic() - failing > settings.publish_stall_s
        return {"publisher_commits": not stalled}

    runner = None
    if settings.http_port:
        runner = await start_http(
            settings.http_host, settings.http_port, liveness, readiness, reasons
        )
        log.info("http endpoints up", host=settings.http_host, port=settings.http_port)
    unassignable = False
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(on_signals)
            await service.run(stop)
            tasks.cancel_scope.cancel()
    except* AssignmentFailedError as failed:
        log.error("partitions could not be taken up; stopping", error=str(failed.exceptions[0]))
        unassignable = True
    finally:
        if runner is not None:
            await runner.cleanup()
    return EXIT_UNASSIGNABLE if unassignable else EXIT_UNPUBLISHED if service.unpublished else 0
