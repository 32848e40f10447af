"""Chat and instruction data, ready to train: records -> examples -> train/val/test -> packed.

The split is by example, contiguous like the text splits (train first, then validation, then
test), so validation and test losses are measured on held-out conversations with the same
masking. The examples are not cached: rendering templates is fast next to training, and the
data key (for checkpoints) digests the files, the data options, the tokenizer and the window.
"""

from __future__ import annotations

import hashlib

import structlog
from model_trainer_contracts import (
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
)

from model_trainer.core.pretrained import inspect_pretrained
from model_trainer.engine.context import RunContext
from model_trainer.engine.packing import PackedSplits, pack
from model_trainer.engine.records import (
    HeldOut,
    held_out_prompts,
    read_examples,
    records_digest,
)
from model_trainer.engine.tokenizer import TextTokenizer

_C = ModelTrainerErrorCode
log = structlog.get_logger()


def prepare_examples(
    ctx: RunContext, tokenizer: TextTokenizer | None, context: int
) -> tuple[TextTokenizer, PackedSplits, HeldOut | None]:
    """The tokenizer, the packed splits, and the held-out prompts the job asks to answer
    (``generate``: the first records of the test split, else of the validation split)."""
    job = ctx.job
    spec = job.data
    if not isinstance(job.model, PretrainedModel) or tokenizer is None:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"{spec.format} data needs the pretrained backend and its model's tokenizer",
            details={"backend": job.backend},
        )
    digest = records_digest(spec, ctx.data_root, ctx.max_corpus_bytes)
    folder = inspect_pretrained(ctx.data_root, job.model.path).path
    examples = list(read_examples(spec, ctx.data_root, folder))
    ctx.obey_stop("prepare", 0)
    n = len(examples)
    n_val, n_test = int(n * spec.val_fraction), int(n * spec.test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1 or n_val < 1 or (spec.test_fraction > 0 and n_test < 1):
        raise ModelTrainerError(
            _C.CORPUS_HOLDOUT_UNSATISFIABLE,
            f"{n} examples leave a split empty: give more records, or smaller "
            "val_fraction/test_fraction (test_fraction 0 for no test split)",
            details={"examples": n, "train": n_train, "val": n_val, "test": n_test},
        )
    packing = spec.records.packing
    parts = (
        examples[:n_train],
        examples[n_train : n_train + n_val],
        examples[n_train + n_val :],
    )
    train, val, test = (pack(part, context, packing=packing) for part in parts)
    key_body = f"{digest}\0{tokenizer.to_json()}\0{context}".encode()
    key = hashlib.sha256(key_body).hexdigest()[:32]
    if not len(train) or not len(val):
        raise ModelTrainerError(
            _C.CORPUS_HOLDOUT_UNSATISFIABLE,
            "no training or validation example has a token to train on",
            details={"examples": n},
        )
    log.info(
        "engine.examples",
        job_id=job.job_id,
        examples=n,
        rows=len(train.inputs),
        loss_tokens=train.loss_tokens,
        packing_efficiency=round(train.efficiency, 4),
        truncated=train.truncated,
    )
    held_out = None
    if job.generate is not None:
        first = n_train + n_val if n_test else n_train
        count = min(job.generate.prompts, n_test or n_val)
        held_out = held_out_prompts(spec, ctx.data_root, folder, first, count)
    return tokenizer, PackedSplits(train, val, test, key), held_out
