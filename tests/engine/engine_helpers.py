"""Helpers for the engine tests: tiny corpora, tiny jobs, a recording run context."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from model_trainer.core.layout import CHECKPOINTS
from model_trainer.core.stop import stop_at_deadline
from model_trainer.engine import RunContext, StopReason
from model_trainer.engine.checkpoint import EXTRA, FILE, SHARDED
from model_trainer_contracts import ConfigEventV1, ProgressEventV1, SubmitJobV1

_WORDS = [
    "the",
    "king",
    "and",
    "queen",
    "walk",
    "to",
    "the",
    "castle",
    "while",
    "a",
    "fox",
    "runs",
    "over",
    "the",
    "hill",
    "she",
    "said",
    "that",
    "we",
    "shall",
    "see",
    "the",
    "sea",
    "tomorrow",
    "if",
    "the",
    "wind",
    "is",
    "kind",
]

TINY_MODELS: dict[str, dict[str, object]] = {
    "char_lstm": {"embedding_dim": 16, "hidden_size": 32, "num_layers": 1, "block_size": 16},
    "gpt2": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
    "llama": {
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "hidden_size": 16,
        "intermediate_size": 32,
        "block_size": 16,
    },
    "pretrained": {"path": "models/tiny", "block_size": 16},
}


def make_text(chars: int = 6000, seed: int = 0) -> str:
    """Deterministic English-like text of about ``chars`` characters, in short lines."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < chars:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10))).capitalize() + ".\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)


Event = ConfigEventV1 | ProgressEventV1


@dataclass
class Env:
    """A data root holding ``corpus.txt`` and an artifacts root, both under ``tmp_path``."""

    root: Path
    data_root: Path = field(init=False)
    artifacts_root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data_root = self.root / "data"
        self.artifacts_root = self.root / "artifacts"
        self.data_root.mkdir(parents=True, exist_ok=True)
        (self.data_root / "corpus.txt").write_text(make_text())

    def job(
        self,
        backend: str = "char_lstm",
        *,
        job_id: str = "job-1",
        model: Mapping[str, object] | None = None,
        tokenizer: Mapping[str, object] | None = None,
        data: Mapping[str, object] | None = None,
        training: Mapping[str, object] | None = None,
        progress: Mapping[str, object] | None = None,
        init_from: str | None = None,
    ) -> SubmitJobV1:
        """A tiny CPU job: defaults overridden section by section."""
        return SubmitJobV1.model_validate(
            {
                "job_id": job_id,
                "user_id": 7,
                "backend": backend,
                "model": {**TINY_MODELS[backend], **(model or {})},
                "tokenizer": tokenizer or {"kind": "model" if backend == "pretrained" else "char"},
                "data": data or {"corpus_path": "corpus.txt"},
                "training": {
                    "max_steps": 8,
                    "batch_size": 4,
                    "eval_every": 4,
                    "eval_batches": 2,
                    "device": "cpu",
                    **(training or {}),
                },
                "progress": progress or {"every_steps": 1},
                "init_from": init_from,
            }
        )

    def ctx(
        self,
        job: SubmitJobV1,
        events: list[Event],
        *,
        stop_at_step: int | None = None,
        reason: StopReason = StopReason.CANCEL,
        deadline: float | None = None,
        max_corpus_bytes: int = 1 << 30,
        attempt: int = 1,
    ) -> RunContext:
        """A context numbering events into ``events`` as a publisher would. With
        ``stop_at_step`` k its ``stop_requested`` answers ``reason`` once the progress event
        of step k is out (0: from the first question, in data preparation); with
        ``deadline`` it answers TIMEOUT once the wall clock passes it."""
        stop_from: list[bool] = [stop_at_step == 0]

        def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
            events.append(event.model_copy(update={"seq": len(events)}))
            if isinstance(event, ProgressEventV1) and stop_at_step is not None:
                stop_from[0] = stop_from[0] or event.step >= stop_at_step

        at_deadline = stop_at_deadline(deadline)

        def stop() -> StopReason | None:
            return reason if stop_from[0] else at_deadline()

        return RunContext(
            job=job,
            data_root=self.data_root,
            artifacts_root=self.artifacts_root,
            attempt=attempt,
            threads=1,
            checkpoint_every=1000,
            max_corpus_bytes=max_corpus_bytes,
            emit=emit,
            stop_requested=stop,
        )


def losses(events: list[Event]) -> dict[int, float]:
    """Training loss by step, from progress events."""
    return {e.step: e.train_loss for e in events if isinstance(e, ProgressEventV1)}


def checkpoint_file(job_dir: Path) -> Path:
    """The latest checkpoint of the job's highest attempt."""
    attempts = sorted((job_dir / CHECKPOINTS).glob("attempt-*"), key=lambda p: int(p.name[8:]))
    return attempts[-1] / FILE


def checkpoint_step(job_dir: Path) -> int:
    """The step recorded in a job's latest checkpoint (of its highest attempt; the file, or
    the loop state of a sharded one)."""
    path = checkpoint_file(job_dir)
    sharded = path.with_name(SHARDED) / EXTRA
    return step_of(sharded if sharded.is_file() else path)


def step_of(path: Path) -> int:
    """The step a checkpoint file (or a sharded one's loop state) records."""
    state: object = torch.load(path, weights_only=True)
    assert isinstance(state, dict)
    step = state["loop"]["step"]
    assert isinstance(step, int)
    return step
