"""``dashboard``: a web page of every job in the events topic's retention, kept live.

The server reads the events topic from the start of its retention (and the state topic) into
a :class:`~.board.JobBoard`, and pushes each change to the page as server-sent events: a
``snapshot`` when a page connects, then ``delta`` messages. The page (``static/``: our own
HTML, CSS and JavaScript, no CDN) draws the jobs table and each job's curves as SVG.

:func:`snapshot` and :func:`delta` are pure: board in, JSON out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from model_trainer_contracts.commands import JOB_ID_PATTERN
from pydantic import JsonValue
from rich.console import Console

from . import outage
from .board import JobBoard, JobView
from .guard import ENV_TOKEN, DashboardGuard, is_loopback
from .joblogs import log_text, read_log_lines
from .readers import LiveTail
from .settings import ClientSettings

STATIC = Path(__file__).resolve().parent / "static"
KEEPALIVE_S = 15.0
QUEUE_LIMIT = 1000

# per job, per series: (epoch, points) as last handed out
Cursors = dict[str, dict[str, tuple[int, int]]]


def _series(view: JobView, sent: dict[str, tuple[int, int]] | None) -> dict[str, JsonValue]:
    """The job's points not handed out yet; a series whose points changed is sent whole."""
    payload: dict[str, JsonValue] = {}
    for name, series in view.series.items():
        known = None if sent is None else sent.get(name)
        if known is not None and known[0] == series.epoch:
            fresh = series.points[known[1] :]
            if not fresh:
                continue
            payload[name] = {"reset": False, "points": [[step, value] for step, value in fresh]}
        else:
            points: list[JsonValue] = [[step, value] for step, value in series.points]
            payload[name] = {"reset": True, "points": points}
    return payload


def _mark(view: JobView, cursors: Cursors) -> None:
    cursors[view.job_id] = {
        name: (series.epoch, len(series.points)) for name, series in view.series.items()
    }


def snapshot(board: JobBoard) -> dict[str, JsonValue]:
    """Every job's row and every series, whole: what a page gets when it connects."""
    views = board.views()
    return {
        "jobs": [view.row() for view in views],
        "series": {view.job_id: _series(view, None) for view in views},
    }


def delta(board: JobBoard, changed: set[str], cursors: Cursors) -> dict[str, JsonValue]:
    """The rows of the jobs in ``changed`` and their points since ``cursors`` (advanced)."""
    rows: list[JsonValue] = []
    series: dict[str, JsonValue] = {}
    for job_id in sorted(changed):
        view = board.get(job_id)
        if view is None:
            continue
        rows.append(view.row())
        fresh = _series(view, cursors.get(job_id))
        if fresh:
            series[job_id] = fresh
        _mark(view, cursors)
    return {"jobs": rows, "series": series}


def sse(event: str, data: dict[str, JsonValue]) -> bytes:
    """One server-sent event."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {body}\n\n".encode()


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_LIMIT)
    )


class Feed:
    """Reads the topics into a board and hands every change to each connected page."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.board = JobBoard()
        self.cursors: Cursors = {}
        self.subscribers: set[_Subscriber] = set()
        self.caught_up = asyncio.Event()
        self.kafka_live = True
        watch = outage.current()
        if watch is not None:
            watch.listeners.append(self.kafka)

    def subscribe(self) -> _Subscriber:
        sub = _Subscriber()
        sub.queue.put_nowait(sse("snapshot", snapshot(self.board)))
        if not self.kafka_live:
            sub.queue.put_nowait(sse("kafka", {"live": False}))
        self.subscribers.add(sub)
        return sub

    def kafka(self, live: bool) -> None:
        """Kafka went away (the page says its data is stale) or came back."""
        self.kafka_live = live
        for sub in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(sse("kafka", {"live": live}))

    def unsubscribe(self, sub: _Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, changed: set[str]) -> None:
        """Send the changes to every page; a page too far behind gets a fresh snapshot."""
        if not changed:
            return
        message = sse("delta", delta(self.board, changed, self.cursors))
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sub.queue.put_nowait(sse("snapshot", snapshot(self.board)))

    def close(self) -> None:
        for sub in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)

    async def run(self) -> None:
        async with LiveTail(self.settings) as tail:
            while True:
                self.publish(self.board.apply_all(await tail.poll()))
                if not self.caught_up.is_set() and await tail.caught_up():
                    self.caught_up.set()


FEED = web.AppKey("feed", Feed)
_JOB_ID = re.compile(JOB_ID_PATTERN)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _jobs(request: web.Request) -> web.Response:
    return web.json_response(snapshot(request.app[FEED].board))


async def _logs(request: web.Request) -> web.Response:
    """The selected job's log lines (the last 500), as ``logs JOB_ID`` prints them."""
    job_id = request.match_info["job_id"]
    if not _JOB_ID.fullmatch(job_id):
        raise web.HTTPBadRequest(text="not a job id\n")
    lines = await read_log_lines(request.app[FEED].settings, job_id)
    return web.json_response({"job_id": job_id, "lines": [log_text(line) for line in lines]})


async def _events(request: web.Request) -> web.StreamResponse:
    feed = request.app[FEED]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sub = feed.subscribe()
    try:
        while True:
            try:
                message = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                message = b": keepalive\n\n"
            if message is None:
                break
            await response.write(message)
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        feed.unsubscribe(sub)
    return response


def make_app(feed: Feed, guard: DashboardGuard) -> web.Application:
    """The dashboard's routes over ``feed`` (whose :meth:`Feed.run` the caller runs), each
    behind ``guard`` (:mod:`.guard`)."""
    app = web.Application(middlewares=[guard.middleware()])
    app[FEED] = feed
    app.router.add_get("/", _index)
    app.router.add_get("/api/jobs", _jobs)
    app.router.add_get("/events", _events)
    app.router.add_get("/api/logs/{job_id}", _logs)
    app.router.add_static("/static/", STATIC)

    async def _close_streams(app: web.Application) -> None:
        app[FEED].close()

    app.on_shutdown.append(_close_streams)
    return app


class Dashboard:
    """The dashboard running in this event loop: ``async with Dashboard(...) as d: d.url``."""

    def __init__(
        self,
        settings: ClientSettings,
        host: str = "127.0.0.1",
        port: int = 0,
        guard: DashboardGuard | None = None,
    ) -> None:
        self.feed = Feed(settings)
        self._host = host
        self._port = port
        self.guard = guard or DashboardGuard.from_env(host)
        self._runner = web.AppRunner(make_app(self.feed, self.guard), shutdown_timeout=2.0)
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def __aenter__(self) -> Dashboard:
        self._task = asyncio.create_task(self.feed.run(), name="dashboard-feed")
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._port
        for address in self._runner.addresses:  # the port bound, when 0 was asked for
            port = int(address[1])
        shown = "127.0.0.1" if self._host in ("0.0.0.0", "::", "") else self._host
        self.url = f"http://{shown}:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def link(self, fragment: str = "") -> str:
        """The URL that lets a browser in: it carries the token (see :mod:`.guard`)."""
        return f"{self.url}?token={self.guard.token.get_secret_value()}{fragment}"

    async def wait(self) -> None:
        """Until the feed stops (it does not, unless reading the topics fails)."""
        if self._task is not None:
            await self._task


async def serve(settings: ClientSettings, host: str, port: int, console: Console) -> int:
    async with Dashboard(settings, host, port) as dashboard:
        if not is_loopback(host):
            console.print(
                f"[bold yellow]warning:[/bold yellow] bound to {host}, beyond this machine: "
                "whoever has the link sees every job, over plain HTTP (put it behind TLS)"
                + (f"; set {ENV_TOKEN} to choose the token" if dashboard.guard.generated else "")
            )
        console.print(
            f"dashboard of {settings.events_topic} at [bold]{dashboard.link()}[/bold] "
            "(the link carries its access token; Ctrl-C stops)",
            soft_wrap=True,
        )
        await dashboard.wait()
    return 0
