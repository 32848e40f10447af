"""``export tensorboard``: the events topic as TensorBoard runs, one per job.

Scalars per progress event (at its step, with the event's time as wall time): ``loss/train``,
``loss/val``, ``ppl/train``, ``ppl/val``, ``optim/lr``, ``optim/grad_norm``,
``throughput/tokens_per_sec``; ``loss/test`` and ``ppl/test`` from the completed event. The
config event is written as a text summary ``config`` (a Markdown table) and as HParams
(compared by ``loss/val`` and ``loss/test``), a failure as ``error``. An export replaces the
event files an earlier one wrote for a job, so a second export does not double its series.
When a later attempt resumes from an earlier step, its run is reopened with ``purge_step`` so
TensorBoard drops the replaced steps of the attempt before.

The writer is tensorboardX (the client's ``tensorboard`` extra): it writes event files with
protobuf alone, no TensorFlow, no torch.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Protocol, assert_never

from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    EventBase,
    FailedEventV1,
    ProgressEventV1,
)
from rich.console import Console

from .decode import QueuedNotice, Update, is_rejection
from .readers import LiveTail
from .settings import ClientSettings

ENVELOPE = set(EventBase.model_fields)
HPARAM_METRICS = ["loss/val", "loss/test"]  # what the HParams view compares runs by


class ScalarWriter(Protocol):
    """What the export needs of a TensorBoard writer (tensorboardX's SummaryWriter)."""

    def add_scalar(
        self, tag: str, scalar_value: float, global_step: int, walltime: float
    ) -> object: ...

    def add_text(self, tag: str, text_string: str, global_step: int, walltime: float) -> object: ...

    def add_hparams(self, hparams: dict[str, HParam], metrics: list[str]) -> object: ...

    def close(self) -> object: ...


HParam = str | int | float | bool


class _HParamsWriter:
    """tensorboardX's writer, and the HParams plugin's summaries written into its own run
    (``SummaryWriter.add_hparams`` makes a run of its own per call)."""

    def __init__(self, logdir: Path, purge_step: int | None, suffix: str) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(
            logdir=str(logdir), purge_step=purge_step, filename_suffix=suffix
        )

    def add_scalar(self, tag: str, scalar_value: float, global_step: int, walltime: float) -> None:
        self._writer.add_scalar(tag, scalar_value, global_step, walltime)

    def add_text(self, tag: str, text_string: str, global_step: int, walltime: float) -> None:
        self._writer.add_text(tag, text_string, global_step, walltime)

    def add_hparams(self, hparams: dict[str, HParam], metrics: list[str]) -> None:
        from tensorboardX.summary import hparams as summaries

        for summary in summaries(hparams, dict.fromkeys(metrics, 0.0)):
            self._writer.file_writer.add_summary(summary)

    def close(self) -> None:
        self._writer.close()


# (run folder, purge_step, file name suffix) -> writer
WriterFactory = Callable[[Path, int | None, str], ScalarWriter]


def writer_available() -> bool:
    return importlib.util.find_spec("tensorboardX") is not None


class _WithoutTorch(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` fail. tensorboardX imports torch when it is installed, only to
    accept torch tensors; the export writes floats, so it need not pay torch's seconds-long
    import (in the service's environment, where torch is installed)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None, /
    ) -> ModuleSpec | None:
        if fullname == "torch" or fullname.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def tensorboardx_writer(logdir: Path, purge_step: int | None, suffix: str) -> ScalarWriter:
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        blocker = _WithoutTorch()
        sys.meta_path.insert(0, blocker)
        try:
            import tensorboardX  # noqa: F401
        finally:
            sys.meta_path.remove(blocker)
    return _HParamsWriter(logdir, purge_step, suffix)


def markdown_table(fields: dict[str, object]) -> str:
    lines = ["| field | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in fields.items()]
    return "\n".join(lines)


@dataclass
class _Run:
    writer: ScalarWriter
    last_seq: int = -1
    last_step: int = -1


class TensorBoardExport:
    """Writes each job's events into ``logdir/<job_id>``. Feed it events in the order read."""

    def __init__(self, logdir: Path, writer_factory: WriterFactory = tensorboardx_writer) -> None:
        self.logdir = logdir
        self._factory = writer_factory
        self._runs: dict[str, _Run] = {}
        self._ended: dict[str, int] = {}  # job -> seq of its terminal event
        self._rewritten: set[str] = set()  # jobs whose earlier exports' files are gone

    def _run(self, event: EventBase, purge_step: int | None = None) -> _Run:
        run = self._runs.get(event.job_id)
        if run is None and event.job_id not in self._rewritten:
            # This export reads the job's events from the start of the topic's retention: the
            # event files an earlier export wrote for it would show every series twice.
            self._rewritten.add(event.job_id)
            for old in (self.logdir / event.job_id).glob("events.out.tfevents.*"):
                old.unlink()
        if run is None:
            # Event files are named by the second they are opened in and read in name order:
            # the suffix keeps a run reopened within the same second apart, and after.
            suffix = f".seq{event.seq:012d}"
            writer = self._factory(self.logdir / event.job_id, purge_step, suffix)
            run = self._runs[event.job_id] = _Run(writer)
        return run

    def apply(self, update: Update) -> None:
        if isinstance(update, QueuedNotice) or is_rejection(update):
            return
        if update.seq <= self._ended.get(update.job_id, -1):
            return  # read again after its run was closed
        known = self._runs.get(update.job_id)
        if known is not None and update.seq <= known.last_seq:
            return
        if (
            isinstance(update, ConfigEventV1)
            and known is not None
            and update.start_step < known.last_step
        ):  # a resumed attempt: its steps replace the earlier attempt's from start_step on
            known.writer.close()
            del self._runs[update.job_id]
            run = self._run(update, purge_step=update.start_step + 1)
        else:
            run = known or self._run(update)
        run.last_seq = update.seq
        self._write(run, update, update.ts.timestamp())

    def _write(self, run: _Run, event: Update, walltime: float) -> None:
        writer = run.writer
        match event:
            case QueuedNotice():
                pass  # a wait, not a measurement
            case ConfigEventV1():
                fields = {k: v for k, v in event.model_dump().items() if k not in ENVELOPE}
                fields["attempt"] = event.attempt
                writer.add_text("config", markdown_table(fields), event.start_step, walltime)
                hparams = {k: v for k, v in fields.items() if isinstance(v, HParam)}
                writer.add_hparams(hparams, HPARAM_METRICS)
            case ProgressEventV1():
                step = event.step
                run.last_step = max(run.last_step, step)
                writer.add_scalar("loss/train", event.train_loss, step, walltime)
                writer.add_scalar("ppl/train", event.train_ppl, step, walltime)
                writer.add_scalar("optim/lr", event.learning_rate, step, walltime)
                writer.add_scalar("optim/grad_norm", event.grad_norm, step, walltime)
                writer.add_scalar("throughput/tokens_per_sec", event.tokens_per_sec, step, walltime)
                if event.val_loss is not None:
                    writer.add_scalar("loss/val", event.val_loss, step, walltime)
                if event.val_ppl is not None:
                    writer.add_scalar("ppl/val", event.val_ppl, step, walltime)
            case DownloadEventV1():
                pass  # fetching the corpus, not a measurement
            case CompletedEventV1():
                if event.test_loss is not None:
                    writer.add_scalar("loss/test", event.test_loss, event.steps, walltime)
                if event.test_ppl is not None:
                    writer.add_scalar("ppl/test", event.test_ppl, event.steps, walltime)
                fields = {k: v for k, v in event.model_dump().items() if k not in ENVELOPE}
                writer.add_text("result", markdown_table(fields), event.steps, walltime)
                self._end(event)
            case FailedEventV1():
                text = f"{event.code} at {event.stage}: {event.message}"
                writer.add_text("error", text, max(run.last_step, 0), walltime)
                self._end(event)
            case _:
                assert_never(event)

    def _end(self, event: EventBase) -> None:
        run = self._runs.pop(event.job_id, None)
        if run is not None:
            run.writer.close()
        self._ended[event.job_id] = event.seq

    @property
    def open_runs(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        for run in self._runs.values():
            run.writer.close()
        self._runs.clear()


async def export(settings: ClientSettings, logdir: Path, *, follow: bool, console: Console) -> int:
    """Export the events topic from the start of its retention: to its end as of now, or
    (``follow``) on and on until interrupted."""
    await asyncio.to_thread(logdir.mkdir, parents=True, exist_ok=True)
    exporter = TensorBoardExport(logdir)
    jobs: set[str] = set()
    try:
        async with LiveTail(settings, with_state=False) as tail:
            if not tail.events_found and not follow:
                console.print(f"[yellow]no topic {settings.events_topic}[/yellow]: nothing done")
                return 0
            while follow or not await tail.caught_up():
                for item in await tail.poll():
                    if isinstance(item, EventBase):
                        exporter.apply(item)
                        jobs.add(item.job_id)
                await asyncio.sleep(0)
    finally:
        exporter.close()
    console.print(f"exported {len(jobs)} jobs to {logdir}")
    return 0
