"""``sweep``'s Kafka edge: read the sweep back from the commands and events topics, submit and
cancel what :class:`~.sweep_plan.SweepPlanner` decides, show the trials as they go.

The sweep keeps no state of its own: its submits (on the commands topic) and its trials'
events (on the events topic) are the state, read from their beginning at every start, so a
killed ``sweep`` run again goes on where it was (its running trials kept running meanwhile).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from aiokafka import TopicPartition
from model_trainer_contracts import CancelJobV1, ModelTrainerError, SubmitJobV1, decode_command
from pydantic import JsonValue
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .board import EXIT_BAD_INPUT, EXIT_FAILED
from .client import CommandSender
from .decode import Update, decode_update
from .kafka import Record, topic_partitions
from .readers import TopicReader
from .render import fmt_float
from .settings import ClientSettings
from .sweep_plan import Action, Submit, SweepPlanner, Trial, TrialStatus
from .sweep_spec import SweepSpec


def _params(trial: Trial) -> str:
    return " ".join(f"{path}={value}" for path, value in trial.params.items())


def trial_line(planner: SweepPlanner, trial: Trial) -> str:
    """One trial in one line, for a pipe or a log."""
    view = planner.view(trial)
    step = f" step {view.step}/{view.total_steps}" if view and view.total_steps else ""
    val = f" val {trial.last_val_loss:.4f}" if trial.last_val_loss is not None else ""
    value = f" {planner.spec.objective.metric} {trial.value:.4f}" if trial.value is not None else ""
    note = f" ({trial.note})" if trial.note else ""
    return (
        f"trial {trial.n} {trial.job_id} {trial.status}{step}{val}{value} [{_params(trial)}]{note}"
    )


def trial_table(planner: SweepPlanner) -> Table:
    spec = planner.spec
    done = sum(not t.status.live for t in planner.trials.values())
    table = Table(title=f"sweep {spec.name}: {done}/{spec.trials} trials ended", expand=False)
    for column in ("trial", "job", "status", "step", "last val", spec.objective.metric):
        table.add_column(column, no_wrap=True)
    for path in spec.space:
        table.add_column(path, no_wrap=True)
    table.add_column("note")
    best = planner.best()
    for trial in sorted(planner.trials.values(), key=lambda t: t.n):
        view = planner.view(trial)
        step = f"{view.step}/{view.total_steps}" if view and view.total_steps else "-"
        mark = " *" if best is trial else ""
        table.add_row(
            str(trial.n),
            trial.job_id,
            str(trial.status),
            step,
            fmt_float(trial.last_val_loss),
            fmt_float(trial.value) + mark,
            *(str(trial.params[path]) for path in spec.space),
            escape(trial.note),
        )
    return table


def trial_row(planner: SweepPlanner, trial: Trial) -> dict[str, JsonValue]:
    view = planner.view(trial)
    return {
        "trial": trial.n,
        "job_id": trial.job_id,
        "status": str(trial.status),
        "params": dict(trial.params),
        planner.spec.objective.metric: trial.value,
        "note": trial.note,
        "artifact_path": view.artifact_path if view else None,
    }


class SweepPrinter:
    """A live table on a terminal; otherwise a line per trial whenever its line changes."""

    def __init__(self, planner: SweepPlanner, console: Console) -> None:
        self.planner = planner
        self.console = console
        self.live: Live | None = None
        self.last: dict[int, str] = {}

    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)

    def start(self) -> None:
        if self.console.is_terminal:
            self.live = Live(get_renderable=self._frame, console=self.console, refresh_per_second=2)
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _frame(self) -> RenderableType:
        return trial_table(self.planner)

    def changed(self, trial: Trial) -> None:
        if self.live is not None:
            return
        line = trial_line(self.planner, trial)
        if self.last.get(trial.n) != line:
            self.last[trial.n] = line
            self.say(line)

    def action(self, action: Action) -> None:
        trial = self.planner.trials[action.n]
        if isinstance(action, Submit):
            self.say(f"submitted trial {trial.n} {trial.job_id} [{_params(trial)}]")
        else:
            self.say(f"cancel sent for trial {trial.n} {trial.job_id}: {action.command.reason}")


async def _assign(reader: TopicReader, settings: ClientSettings, console: Console) -> None:
    """Read the commands and events topics from their beginning (waiting for the service to
    create them)."""
    topics = (settings.commands_topic, settings.events_topic)
    said = False
    while True:
        found = {topic: await topic_partitions(settings.connection, topic) for topic in topics}
        if all(found.values()):
            break
        if not said:
            missing = ", ".join(topic for topic, ids in found.items() if not ids)
            console.print(f"waiting for {missing} (is the service running?)", soft_wrap=True)
            said = True
        await asyncio.sleep(1.0)
    await reader.add({TopicPartition(topic, p): None for topic, ids in found.items() for p in ids})


def _decode(
    records: list[Record], settings: ClientSettings, planner: SweepPlanner
) -> tuple[list[SubmitJobV1 | CancelJobV1], list[Update]]:
    """The sweep's commands and its trials' events among ``records``."""
    spec = planner.spec
    commands: list[SubmitJobV1 | CancelJobV1] = []
    events: list[Update] = []
    for record in records:
        if record.key is None or spec.trial_number(record.key.decode("utf-8", "replace")) is None:
            continue
        if record.topic == settings.commands_topic:
            try:
                command = decode_command(record.value)
            except ModelTrainerError:
                continue
            if isinstance(command, SubmitJobV1 | CancelJobV1):
                commands.append(command)
        elif (event := decode_update(record.value)) is not None:
            events.append(event)
    return commands, events


def _conflict(
    planner: SweepPlanner, commands: list[SubmitJobV1 | CancelJobV1], events: list[Update]
) -> str | None:
    labelled = [c.labels for c in commands if isinstance(c, SubmitJobV1)]
    labelled += [e.labels for e in events]
    for labels in labelled:
        digest = planner.foreign_digest(labels)
        if digest is not None:
            return (
                f"sweep {planner.spec.name} already ran with another spec (digest {digest}, "
                f"this one {planner.spec.digest}): give this one a new name"
            )
    return None


def _finish(planner: SweepPlanner, console: Console, out: Console, *, as_json: bool) -> int:
    best = planner.best()
    if as_json:
        trials = [trial_row(planner, t) for t in sorted(planner.trials.values(), key=lambda t: t.n)]
        summary: dict[str, JsonValue] = {
            "sweep": planner.spec.name,
            "best": None if best is None else trial_row(planner, best),
            "trials": list(trials),
        }
        out.print(json.dumps(summary), soft_wrap=True, highlight=False, markup=False)
    elif not console.is_terminal:
        table = trial_table(planner)
        width = Console(width=10_000).measure(table).maximum
        Console(file=console.file, width=width, color_system=None).print(table)
    if best is None:
        console.print(f"[red]no trial of sweep {planner.spec.name} completed[/red]")
        return EXIT_FAILED
    if not as_json:
        view = planner.view(best)
        metric = planner.spec.objective.metric
        lines = [
            f"best trial {best.n} {best.job_id}: {metric} {best.value:.4f} [{_params(best)}]",
            f"artifact: {view.artifact_path if view else '-'}",
        ]
        for line in lines:
            out.print(line, soft_wrap=True, highlight=False, markup=False)
    return 0


async def run_sweep(
    settings: ClientSettings,
    spec: SweepSpec,
    *,
    console: Console,
    out: Console,
    as_json: bool = False,
) -> int:
    """Run the sweep to its end (resuming it when Kafka knows it); 0 with a best trial,
    1 when no trial completed, 2 when the name is taken by another spec."""
    planner = SweepPlanner(spec)
    printer = SweepPrinter(planner, console)
    async with TopicReader(settings.connection) as reader:
        await _assign(reader, settings, console)
        commands, events = _decode(await reader.read_to_end(), settings, planner)
        conflict = _conflict(planner, commands, events)
        if conflict is not None:
            console.print(f"[red]refused[/red]: {escape(conflict)}", soft_wrap=True)
            return EXIT_BAD_INPUT
        actions = planner.replay(commands, events)
        if planner.trials:
            ended = [t for t in planner.trials.values() if not t.status.live]
            printer.say(
                f"resuming sweep {spec.name} at {datetime.now(UTC):%H:%M:%S}: "
                f"{len(planner.trials)} trials known, {len(ended)} ended, "
                f"{len(planner.live())} running"
            )
        for trial in sorted(planner.trials.values(), key=lambda t: t.n):
            printer.changed(trial)
        async with CommandSender(settings.connection, settings.commands_topic) as sender:
            printer.start()
            try:
                while True:
                    actions += planner.plan()
                    for action in actions:
                        await sender.send(action.command)
                        printer.action(action)
                        printer.changed(planner.trials[action.n])
                    actions = []
                    if planner.done:
                        break
                    for record in await reader.poll():
                        if record.topic != settings.events_topic:
                            continue
                        event = decode_update(record.value)
                        if event is None:
                            continue
                        changed, actions_now = planner.observe(event)
                        actions += actions_now
                        if changed is not None:
                            printer.changed(changed)
            except asyncio.CancelledError:  # Ctrl-C: the trials go on, a rerun resumes
                printer.stop()
                running = len(planner.live())
                console.print(
                    f"[yellow]interrupted[/yellow]: {running} running trials go on; run the "
                    "same sweep again to resume it",
                    soft_wrap=True,
                )
                raise
            finally:
                printer.stop()
    statuses = [t.status for t in planner.trials.values()]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in TrialStatus if statuses.count(s))
    console.print(f"sweep {spec.name} done: {counts}", soft_wrap=True, highlight=False)
    return _finish(planner, console, out, as_json=as_json)
