"""What the commands do, over Kafka alone: submit and follow, cancel and wait, status, jobs,
watch. Each returns the process's exit code (see :mod:`.board`: 0 completed, 1 failed,
2 bad input, 3 timed out, 4 cancelled, 5 rejected)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import assert_never

from aiokafka.errors import KafkaError
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
)
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from .board import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_TIMED_OUT,
    JobBoard,
    JobView,
    ViewStatus,
    view_status,
)
from .client import CommandSender
from .decode import QueuedNotice, Update, is_rejection
from .hints import follow_up, group_members, new_job_id, service_group, spec_digest
from .kafka import partition_for_key, topic_partitions
from .readers import JobFollower, LiveTail, read_events_of, read_job_state, read_states
from .render import (
    fmt_duration,
    fmt_float,
    reason,
    render_board,
    render_jobs,
    render_status,
    run_time,
)
from .settings import ClientSettings

WATCH_BACKLOG = timedelta(minutes=1)  # events of an active job start after its submission


def _now() -> datetime:
    return datetime.now(UTC)


class FollowPrinter:
    """``submit --follow`` and ``cancel``'s output: one line per milestone, each whole on its
    line; on a terminal a progress bar below them, in a log one line per progress event."""

    def __init__(self, console: Console, job_id: str) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.fields[job]}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("eta {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # the result line replaces it; no stale bar is left behind
        )
        self.task = self.progress.add_task(
            "train", total=None, job=job_id, step="-", loss="-", val="-", tps="-", eta="-"
        )
        self.bar_shown = False

    def __enter__(self) -> FollowPrinter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.hide_bar()

    def hide_bar(self) -> None:
        """Take the bar off the screen (it is only ever drawn on a terminal)."""
        if self.bar_shown:
            self.progress.stop()
            self.bar_shown = False

    def print(self, message: str) -> None:
        self.console.print(message, soft_wrap=True, highlight=False)

    def show(self, view: JobView, update: Update, *, quiet: bool = False) -> None:
        """Render one event of the job (``quiet``: history; progress lines and the result
        left out: the caller says how the history ends)."""
        self._bar(view, update)
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
            # evaluations stay in a terminal's scrollback; the bar carries the rest
            if not quiet and (not self.live or update.val_loss is not None):
                self.print(progress_line(update))
        elif isinstance(update, DownloadEventV1):
            if not quiet:
                self.print(download_line(update))
        elif isinstance(update, CompletedEventV1 | FailedEventV1):
            if not quiet:
                self.result(view)
                if isinstance(update, CompletedEventV1):
                    for g in update.generations:
                        self.print(f"held-out answer: {escape(repr(g.completion.strip()))}")
                        self.print(f"  expected: {escape(repr(g.reference.strip()))}")
        else:
            assert_never(update)

    def _bar(self, view: JobView, update: Update) -> None:
        if not self.live or not isinstance(update, ConfigEventV1 | ProgressEventV1):
            return
        if view.exit_code is not None:
            return
        eta = view.eta_at(_now())
        self.progress.update(
            self.task,
            total=view.total_steps or None,
            completed=view.step,
            step=f"{view.step}/{view.total_steps}" if view.total_steps else "-",
            loss=fmt_float(view.train_loss),
            val=fmt_float(view.val_loss),
            tps="-" if view.tokens_per_sec is None else f"{view.tokens_per_sec:,.0f}",
            eta="-" if eta is None else fmt_duration(eta),
        )
        if not self.bar_shown:
            self.progress.start()
            self.bar_shown = True

    def header(self, job_id: str, events: int) -> None:
        self.print(f"history of {job_id}: {events} events")

    def summary(self, view: JobView) -> None:
        step = f" at step {view.step}/{view.total_steps}" if view.total_steps else ""
        loss = f", loss {view.train_loss:.4f}" if view.train_loss is not None else ""
        self.print(f"now {view.shown}{step}{loss}")

    def result(self, view: JobView) -> None:
        self.hide_bar()
        status = view.shown
        match status:
            case ViewStatus.COMPLETED:
                self.print(
                    f"[green]completed[/green] in {view.duration_s or 0.0:.1f}s, "
                    f"{view.step} steps, best val loss {fmt_float(view.best_val_loss)}, "
                    f"test loss {fmt_float(view.test_loss)}"
                )
                self.print(f"artifact: {escape(view.artifact_path or '-')}")
            case ViewStatus.FAILED | ViewStatus.CANCELLED | ViewStatus.REJECTED:
                self.print(f"[red]{status}[/red] {escape(reason(view))}")
            case ViewStatus.QUEUED | ViewStatus.RUNNING:
                self.summary(view)
            case _:
                assert_never(status)

    def refused(self, event: FailedEventV1) -> None:
        self.hide_bar()
        self.print(f"[red]refused[/red] {event.code}: {escape(event.message)}")


def download_line(update: DownloadEventV1) -> str:
    mb = 1 << 20
    return (
        f"downloading {update.url}: {update.bytes_done / mb:,.1f} of "
        f"{update.bytes_total / mb:,.1f} MB ({update.files_done}/{update.files_total} files, "
        f"{update.elapsed_s:.0f}s){', done' if update.done else ''}"
    )


def progress_line(update: ProgressEventV1) -> str:
    """One progress event as a log line, with what the Hugging Face Trainer prints too."""
    val = "" if update.val_loss is None else f" val {update.val_loss:.4f}"
    return (
        f"step {update.step}/{update.total_steps} loss {update.train_loss:.4f}{val} "
        f"lr {update.learning_rate:.3g} grad_norm {update.grad_norm:.3g} "
        f"{update.tokens_per_sec:,.0f} tok/s eta {update.eta_s:.0f}s"
    )


def _replay(
    printer: FollowPrinter, board: JobBoard, job_id: str, history: list[Update]
) -> JobView | None:
    """Apply the job's history, printing its milestones; the job as it stands (``None``
    when nothing but refused commands is known of it)."""
    if history:
        printer.header(job_id, len(history))
    for update in history:
        view = board.apply(update)
        if view is not None and not view.rejected:
            printer.show(view, update, quiet=True)
    view = board.get(job_id)
    if view is None or view.rejected:
        return None
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


def _conflict(job: SubmitJobV1, state: JobStateV1 | None) -> str | None:
    """Why the service will refuse ``job``: its id names a job with another spec."""
    if state is None or not state.request_digest or state.request_digest == spec_digest(job):
        return None
    return (
        f"job {job.job_id} was already submitted with a different spec (it is "
        f"{view_status(state.status, state.error_code)}); submit this one under a new id, "
        f"e.g. --job-id {new_job_id(job.job_id)}"
    )


async def _nobody_there(
    settings: ClientSettings, board: JobBoard, job_id: str, printer: FollowPrinter, wait_s: float
) -> None:
    """Say so when, ``wait_s`` after the submit, nothing has picked the job up and the
    service's consumer group has no members (no trainer is running)."""
    await asyncio.sleep(wait_s)
    view = board.get(job_id)
    if view is not None and not view.rejected and view.event_status is not None:
        return
    group = service_group()
    try:
        members = await group_members(settings.connection, group)
    except KafkaError:
        return
    if members == 0:
        printer.print(
            f"[yellow]no trainer has picked {job_id} up yet[/yellow]: the consumer group "
            f"{group} has no members (is the service running?); still waiting"
        )


def _stopped_following(console: Console, job_id: str, view: JobView | None, why: str) -> None:
    """After a timeout or Ctrl-C: the job goes on; where it stands and how to go on."""
    where = "not picked up yet" if view is None or view.rejected else str(view.shown)
    console.print(f"[yellow]{why}[/yellow]: {job_id} goes on ({where})", soft_wrap=True)
    for line in follow_up(job_id):
        console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)


def _say_out(out: Console | None, data: str) -> None:
    if out is not None:
        out.print(data, soft_wrap=True, highlight=False, markup=False)


async def submit(
    settings: ClientSettings,
    job: SubmitJobV1,
    *,
    follow: bool,
    timeout_s: float,
    console: Console,
    out: Console | None = None,
    as_json: bool = False,
    nobody_wait_s: float = 10.0,
) -> int:
    """Publish the job; with ``follow``, show its history and progress until it ends.

    A job that already ended is not submitted again: its result is printed at once. A job
    id the service knows with another spec is not sent (the service would refuse it): exit
    1. On ``out`` (stdout): the job id, or with ``as_json`` the job's row as JSON.
    """
    conflict = _conflict(job, await read_job_state(settings, job.job_id))
    if conflict is not None:
        console.print(f"[red]refused[/red]: {escape(conflict)}", soft_wrap=True)
        return EXIT_FAILED
    if not follow:
        async with CommandSender(settings.connection, settings.commands_topic) as sender:
            await sender.send(job)
        console.print(
            f"submitted [bold]{job.job_id}[/bold] to {settings.commands_topic}", soft_wrap=True
        )
        row = json.dumps({"job_id": job.job_id, "submitted": True})
        _say_out(out, row if as_json else job.job_id)
        return 0
    board = JobBoard()
    nobody: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(timeout_s), JobFollower(settings, job.job_id) as follower:
            history = await follower.history()
            with FollowPrinter(console, job.job_id) as printer:
                known = _replay(printer, board, job.job_id, history)
                if known is not None and known.exit_code is not None:
                    printer.print(f"{job.job_id} had already ended; not submitted again")
                    printer.result(known)
                    _say_out(out, json.dumps(known.row()) if as_json else job.job_id)
                    return known.exit_code
                if known is not None:
                    printer.summary(known)
                async with CommandSender(settings.connection, settings.commands_topic) as sender:
                    await sender.send(job)
                printer.print(f"submitted [bold]{job.job_id}[/bold]; following its events")
                if not as_json:
                    _say_out(out, job.job_id)
                nobody = asyncio.create_task(
                    _nobody_there(settings, board, job.job_id, printer, nobody_wait_s)
                )
                ended = await _to_the_end(
                    follower,
                    board,
                    printer,
                    lambda refusal: refusal.code is not ModelTrainerErrorCode.JOB_NOT_FOUND,
                )
                if isinstance(ended, JobView) and ended.exit_code is not None:
                    if as_json:
                        _say_out(out, json.dumps(ended.row()))
                    return ended.exit_code
                return EXIT_FAILED
    except TimeoutError:
        _stopped_following(
            console, job.job_id, board.get(job.job_id), f"no end within {timeout_s:.0f}s"
        )
        return EXIT_TIMED_OUT
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels us, then raises it
        _stopped_following(console, job.job_id, board.get(job.job_id), "interrupted")
        raise
    finally:
        if nobody is not None:
            nobody.cancel()


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
    async with JobFollower(settings, job_id) as follower:
        return (await _board_of(settings, follower)).get(job_id)


async def _board_of(settings: ClientSettings, follower: JobFollower) -> JobBoard:
    """One job's board: its state record, then the events the follower found on entry."""
    board = JobBoard()
    state = await read_job_state(settings, follower.job_id)
    if state is not None:
        board.apply(state)
    board.apply_all(await follower.history())
    return board


async def status(
    settings: ClientSettings,
    job_id: str,
    *,
    console: Console,
    out: Console,
    as_json: bool = False,
) -> int:
    """Print the job's status. Exit code: 0 queued, running or completed, 1 failed,
    4 cancelled, 5 rejected (only refused commands are known of the id), 2 unknown."""
    view = await job_view(settings, job_id)
    if view is None:
        console.print(f"[red]no job {job_id}[/red] on {settings.events_topic}", soft_wrap=True)
        return EXIT_BAD_INPUT
    if as_json:
        _say_out(out, json.dumps(view.row()))
    else:
        out.print(render_status(view, _now()), soft_wrap=True)
    return view.exit_code or 0


def select_states(
    states: list[JobStateV1],
    *,
    status: JobStatus | ViewStatus | None = None,
    user_id: int | None = None,
    labels: dict[str, str] | None = None,
) -> list[JobStateV1]:
    """The states that match every filter given, newest submission first (``status`` as the
    views show it: a cancelled job is not a failed one)."""
    wanted = labels or {}
    chosen = [
        state
        for state in states
        if (status is None or view_status(state.status, state.error_code) == str(status))
        and (user_id is None or state.user_id == user_id)
        and all(state.labels.get(key) == value for key, value in wanted.items())
    ]
    return sorted(chosen, key=lambda state: state.submitted_at, reverse=True)


async def jobs(
    settings: ClientSettings,
    *,
    status: JobStatus | ViewStatus | None,
    user_id: int | None,
    labels: dict[str, str],
    out: Console,
    as_json: bool = False,
    limit: int | None = None,
    since: timedelta | None = None,
) -> int:
    """Every job of the state topic (submitted within ``since``), newest first, with its
    progress, loss and duration from the events topic."""
    now = _now()
    states = list((await read_states(settings)).values())
    if since is not None:
        states = [state for state in states if state.submitted_at >= now - since]
    chosen = select_states(states, status=status, user_id=user_id, labels=labels)[:limit]
    board = JobBoard()
    board.apply_all(chosen)
    board.apply_all(await read_events_of(settings, chosen))
    views = [view for state in chosen if (view := board.get(state.job_id)) is not None]
    if as_json:
        rows = [{**view.row(), "duration_s": run_time(view, now)} for view in views]
        _say_out(out, json.dumps(rows))
        return 0
    if out.is_terminal:
        out.print(render_jobs(views, width=out.width, now=now))
    else:  # a pipe or a log: every column, whole, however wide the lines get
        table = render_jobs(views, now=now)
        width = Console(width=10_000).measure(table).maximum
        Console(file=out.file, width=width, color_system=None).print(table)
    return 0


def board_line(view: JobView, now: datetime) -> str:
    """One job in one line, for ``watch`` into a pipe or a log."""
    step = f" step {view.step}/{view.total_steps}" if view.total_steps else ""
    loss = f" loss {view.train_loss:.4f}" if view.train_loss is not None else ""
    val = f" val {view.val_loss:.4f}" if view.val_loss is not None else ""
    eta = view.eta_at(now)
    tail = f" eta {fmt_duration(eta)}" if eta is not None else ""
    why = reason(view)
    return f"{view.job_id} {view.shown}{step}{loss}{val}{tail}" + (f" ({why})" if why else "")


class _Lines:
    """``watch`` without a terminal: a line per job whenever its line changes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last: dict[str, str] = {}

    def show(self, views: list[JobView]) -> None:
        now = _now()
        for view in views:
            line = board_line(view, now)
            if self.last.get(view.job_id) != line:
                self.last[view.job_id] = line
                self.console.print(line, soft_wrap=True, highlight=False, markup=False)


async def watch_job(
    settings: ClientSettings, job_id: str, *, console: Console, refresh_s: float = 0.5
) -> int:
    """A live view of one job until it ends; exits with the job's code."""
    async with JobFollower(settings, job_id) as follower:
        board = await _board_of(settings, follower)

        def rows() -> list[JobView]:
            view = board.get(job_id)
            return [view] if view else []

        if not console.is_terminal:
            lines = _Lines(console)
            lines.show(rows())
            view = board.get(job_id)
            while view is None or view.exit_code is None:
                board.apply_all(await follower.poll())
                view = board.get(job_id)
                lines.show(rows())
            return view.exit_code

        def frame() -> RenderableType:
            return render_board(rows(), _now(), title=job_id)

        with Live(get_renderable=frame, console=console, refresh_per_second=1 / refresh_s):
            view = board.get(job_id)
            if view is None or view.exit_code is None:
                async for update in follower.updates():
                    view = board.apply(update)
                    if view is not None and view.exit_code is not None:
                        break
        if view is not None and view.exit_code is not None:
            why = reason(view)
            if why:
                console.print(f"{view.shown}: {escape(why)}", soft_wrap=True, highlight=False)
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
    active = [
        state for state in states.values() if view_status(state.status, state.error_code).active
    ]
    since = await _since(settings, active)
    async with LiveTail(settings, events_since_ms=since) as tail:
        if not console.is_terminal:
            lines = _Lines(console)
            while True:
                lines.show(shown(board, watched))
                board.apply_all(await tail.poll())

        def frame() -> RenderableType:
            return render_board(shown(board, watched), _now(), title="active jobs")

        with Live(get_renderable=frame, console=console, refresh_per_second=1 / refresh_s):
            while True:
                board.apply_all(await tail.poll())
