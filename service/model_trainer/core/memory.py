"""A job's peak memory, estimated from its spec without torch, and the budget it must fit.

The estimate is a sum of parts, each an upper bound of what one training step holds at its
peak (the start of the backward pass, when every saved activation and the logits' gradient
exist at once), in bytes:

* ``weights``: the fp32 parameters (autocast in fp16/bf16 adds a half-precision copy of each);
* ``gradients``: one fp32 gradient per parameter that trains;
* ``optimizer``: AdamW's two moments, or SGD's momentum buffer (none without momentum), per
  parameter that trains: frozen weights (a LoRA adapter's base) have neither;
* ``activations``: what autograd keeps for the backward pass, the backward pass's own
  temporaries and the kernels' workspace (the backend's :func:`~.capabilities.footprint`),
  plus the batch's token ids;
* ``logits``: batch x context x vocabulary values, three fp32 copies at the peak (the
  log-softmax kept for the backward pass, the loss's gradient and the logits' gradient), plus
  the half-precision logits and their gradient under autocast;
* ``data``: the corpus while it is read, decoded and tokenized (bytes, text, ids, the token
  cache's copy): ``CORPUS_FACTOR`` times its size (15x was measured for a character
  tokenizer, 11x for a BPE), plus ``BPE_TRAINING_BYTES`` when the job trains a BPE;
* ``runtime``: what a job costs above an idle worker whatever its shape (the code of the
  kernels it pages in, allocator arenas, thread pools, Python objects), a constant: a tiny
  job's peak RSS is about 65 MB above its idle worker's.

Summing the parts over-counts (the data is gone before the model is built, gradients grow as
activations are freed), which keeps the estimate an upper bound; the engine tests measure it
against real runs (``tests/engine/test_engine_memory.py``): within 2x of the measured peak.

The vocabulary is what the spec says it will be: a BPE's ``vocab_size``; an earlier job's,
from its manifest (``kind: job``, and any ``init_from``); for a character tokenizer, the
distinct characters of inline text, else ``CHAR_VOCAB_BOUND``. The worker checks again with
the tokenizer it actually built, before it builds the model.

A job of several processes (``resources.processes``) is estimated per process, each holding
its share of the global batch: under ``ddp`` a whole replica of weights, gradients and
optimizer state; under ``fsdp`` a 1/N shard of the optimizer state, and the weights and
gradients whole during a step beside their 1/N shards (the engine shards the model as one
unit: its lean forwards read every layer's weights from the root's forward). So sharding
saves memory from 3 processes on: with AdamW 16 bytes a parameter under ``ddp``, 8 + 8/N
under ``fsdp``. ``auto`` is ``ddp`` when that fits the budget, else ``fsdp``
where the backend has it (:func:`choose_strategy`).

On CUDA the model's parts live in GPU memory: only ``data`` and ``runtime`` count against the
host budget (CUDA's own host memory, its context and kernels, is not estimated), and running
out of GPU memory is CUDA_OOM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import (
    BpeTokenizer,
    JobTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
)
from pydantic import JsonValue

from .capabilities import CAPABILITIES, context_length, footprint
from .finetune import trainable_parameters
from .layout import MANIFEST, resolve_inside
from .pretrained import confined_folder
from .storage import is_url

MIB = 1 << 20
CHAR_VOCAB_BOUND = 257  # a byte's worth of distinct characters, and <unk>
VOCAB_BOUND = 65_536  # the largest vocabulary a BPE spec may ask for
CORPUS_FACTOR = 16
BPE_TRAINING_BYTES = 64 * MIB  # the tokenizer library's threads and tables, whatever the corpus
RUNTIME_BYTES = 96 * MIB


@dataclass(frozen=True)
class Vocabulary:
    """The vocabulary size the estimate assumes, and where it comes from."""

    size: int
    source: str  # bpe | inline_text | char_bound | artifact | bound | tokenizer


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one job's run, by part, in bytes; see the module docstring."""

    device: str
    precision: str
    vocabulary: Vocabulary
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    data: int
    runtime: int
    processes: int = 1
    strategy: str = "ddp"

    @property
    def model_bytes(self) -> int:
        """What training holds on its device: weights to logits."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    @property
    def host_bytes(self) -> int:
        """What the worker process holds in host memory: everything on CPU."""
        if self.device == "cuda":
            return self.data + self.runtime
        return self.model_bytes + self.data + self.runtime

    def details(self, budget_mb: int) -> dict[str, JsonValue]:
        parts = {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "logits": self.logits,
            "data": self.data,
            "runtime": self.runtime,
        }
        details: dict[str, JsonValue] = {
            "estimate_mb": _mb(self.host_bytes),
            "budget_mb": budget_mb,
            "device": self.device,
            "precision": self.precision,
            "vocab_size": self.vocabulary.size,
            "vocab_source": self.vocabulary.source,
            "processes": self.processes,
            "strategy": self.strategy,
            "breakdown_mb": {name: _mb(size) for name, size in parts.items()},
        }
        if self.device == "cuda":
            details["device_estimate_mb"] = _mb(self.model_bytes)
        return details


def _mb(size: int) -> int:
    return -(-size // MIB)  # rounded up


def estimate(
    job: SubmitJobV1,
    *,
    vocabulary: Vocabulary,
    corpus_bytes: int,
    device: str,
    precision: str,
    pretrained: tuple[int, int] | None = None,
    strategy: str = "ddp",
) -> MemoryEstimate:
    """The peak memory of one process of ``job`` run on ``device`` in ``precision`` (both
    resolved) under ``strategy``. ``pretrained``: a model folder's ``(all, trainable)`` values
    (:func:`~.finetune.trainable_parameters`), which its spec cannot tell."""
    tr = job.training
    half = precision != "fp32"
    shape = footprint(job.model, vocabulary.size, half=half)
    params, context = shape.parameters, context_length(job.model)
    params, trainable = pretrained or (params, params)
    moments = 2 if tr.optimizer == "adamw" else 1 if tr.momentum > 0 else 0
    processes = job.resources.processes
    batch = tr.batch_size // processes
    tokens = batch * context
    trains_bpe = isinstance(job.tokenizer, BpeTokenizer) and job.init_from is None
    # fp32: the log-softmax, the loss's gradient, the logits' gradient; autocast adds the
    # half-precision logits and their gradient.
    logit_bytes = 4 * 3 + (2 * 2 if half else 0)
    weights = 4 * params + (2 * params if half else 0)
    gradients, optimizer = 4 * trainable, 4 * moments * trainable
    if strategy == "fsdp" and processes > 1:
        weights += -(-weights // processes)
        gradients += -(-gradients // processes)
        optimizer = -(-optimizer // processes)
    return MemoryEstimate(
        device=device,
        precision=precision,
        vocabulary=vocabulary,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=batch * shape.activation_bytes + shape.workspace_bytes + 16 * tokens,
        logits=tokens * vocabulary.size * logit_bytes,
        data=CORPUS_FACTOR * corpus_bytes + (BPE_TRAINING_BYTES if trains_bpe else 0),
        runtime=RUNTIME_BYTES,
        processes=processes,
        strategy=strategy,
    )


def choose_strategy(job: SubmitJobV1, fits: Callable[[str], bool]) -> str:
    """The strategy a job trains with: as asked, or for ``auto`` ``ddp`` unless only ``fsdp``
    fits (``fits``: whether the estimate under a strategy is within the budget)."""
    asked = job.resources.strategy
    if asked != "auto":
        return asked
    if "fsdp" not in CAPABILITIES[job.backend].strategies or job.resources.processes == 1:
        return "ddp"
    return "ddp" if fits("ddp") or not fits("fsdp") else "fsdp"


def check_memory(
    job: SubmitJobV1,
    budget_mb: int,
    *,
    vocabulary: Vocabulary,
    corpus_bytes: int,
    device: str,
    precision: str,
    pretrained: tuple[int, int] | None = None,
) -> MemoryEstimate:
    """The estimate (per process, under the strategy :func:`choose_strategy` picks), or
    RESOURCE_LIMIT_EXCEEDED when it is over ``budget_mb``."""

    def under(strategy: str) -> MemoryEstimate:
        return estimate(
            job,
            vocabulary=vocabulary,
            corpus_bytes=corpus_bytes,
            device=device,
            precision=precision,
            pretrained=pretrained,
            strategy=strategy,
        )

    found = under(choose_strategy(job, lambda s: under(s).host_bytes <= budget_mb * MIB))
    if found.host_bytes > budget_mb * MIB:
        raise ModelTrainerError(
            ModelTrainerErrorCode.RESOURCE_LIMIT_EXCEEDED,
            f"the job needs about {_mb(found.host_bytes)} MB of memory on {device} "
            f"({precision}); a worker has {budget_mb} MB: shrink the batch, the context, the "
            "model or the vocabulary",
            details=found.details(budget_mb),
        )
    return found


def check_job_memory(
    job: SubmitJobV1,
    budget_mb: int,
    *,
    data_root: Path | None,
    artifacts_root: Path | None,
    device: str,
    precision: str,
) -> MemoryEstimate:
    """:func:`check_memory` with the vocabulary and corpus size the spec and roots tell (and
    a pretrained model's parameters, the weights its folder will load)."""
    return check_memory(
        job,
        budget_mb,
        vocabulary=vocabulary(job, artifacts_root),
        corpus_bytes=corpus_bytes(job, data_root),
        device=device,
        precision=precision,
        pretrained=None if data_root is None else trainable_parameters(job, data_root),
    )


def placement(job: SubmitJobV1, cuda_available: bool | None) -> tuple[str, str]:
    """Device and precision as a worker would resolve them; unknown CUDA counts as none, so
    ``auto`` is held to the host budget."""
    spec = job.training
    cuda = spec.device == "cuda" or (spec.device == "auto" and cuda_available is True)
    device = "cuda" if cuda else "cpu"
    precision = spec.precision
    if precision == "auto":
        precision = "bf16" if cuda else "fp32"
    return device, precision


def vocabulary(job: SubmitJobV1, artifacts_root: Path | None) -> Vocabulary:
    """The vocabulary the job will train with, as far as its spec and manifests tell."""
    tok = job.tokenizer
    earlier = job.init_from or (tok.job_id if isinstance(tok, JobTokenizer) else None)
    if earlier is not None:
        size = _manifest_vocab(artifacts_root, earlier) if artifacts_root is not None else None
        return Vocabulary(VOCAB_BOUND, "bound") if size is None else Vocabulary(size, "artifact")
    if isinstance(tok, BpeTokenizer):
        return Vocabulary(tok.vocab_size, "bpe")
    text = job.data.inline_text
    if text is not None:
        return Vocabulary(len(set(text)) + 1, "inline_text")
    return Vocabulary(CHAR_VOCAB_BOUND, "char_bound")


def _manifest_vocab(artifacts_root: Path, job_id: str) -> int | None:
    """``resolved.vocab_size`` of an earlier job's manifest (a small file), if it has one."""
    try:
        folder = (
            confined_folder(artifacts_root, job_id, field="init_from")
            if is_url(job_id)
            else artifacts_root / job_id
        )
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, ModelTrainerError):
        return None
    resolved = manifest.get("resolved") if isinstance(manifest, dict) else None
    size = resolved.get("vocab_size") if isinstance(resolved, dict) else None
    return size if isinstance(size, int) and size > 0 else None


def corpus_bytes(job: SubmitJobV1, data_root: Path | None) -> int:
    """The corpus's size: inline text's UTF-8 bytes, or the files' sizes under ``data_root``
    (0 when there is no data root to look in, or no such path: other checks refuse it)."""
    data = job.data
    if data.inline_text is not None:
        return len(data.inline_text.encode())
    if data_root is None or data.corpus_path is None:
        return 0
    target = resolve_inside(data_root, data.corpus_path)
    if target.is_file():
        return target.stat().st_size
    total = 0
    for folder, dirs, files in os.walk(target):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                path = Path(folder, name)
                if path.is_file():
                    total += path.stat().st_size
    return total
