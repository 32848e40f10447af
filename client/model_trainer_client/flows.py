"""What the commands do, over Kafka alone: submit and follow, cancel and wait, status, jobs,
watch. Each returns the process's exit code (see :mod:`.board`: 0 completed, 1 failed,
2 bad input, 3 timed out)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType

from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
)
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .board import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_TIMED_OUT, JobBoard, JobView
from .client import CommandSender
from .decode import QueuedNotice, Update, is_rejection
from .kafka import partition_for_key, topic_partitions
from .readers import JobFollower, LiveTail, read_job_state, read_states
from .render import fmt_float, render_board, render_states, render_status
from .settings import ClientSettings

WATCH_BACKLOG = timedelta(minutes=1)  # events of an active job start after its submission


def _now() -> datetime:
    return datetime.now(UTC)


class FollowPrinter:
    """``submit --follow`` and ``cancel``'s output: a progress bar on a terminal, one line per
    event in a log."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.fields[job]}"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task(
            "train", total=None, job=job_id, step="-", loss="-", val="-", tps="-"
        )

    def __enter__(self) -> FollowPrinter:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def print(self, message: str) -> None:
        self.progress.console.print(message)

    def show(self, view: JobView, update: Update, *, quiet: bool = False) -> None:
        """Render one event of the job (``quiet``: history, progress lines left out)."""
        self.progress.update(
            self.task,
            total=view.total_steps or None,
            completed=view.step,
            step=f"{view.step}/{view.total_steps}" if view.total_steps else "-",
            loss=fmt_float(view.train_loss),
            val=fmt_float(view.val_loss),
            tps="-" if view.tokens_per_sec is None else f"{view.tokens_per_sec:,.0f}",
        )
        if isinstance(update, QueuedNotice):
            where = "" if update.position is None else f" at position {update.position}"
            why = f" ({update.reason})" if update.reason else ""
            self.print(f"queued{where}{why}, attempt {update.attempt}")
        elif isinstance(update, ConfigEventV1):
            self.print(
                f"config: {update.model_family} {update.model_size} "
                f"({update.num_parameters:,} params), {update.tokenizer} vocab "
                f"{update.vocab_size}, {update.train_tokens:,} train tokens, "
                f"{update.total_steps} steps on {update.device}/{update.precision}, "
                f"attempt {update.attempt}"
            )
        elif isinstance(update, ProgressEventV1):
            if not quiet and not self.console.is_terminal:  # no live bar in a log
                val = "" if update.val_loss is None else f" val {update.val_loss:.4f}"
                self.print(
                    f"step {update.step}/{update.total_steps} loss {update.train_loss:.4f}{val} "
                    f"{update.tokens_per_sec:,.0f} tok/s eta {update.eta_s:.0f}s"
                )
        elif isinstance(update, CompletedEventV1 | FailedEventV1):
            self.result(view)

    def summary(self, view: JobView, events: int) -> None:
        step = f" at step {view.step}/{view.total_steps}" if view.total_steps else ""
        loss = f", loss {view.train_loss:.4f}" if view.train_loss is not None else ""
        self.print(f"history: {events} events; {view.status}{step}{loss}")

    def result(self, view: JobView) -> None:
        if view.status is JobStatus.COMPLETED:
            self.print(
                f"[green]completed[/green] in {view.duration_s or 0.0:.1f}s, {view.step} steps, "
                f"best val loss {fmt_float(view.best_val_loss)}, "
                f"test loss {fmt_float(view.test_loss)}"
            )
            self.print(f"artifact: {view.artifact_path}")
        elif view.status is JobStatus.FAILED:
            stage = f" at {view.error_stage}" if view.error_stage else ""
            self.print(f"[red]failed[/red] {view.error_code}{stage}: {view.error_message}")

    def refused(self, event: FailedEventV1) -> None:
        self.print(f"[red]refused[/red] {event.code}: {event.message}")


def _replay(
    printer: FollowPrinter, board: JobBoard, job_id: str, history: list[Update]
) -> JobView | None:
    """Apply the job's history, printing its milestones; the job as it stands (``None``
    when nothing but refused commands is known of it)."""
    for update in history:
        view = board.apply(update)
        if view is not None and not view.rejected:
            printer.show(view, update, quiet=True)
    view = board.get(job_id)
    if view is None or view.rejected:
        return None
    printer.summary(view, len(history))
    return view


async def _to_the_end(
    follower: JobFollower,
    board: JobBoard,
    printer: FollowPrinter,
    answers: Callable[[FailedEventV1], bool],
) -> JobView | FailedEventV1:
    """Follow the job to its end: the job once ended, or the refusal of our command (one
    that ``answers`` it, while nothing shows the job accepted)."""
    async for update in follower.updates():
        if is_rejection(update):
            known = board.get(follower.job_id)
            printer.refused(update)
            if answers(update) and (known is None or known.rejected):
                return update
            continue
        view = board.apply(update)
        if view is None:
            continue
        printer.show(view, update)
        if view.exit_code is not None:
            return view
    raise AssertionError("updates() never ends")


async def submit(
    settings: ClientSettings, job: SubmitJobV1, *, follow: bool, timeout_s: float, console: Console
) -> int:
    """Publish the job; with ``follow``, show its history and progress until it ends.

    A job that already ended is not submitted again: its result is printed at once.
    """
    if not follow:
        async with CommandSender(settings.connection, settings.commands_topic) as sender:
            await sender.send(job)
        console.print(f"submitted [bold]{job.job_id}[/bold] to {settings.commands_topic}")
        return 0
    try:
        async with asyncio.timeout(timeout_s), JobFollower(settings, job.job_id) as follower:
            board = JobBoard()
            history = await follower.history()
            with FollowPrinter(console, job.job_id) as printer:
                known = _replay(printer, board, job.job_id, history)
                if known is not None and known.exit_code is not None:
                    printer.print(f"{job.job_id} had already ended; not submitted again")
                    printer.result(known)
                    return known.exit_code
                async with CommandSender(settings.connection, settings.commands_topic) as sender:
                    await sender.send(job)
                printer.print(f"submitted [bold]{job.job_id}[/bold]; following its events")
                ended = await _to_the_end(
                    follower,
                    board,
                    printer,
                    lambda refusal: refusal.code is not ModelTrainerErrorCode.JOB_NOT_FOUND,
                )
                if isinstance(ended, JobView) and ended.exit_code is not None:
                    return ended.exit_code
                return EXIT_FAILED
    except TimeoutError:
        console.print(f"[yellow]no terminal event within {timeout_s:.0f}s[/yellow]")
        return EXIT_TIMED_OUT


async def cancel(
    settings: ClientSettings,
    job_id: str,
    *,
    reason: str,
    wait: bool,
    timeout_s: float,
    console: Console,
) -> int:
    """Ask the service to stop the job; unless ``wait`` is off, wait until it has ended.

    0 once the job has ended (cancelled, or it had ended already), 1 when the service
    refused the cancel (no such job), 3 timed out.
    """
    command = CancelJobV1(job_id=job_id, reason=reason)
    if not wait:
        async with CommandSender(settings.connection, settings.commands_topic) as sender:
            await sender.send(command)
        console.print(f"cancel sent for {job_id}")
        return 0
    try:
        async with asyncio.timeout(timeout_s), JobFollower(settings, job_id) as follower:
            board = JobBoard()
            history = await follower.history()
            with FollowPrinter(console, job_id) as printer:
                known = _replay(printer, board, job_id, history)
                if known is not None and known.exit_code is not None:
                    printer.print(f"{job_id} had already ended")
                    printer.result(known)
                    return 0
                async with CommandSender(settings.connection, settings.commands_topic) as sender:
                    await sender.send(command)
                printer.print(f"cancel sent for {job_id}; waiting for it to stop")
                ended = await _to_the_end(
                    follower,
                    board,
                    printer,
                    lambda refusal: refusal.code is ModelTrainerErrorCode.JOB_NOT_FOUND,
                )
                return 0 if isinstance(ended, JobView) else EXIT_FAILED
    except TimeoutError:
        console.print(f"[yellow]{job_id} had not stopped within {timeout_s:.0f}s[/yellow]")
        return EXIT_TIMED_OUT


async def job_view(settings: ClientSettings, job_id: str) -> JobView | None:
    """Everything the topics say of one job: its state record and its events."""
    board = JobBoard()
    state = await read_job_state(settings, job_id)
    if state is not None:
        board.apply(state)
    async with JobFollower(settings, job_id) as follower:
        board.apply_all(await follower.history())
    return board.get(job_id)


async def status(settings: ClientSettings, job_id: str, *, console: Console, out: Console) -> int:
    """Print the job's status: 0 when it is known and has not failed, 1 failed, 2 unknown."""
    view = await job_view(settings, job_id)
    if view is None:
        console.print(f"[red]no job {job_id}[/red] on {settings.events_topic}")
        return EXIT_BAD_INPUT
    out.print(render_status(view, _now()), soft_wrap=True)
    return EXIT_FAILED if view.status is JobStatus.FAILED else 0


def select_states(
    states: list[JobStateV1],
    *,
    status: JobStatus | None = None,
    user_id: int | None = None,
    labels: dict[str, str] | None = None,
) -> list[JobStateV1]:
    """The states that match every filter given, newest submission first."""
    wanted = labels or {}
    chosen = [
        state
        for state in states
        if (status is None or state.status is status)
        and (user_id is None or state.user_id == user_id)
        and all(state.labels.get(key) == value for key, value in wanted.items())
    ]
    return sorted(chosen, key=lambda state: state.submitted_at, reverse=True)


async def jobs(
    settings: ClientSettings,
    *,
    status: JobStatus | None,
    user_id: int | None,
    labels: dict[str, str],
    out: Console,
) -> int:
    states = list((await read_states(settings)).values())
    out.print(render_states(select_states(states, status=status, user_id=user_id, labels=labels)))
    return 0


async def watch_job(
    settings: ClientSettings, job_id: str, *, console: Console, refresh_s: float = 0.5
) -> int:
    """A live view of one job until it ends; exits with the job's code."""
    board = JobBoard()
    state = await read_job_state(settings, job_id)
    if state is not None:
        board.apply(state)
    async with JobFollower(settings, job_id) as follower:
        board.apply_all(await follower.history())

        def frame() -> RenderableType:
            view = board.get(job_id)
            return render_board([view] if view else [], _now(), title=job_id)

        with Live(get_renderable=frame, console=console, refresh_per_second=1 / refresh_s):
            view = board.get(job_id)
            if view is not None and view.exit_code is not None:
                return view.exit_code
            async for update in follower.updates():
                view = board.apply(update)
                if view is not None and view.exit_code is not None:
                    return view.exit_code
    return EXIT_FAILED


async def _since(settings: ClientSettings, active: list[JobStateV1]) -> dict[int, int]:
    """Per events partition holding an active job, when to start reading it: shortly before
    the oldest such job was submitted (partitions without one start at their end)."""
    ids = await topic_partitions(settings.connection, settings.events_topic)
    since: dict[int, int] = {}
    for state in active if ids else []:
        partition = ids[partition_for_key(state.job_id.encode(), len(ids))]
        at = int((state.submitted_at - WATCH_BACKLOG).timestamp() * 1000)
        since[partition] = min(at, since.get(partition, at))
    return since


def shown(board: JobBoard, watched: set[str], ended_rows: int = 10) -> list[JobView]:
    """``watch``'s rows: every active job, then those of ``watched`` (jobs seen active while
    watching) that have ended since, newest first. Adds the active jobs to ``watched``."""
    views = board.views()
    active = [view for view in views if view.active]
    watched.update(view.job_id for view in active)
    ended = [view for view in views if not view.active and view.job_id in watched]
    return active + ended[:ended_rows]


async def watch_all(settings: ClientSettings, *, console: Console, refresh_s: float = 0.5) -> int:
    """A live view of every active job (and those that end meanwhile), until interrupted."""
    watched: set[str] = set()
    board = JobBoard()
    states = await read_states(settings)
    board.apply_all(states.values())
    active = [state for state in states.values() if not state.status.terminal]
    since = await _since(settings, active)
    async with LiveTail(settings, events_since_ms=since) as tail:

        def frame() -> RenderableType:
            return render_board(shown(board, watched), _now(), title="active jobs")

        with Live(get_renderable=frame, console=console, refresh_per_second=1 / refresh_s):
            while True:
                board.apply_all(await tail.poll())
