"""Terminal views of jobs, as pure functions: models in, rich renderables out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import assert_never

from model_trainer_contracts import JobStateV1, JobStatus
from rich.console import RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .board import JobBoard, JobView, ViewStatus


def status_style(status: ViewStatus) -> str:
    match status:
        case ViewStatus.QUEUED:
            return "yellow"
        case ViewStatus.RUNNING:
            return "cyan"
        case ViewStatus.COMPLETED:
            return "green"
        case ViewStatus.FAILED:
            return "red"
        case ViewStatus.CANCELLED:
            return "magenta"
        case ViewStatus.REJECTED:
            return "bright_red"
        case _:
            assert_never(status)


def status_text(status: ViewStatus | JobStatus) -> Text:
    shown = ViewStatus(str(status))
    return Text(str(shown), style=status_style(shown))


def reason(view: JobView) -> str:
    """Why the job ended as it did (or its command was refused): code, stage and message."""
    if view.error_code is None and view.error_message is None:
        return ""
    stage = f" at {view.error_stage}" if view.error_stage else ""
    message = f": {view.error_message}" if view.error_message else ""
    return f"{view.error_code or '-'}{stage}{message}"


def fmt_float(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


def _when(ts: datetime | None) -> str:
    return "-" if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _progress(view: JobView, width: int = 24) -> RenderableType:
    status = view.shown
    match status:
        case ViewStatus.QUEUED:
            where = "" if view.queue_position is None else f" #{view.queue_position}"
            return Text(f"waiting{where}", style="yellow")
        case ViewStatus.REJECTED:
            return Text(view.error_code or "refused", style=status_style(status))
        case ViewStatus.RUNNING | ViewStatus.FAILED | ViewStatus.CANCELLED:
            total = view.total_steps if view.total_steps > 0 else None
            return ProgressBar(total=total, completed=view.step, width=width)
        case ViewStatus.COMPLETED:
            total = view.total_steps if view.total_steps > 0 else None
            return ProgressBar(total=total, completed=view.total_steps, width=width)
        case _:
            assert_never(status)


def render_board(views: Sequence[JobView], now: datetime, *, title: str = "jobs") -> Table:
    """One refresh of ``watch``: a row per job, with its progress bar, loss, speed and ETA."""
    table = Table(title=title, expand=False, title_justify="left")
    for name in ("job", "status", "user", "att", "progress", "step", "loss", "val", "tok/s", "eta"):
        right = name not in ("job", "status", "progress")
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    for view in views:
        step = f"{view.step}/{view.total_steps}" if view.total_steps else "-"
        table.add_row(
            view.job_id,
            status_text(view.shown),
            str(view.user_id),
            str(view.attempt or "-"),
            _progress(view),
            step,
            fmt_float(view.train_loss),
            fmt_float(view.val_loss),
            fmt_rate(view.tokens_per_sec),
            fmt_duration(view.eta_at(now)),
        )
    if not views:
        table.caption = "no active jobs"
    return table


def render_status(view: JobView, now: datetime) -> Text:
    """``status JOB_ID``: everything known of one job, a ``key  value`` line each (print it
    with ``soft_wrap=True`` so that paths and messages stay whole on one line)."""
    status = view.shown
    lines: list[tuple[str, str | Text]] = [
        ("job", view.job_id),
        ("status", status_text(status)),
        ("user", str(view.user_id)),
        ("labels", fmt_labels(view.labels)),
        ("attempt", str(view.attempt or "-")),
    ]
    if view.failures:
        lines.append(("failures", str(view.failures)))
    if view.model is not None:
        lines.append(("model", f"{view.model} on {view.device}"))
    if view.total_steps:
        lines.append(("step", f"{view.step}/{view.total_steps}"))
    if status is not ViewStatus.REJECTED:
        lines.append(("train loss", fmt_float(view.train_loss)))
        lines.append(("val loss", fmt_float(view.val_loss)))
    match status:
        case ViewStatus.QUEUED:
            if view.queue_position is not None:
                where = f"position {view.queue_position} {view.queue_reason or ''}"
                lines.append(("queue", where.strip()))
        case ViewStatus.RUNNING:
            lines.append(("tok/s", fmt_rate(view.tokens_per_sec)))
            lines.append(("eta", fmt_duration(view.eta_at(now))))
        case ViewStatus.COMPLETED:
            lines.append(("best val loss", fmt_float(view.best_val_loss)))
            lines.append(("test loss", fmt_float(view.test_loss)))
            lines.append(("duration", fmt_duration(view.duration_s)))
            lines.append(("artifact", view.artifact_path or "-"))
        case ViewStatus.FAILED | ViewStatus.CANCELLED | ViewStatus.REJECTED:
            stage = f" at {view.error_stage}" if view.error_stage else ""
            code = f"{view.error_code or '-'}{stage}"
            lines.append(("error", Text(code, style=status_style(status))))
            lines.append(("message", view.error_message or "-"))
        case _:
            assert_never(status)
    lines.append(("submitted", _when(view.submitted_at)))
    lines.append(("updated", _when(view.updated_at)))
    width = max(len(key) for key, _ in lines) + 2
    return Text("\n").join(Text.assemble((key.ljust(width), "bold"), value) for key, value in lines)


def state_views(states: Sequence[JobStateV1]) -> list[JobView]:
    """The jobs of state records, in their order."""
    board = JobBoard()
    return [view for state in states if (view := board.apply(state)) is not None]


# ``jobs``' columns, most useful first: a narrow terminal loses the last ones first (what the
# events add, then what the state record says of the job's owner and history).
_COLUMNS = (
    "job",
    "status",
    "reason",
    "user",
    "submitted",
    "labels",
    "attempt",
    "progress",
    "loss",
    "duration",
)
_PADDING = 3  # a column's borders and padding
_REASON_MIN = 24


def run_time(view: JobView, now: datetime) -> float | None:
    """How long the job took (completed: its own count), or has been going since its
    submission (running), or went until its end (failed, cancelled); None before it ran."""
    if view.duration_s is not None:
        return view.duration_s
    start = view.submitted_at
    if start is None or view.shown in (ViewStatus.QUEUED, ViewStatus.REJECTED):
        return None
    end = now if view.shown is ViewStatus.RUNNING else (view.updated_at or now)
    return max(0.0, (end - start).total_seconds())


def _cells(view: JobView, now: datetime) -> dict[str, str]:
    step = f"{view.step}/{view.total_steps}" if view.total_steps else "-"
    return {
        "job": view.job_id,
        "status": str(view.shown),
        "reason": reason(view),
        "progress": step,
        "loss": fmt_float(view.train_loss),
        "duration": fmt_duration(run_time(view, now)),
        "user": str(view.user_id),
        "submitted": _when(view.submitted_at),
        "labels": fmt_labels(view.labels),
        "attempt": str(view.attempt),
    }


def render_states(states: Sequence[JobStateV1], width: int | None = None) -> Table:
    """``jobs`` of state records alone (no events read: no progress, loss or duration)."""
    return render_jobs(state_views(states), width)


def render_jobs(
    views: Sequence[JobView], width: int | None = None, now: datetime | None = None
) -> Table:
    """``jobs``: one row per job. Within ``width`` (a terminal's), the least useful columns
    are left out first and the reason is cut short; without one (a pipe, a log) every column
    is there, whole."""
    at = now or datetime.now(UTC)
    rows = [_cells(view, at) for view in views]
    natural = {name: max([len(name)] + [len(row[name]) for row in rows]) for name in _COLUMNS}
    kept = list(_COLUMNS)
    if width is not None:
        # the reason may be cut short, to a few words; the other columns stay whole
        needs = {**natural, "reason": min(natural["reason"], _REASON_MIN)}
        while len(kept) > 3 and sum(needs[n] + _PADDING for n in kept) > width:
            kept.pop()
    room = None
    if width is not None:
        others = sum(natural[n] + _PADDING for n in kept if n != "reason")
        room = max(_REASON_MIN, width - others - _PADDING - 1)
    table = Table(title=f"{len(views)} jobs", title_justify="left", expand=False)
    for name in kept:
        cut = name == "reason" and room is not None
        table.add_column(
            name,
            no_wrap=True,
            justify="right" if name in ("progress", "loss", "duration") else "left",
            overflow="ellipsis" if cut else "fold",
            min_width=None if cut else natural[name],
            max_width=room if cut else None,
        )
    for row in rows:
        cells: list[str | Text] = [row[name] for name in kept]
        cells[1] = status_text(ViewStatus(row["status"]))
        table.add_row(*cells)
    return table
