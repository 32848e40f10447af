"""Terminal views of jobs, as pure functions: models in, rich renderables out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from model_trainer_contracts import JobStateV1, JobStatus
from rich.console import RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .board import JobView

STATUS_STYLE = {
    JobStatus.QUEUED: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
}


def status_text(status: JobStatus) -> Text:
    return Text(str(status), style=STATUS_STYLE[status])


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
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S")


def _progress(view: JobView, width: int = 24) -> RenderableType:
    if view.status is JobStatus.QUEUED:
        where = "" if view.queue_position is None else f" #{view.queue_position}"
        return Text(f"waiting{where}", style="yellow")
    total = view.total_steps if view.total_steps > 0 else None
    completed = view.total_steps if view.status is JobStatus.COMPLETED else view.step
    return ProgressBar(total=total, completed=completed, width=width)


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
            status_text(view.status),
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
    lines: list[tuple[str, str | Text]] = [
        ("job", view.job_id),
        ("status", status_text(view.status)),
        ("user", str(view.user_id)),
        ("labels", fmt_labels(view.labels)),
        ("attempt", str(view.attempt or "-")),
    ]
    if view.failures:
        lines.append(("failures", str(view.failures)))
    if view.model is not None:
        lines.append(("model", f"{view.model} on {view.device}"))
    if view.status is JobStatus.QUEUED and view.queue_position is not None:
        where = f"position {view.queue_position} {view.queue_reason or ''}"
        lines.append(("queue", where.strip()))
    if view.total_steps:
        lines.append(("step", f"{view.step}/{view.total_steps}"))
    lines.append(("train loss", fmt_float(view.train_loss)))
    lines.append(("val loss", fmt_float(view.val_loss)))
    if view.status is JobStatus.RUNNING:
        lines.append(("tok/s", fmt_rate(view.tokens_per_sec)))
        lines.append(("eta", fmt_duration(view.eta_at(now))))
    if view.status is JobStatus.COMPLETED:
        lines.append(("best val loss", fmt_float(view.best_val_loss)))
        lines.append(("test loss", fmt_float(view.test_loss)))
        lines.append(("duration", fmt_duration(view.duration_s)))
        lines.append(("artifact", view.artifact_path or "-"))
    if view.status is JobStatus.FAILED:
        stage = f" at {view.error_stage}" if view.error_stage else ""
        lines.append(("error", Text(f"{view.error_code or '-'}{stage}", style="red")))
        lines.append(("message", view.error_message or "-"))
    lines.append(("submitted", _when(view.submitted_at)))
    lines.append(("updated", _when(view.updated_at)))
    width = max(len(key) for key, _ in lines) + 2
    return Text("\n").join(Text.assemble((key.ljust(width), "bold"), value) for key, value in lines)


def render_states(states: Sequence[JobStateV1]) -> Table:
    """``jobs``: one row per job of the state topic."""
    table = Table(title=f"{len(states)} jobs", title_justify="left")
    for name in ("job", "status", "user", "labels", "attempt", "error", "submitted", "updated"):
        table.add_column(name, no_wrap=name in ("job", "status", "submitted", "updated"))
    for state in states:
        table.add_row(
            state.job_id,
            status_text(state.status),
            str(state.user_id),
            fmt_labels(state.labels),
            str(state.attempt),
            state.error_code or "",
            _when(state.submitted_at),
            _when(state.updated_at),
        )
    return table
