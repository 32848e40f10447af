"""Turning a job into the pieces a training loop needs: data, tokenizer, model, optimizer,
restored from the job's checkpoint when there is one.

Everything here runs before the first step, so every failure carries ``stage="prepare"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import structlog
import torch
from model_trainer_contracts import (
    BpeTokenizer,
    DownloadEventV1,
    JobTokenizer,
    ModelTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    RecordSpec,
    SubmitJobV1,
    TrainingSpec,
)
from torch import nn

from model_trainer.core.distributed import Rank
from model_trainer.core.finetune import RECORD_FORMATS, trainable_parameters
from model_trainer.core.layout import CACHE_DIR, DOWNLOADS, MANIFEST
from model_trainer.core.memory import Vocabulary, check_memory, corpus_bytes
from model_trainer.core.pretrained import confined_folder
from model_trainer.core.storage import Fetching
from model_trainer.engine import checkpoint, distributed
from model_trainer.engine.artifact import read_manifest
from model_trainer.engine.backend import Backend
from model_trainer.engine.context import RunContext
from model_trainer.engine.corpus import decode_corpus, read_corpus
from model_trainer.engine.dataset import Splits, cache_key, load_cached, split, store
from model_trainer.engine.examples import prepare_examples
from model_trainer.engine.optim import build_optimizer
from model_trainer.engine.packing import PackedSplits
from model_trainer.engine.placement import Placement, resolve_placement
from model_trainer.engine.records import HeldOut, is_parquet, parquet_text
from model_trainer.engine.tokenizer import TextTokenizer, load_from_job, train_bpe, train_char

_C = ModelTrainerErrorCode
DEFAULT_STEPS = 200
log = structlog.get_logger()


@dataclass
class Prepared:
    """A job ready to train; ``loop`` is the resumed loop state (step 0 for a fresh run)."""

    placement: Placement
    tokenizer: TextTokenizer
    splits: Splits | PackedSplits
    context: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loop: checkpoint.LoopState
    total_steps: int
    total_epochs: int
    tokens_per_step: int
    num_parameters: int
    flops_per_token: float  # training FLOPs per token, for the mfu figure
    run_digest: str
    held_out: HeldOut | None = None  # prompts to answer at the end (generate)


def run_digest(job: SubmitJobV1) -> str:
    """Digest of what determines the training run (not labels, progress cadence or timeout)."""
    fields = {"backend", "model", "tokenizer", "data", "training", "init_from"}
    dumped = job.model_dump(mode="json", include=fields)
    # Fields added with fine-tuning count only when set: the checkpoints of runs from before
    # them keep their digest, and resume.
    if job.data.records == RecordSpec():
        data = dumped["data"]
        if isinstance(data, dict):
            data.pop("records", None)
    if job.adapter is not None:
        dumped["adapter"] = job.adapter.model_dump(mode="json")
    body = json.dumps(dumped, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def earlier_job_dir(ctx: RunContext, job_id: str) -> Path:
    # Checked again here, not only at acceptance: the files are read now.
    return confined_folder(ctx.artifacts_root, job_id, field="init_from")


def prepare(ctx: RunContext, backend: Backend) -> Prepared:
    job, tr = ctx.job, ctx.job.training
    placement = resolve_placement(tr, backend.capabilities)
    placement.apply_matmul_precision()
    context = backend.context_length(job.model)
    splits: Splits | PackedSplits
    held_out = None
    with distributed.leader_first(ctx.rank):  # rank 0 fills the token cache, the others read it
        if job.data.format in RECORD_FORMATS:  # chat, instruction: packed examples
            tokenizer, splits, held_out = prepare_examples(
                ctx, given_tokenizer(ctx, backend), context
            )
        else:
            tokenizer, splits = prepare_data(ctx, backend, context)
    ctx.obey_stop("prepare", 0)
    if ctx.memory_budget_mb is not None:  # again, with the vocabulary the job actually has
        check_memory(
            job,
            ctx.memory_budget_mb,
            vocabulary=Vocabulary(tokenizer.vocab_size, "tokenizer"),
            corpus_bytes=corpus_bytes(job, ctx.data_root),
            device=placement.device.type,
            precision=placement.precision,
            pretrained=trainable_parameters(job, ctx.data_root),
        )
    _seed_everything(tr.seed)
    model = backend.create(job.model, tokenizer.vocab_size, ctx.data_root)
    if job.adapter is not None:  # seeded like the model: the same adapter on every attempt
        model = backend.attach_adapter(model, job.adapter)
    if job.init_from is not None:
        backend.load_weights(model, _init_dir(ctx, job.init_from))
        log.info("engine.init_from", job_id=job.job_id, init_from=job.init_from)
    model.to(placement.device)
    num_parameters = sum(p.numel() for p in model.parameters())
    flops = backend.flops_per_token(model, context)
    optimizer = build_optimizer(model, tr, fused=placement.fused_adamw)
    scaler = torch.amp.GradScaler("cuda") if placement.uses_scaler else None
    digest = run_digest(job)
    fence = checkpoint.Fence.of(ctx)
    with distributed.leader_first(ctx.rank):
        resumes = fence.claim()
    if resumes and not backend.capabilities.can_resume:
        raise ModelTrainerError(
            _C.RUN_NOT_RESUMABLE, f"backend {backend.name!r} cannot resume from a checkpoint"
        )
    if placement.compile:  # after loading: parameter names never change
        backend.compile(model)
    if ctx.rank is not None:  # first: a checkpoint loads into this rank's shards
        model, optimizer = _distribute(model, optimizer, ctx.rank, tr)
    loop = checkpoint.restore(
        fence.folder,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        run_digest=digest,
        data_key=splits.cache_key,
        rank=ctx.rank,
    )
    if loop is not None:
        log.info("engine.resumed", job_id=job.job_id, step=loop.step)
    ctx.obey_stop("prepare", loop.step if loop is not None else 0)
    tokens_per_step = tr.batch_size * tr.grad_accum_steps * context
    total_steps = _total_steps(ctx.job, len(splits.train), tokens_per_step)
    return Prepared(
        placement=placement,
        tokenizer=tokenizer,
        splits=splits,
        context=context,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        loop=loop or checkpoint.LoopState(),
        total_steps=total_steps,
        total_epochs=max(1, math.ceil(total_steps * tokens_per_step / len(splits.train))),
        tokens_per_step=tokens_per_step,
        num_parameters=num_parameters,
        flops_per_token=flops,
        run_digest=digest,
        held_out=held_out,
    )


def _distribute(
    model: nn.Module, optimizer: torch.optim.Optimizer, rank: Rank, tr: TrainingSpec
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model under the rank's strategy, and its optimizer: the same one under DDP (the
    same parameters), a new one over the shards under FSDP."""
    wrapped = distributed.wrap(model, rank)
    if rank.strategy != "fsdp":
        return wrapped, optimizer
    return wrapped, build_optimizer(wrapped, tr)


def _total_steps(job: SubmitJobV1, train_tokens: int, tokens_per_step: int) -> int:
    tr = job.training
    if tr.max_steps is not None:
        return tr.max_steps
    if tr.epochs is not None:
        return max(1, math.ceil(tr.epochs * train_tokens / tokens_per_step))
    return DEFAULT_STEPS


def _seed_everything(seed: int) -> None:
    """Seed every global RNG (model init, dropout); a resume then overwrites them."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def prepare_data(ctx: RunContext, backend: Backend, context: int) -> tuple[TextTokenizer, Splits]:
    """The tokenizer and split token data, from the token cache when it has them (text, and
    the text of JSONL or Parquet records)."""
    data = ctx.job.data
    if data.format == "jsonl" and is_parquet(data, ctx.data_root):
        raw = parquet_text(data, ctx.data_root, ctx.max_corpus_bytes)
    else:
        raw = read_corpus(
            data,
            ctx.data_root,
            ctx.max_corpus_bytes,
            downloads=ctx.artifacts_root / DOWNLOADS,
            progress=partial(_download_event, ctx),
        )
    ctx.obey_stop("prepare", 0)
    given = given_tokenizer(ctx, backend)
    spec = ctx.job.tokenizer
    if given is not None:
        request = "given:" + hashlib.sha256(given.to_json().encode()).hexdigest()
    else:
        request = spec.model_dump_json()
    key = cache_key(raw.digest, request)
    cache_root = ctx.artifacts_root / CACHE_DIR
    cached = load_cached(cache_root, key)
    if cached is not None:
        tokens, tokenizer = cached
        if given is not None:  # the same tokenizer by the key; keep its kind and files
            tokenizer = given
        log.info("engine.token_cache_hit", job_id=ctx.job.job_id, key=key, tokens=len(tokens))
    else:
        text = decode_corpus(raw)
        del raw  # the bytes are no longer needed; the text can be large
        ctx.obey_stop("prepare", 0)
        if given is not None:  # always so for a job tokenizer
            tokenizer = given
        elif isinstance(spec, BpeTokenizer):
            tokenizer = train_bpe(text, spec.vocab_size, spec.min_frequency)
        else:
            tokenizer = train_char(text)
        ctx.obey_stop("prepare", 0)
        tokens = store(cache_root, key, tokenizer.encode(text), tokenizer)
        log.info("engine.tokenized", job_id=ctx.job.job_id, key=key, tokens=len(tokens))
    if tokenizer.kind not in backend.capabilities.tokenizers:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"backend {backend.name!r} cannot use a {tokenizer.kind} tokenizer",
            details={"backend": backend.name, "tokenizer": tokenizer.kind},
        )
    return tokenizer, split(tokens, ctx.job.data, context, key)


def _download_event(ctx: RunContext, fetching: Fetching) -> None:
    """A long corpus download, told in the job's events (the worker's pipe, then Kafka)."""
    ctx.emit_download(
        DownloadEventV1(
            **ctx.envelope(),
            url=fetching.url,
            bytes_done=fetching.bytes_done,
            bytes_total=fetching.bytes_total,
            files_done=fetching.files_done,
            files_total=fetching.files_total,
            elapsed_s=fetching.elapsed_s,
            done=fetching.done,
        )
    )


def _init_dir(ctx: RunContext, init_from: str) -> Path:
    """The init_from job's artifact folder: MODEL_NOT_FOUND or MODEL_INCOMPATIBLE."""
    job = ctx.job
    folder = earlier_job_dir(ctx, init_from)
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError):
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND,
            f"job {init_from!r} has no artifact ({MANIFEST})",
            details={"init_from": init_from},
        ) from None
    earlier = manifest.get("job")
    earlier_backend = earlier.get("backend") if isinstance(earlier, dict) else None
    if earlier_backend != job.backend:
        raise ModelTrainerError(
            _C.MODEL_INCOMPATIBLE,
            f"job {init_from!r} trained {earlier_backend!r}, not {job.backend!r}",
            details={"init_from": init_from, "backend": str(earlier_backend)},
        )
    return folder


def given_tokenizer(ctx: RunContext, backend: Backend) -> TextTokenizer | None:
    """The tokenizer the job does not train: the model's own (``kind: model``), an earlier
    job's (``kind: job``), or, when fine-tuning, the init_from model's, which must agree with
    what the job asks for."""
    job = ctx.job
    if isinstance(job.tokenizer, ModelTokenizer):
        supplied = backend.supplied_tokenizer(job.model, ctx.data_root)
        if supplied is None:
            raise ModelTrainerError(
                _C.UNSUPPORTED_BACKEND,
                f"backend {backend.name!r} brings no tokenizer (tokenizer kind model)",
                details={"backend": backend.name, "tokenizer": "model"},
            )
        return supplied
    named = (
        load_from_job(earlier_job_dir(ctx, job.tokenizer.job_id))
        if isinstance(job.tokenizer, JobTokenizer)
        else None
    )
    if job.init_from is None:
        return named
    inherited = load_from_job(_init_dir(ctx, job.init_from))
    if named is not None and named.to_json() != inherited.to_json():
        raise ModelTrainerError(
            _C.MODEL_INCOMPATIBLE,
            f"the tokenizer of job {job.init_from!r} differs from the one the job names",
            details={"init_from": job.init_from},
        )
    if named is None and job.tokenizer.kind != inherited.kind:
        raise ModelTrainerError(
            _C.MODEL_INCOMPATIBLE,
            f"job {job.init_from!r} used a {inherited.kind} tokenizer, not {job.tokenizer.kind}",
            details={"init_from": job.init_from},
        )
    return inherited
