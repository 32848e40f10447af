"""One realistic, hand-written example per message type, for docs and tests.

Fixed ids and timestamps, so documents generated from them are stable.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .commands import (
    BpeTokenizer,
    CancelJobV1,
    DataSpec,
    Gpt2Model,
    ProgressSpec,
    SubmitJobV1,
    TrainingSpec,
)
from .errors import ERROR_INFO, ModelTrainerErrorCode
from .events import (
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    FailedEventV1,
    ProgressEventV1,
    QueuedEventV1,
)

Message = (
    SubmitJobV1
    | CancelJobV1
    | QueuedEventV1
    | ConfigEventV1
    | ProgressEventV1
    | DownloadEventV1
    | CompletedEventV1
    | FailedEventV1
)
"""Every message type of the contract."""

_JOB = "tinyshakespeare-gpt2-0007"
_USER = 4211
_LABELS = {"team": "nlp-research", "experiment": "bpe-vs-char"}

SUBMIT = SubmitJobV1(
    job_id=_JOB,
    user_id=_USER,
    backend="gpt2",
    model=Gpt2Model(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1),
    tokenizer=BpeTokenizer(vocab_size=8192, min_frequency=2),
    data=DataSpec(corpus_path="corpora/tinyshakespeare.txt", val_fraction=0.1, test_fraction=0.05),
    training=TrainingSpec(
        max_steps=5000,
        batch_size=32,
        grad_accum_steps=2,
        learning_rate=6e-4,
        schedule="cosine",
        warmup_steps=200,
        min_lr=6e-5,
        weight_decay=0.1,
        eval_every=250,
        eval_batches=50,
        early_stopping_patience=4,
        checkpoint_every=500,
        device="cuda",
        precision="bf16",
    ),
    progress=ProgressSpec(every_steps=50, every_seconds=30.0),
    timeout_s=4 * 3600.0,
    labels=_LABELS,
)

CANCEL = CancelJobV1(job_id=_JOB, reason="superseded by tinyshakespeare-gpt2-0008")

QUEUED = QueuedEventV1(
    event_id="0b6f2d4e-8f0c-4c57-9a53-1f3c2f7de000",
    ts=datetime(2025, 3, 14, 9, 26, 41, 377000, tzinfo=UTC),
    seq=0,
    job_id=_JOB,
    user_id=_USER,
    attempt=1,
    labels=_LABELS,
    position=2,
    queue="trainer.jobs[3]",
    reason="submitted",
)

DOWNLOAD = DownloadEventV1(
    event_id="0b6f2d4e-8f0c-4c57-9a53-1f3c2f7de0d1",
    ts=datetime(2025, 3, 14, 9, 26, 47, 102000, tzinfo=UTC),
    seq=1,
    job_id=_JOB,
    user_id=_USER,
    attempt=1,
    labels=_LABELS,
    url="s3://nlp-corpora/tinyshakespeare/",
    bytes_done=402_653_184,
    bytes_total=1_073_741_824,
    files_done=3,
    files_total=8,
    elapsed_s=4.1,
)

_T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)

CONFIG = ConfigEventV1(
    event_id="0b6f2d4e-8f0c-4c57-9a53-1f3c2f7de001",
    ts=_T0,
    seq=1,
    job_id=_JOB,
    user_id=_USER,
    attempt=1,
    labels=_LABELS,
    backend="gpt2",
    model_family="gpt2",
    model_size="13.82M",
    num_parameters=13_824_384,
    tokenizer="bpe:8192",
    vocab_size=8192,
    train_tokens=289_347,
    val_tokens=34_041,
    test_tokens=17_020,
    total_steps=5000,
    total_epochs=283,
    start_step=0,
    device="cuda:0",
    precision="bf16",
    optimal_threads=8,
    cpu_cores=16,
    memory_gb=125.7,
    batch_size=32,
    learning_rate=6e-4,
    queue="trainer.jobs[3]",
)

PROGRESS = ProgressEventV1(
    event_id="0b6f2d4e-8f0c-4c57-9a53-1f3c2f7de01b",
    ts=datetime(2025, 3, 14, 9, 31, 2, 114000, tzinfo=UTC),
    seq=27,
    job_id=_JOB,
    user_id=_USER,
    attempt=1,
    labels=_LABELS,
    epoch=73,
    total_epochs=283,
    step=1300,
    total_steps=5000,
    train_loss=3.412,
    train_ppl=30.33,
    grad_norm=0.847,
    learning_rate=5.21e-4,
    samples_per_sec=412.6,
    tokens_per_sec=105_625.6,
    elapsed_s=248.5,
    eta_s=573.9,
    val_loss=3.598,
    val_ppl=36.52,
)

COMPLETED = CompletedEventV1(
    event_id="0b6f2d4e-8f0c-4c57-9a53-1f3c2f7de06a",
    ts=datetime(2025, 3, 14, 9, 43, 40, 902000, tzinfo=UTC),
    seq=87,
    job_id=_JOB,
    user_id=_USER,
    attempt=1,
    labels=_LABELS,
    test_loss=3.021,
    test_ppl=20.51,
    best_val_loss=3.004,
    steps=4250,
    duration_s=1007.3,
    early_stopped=True,
    artifact_path="artifacts/tinyshakespeare-gpt2-0007",
    manifest_digest="5f1d0c7a9e3b2f48c6a1d7e90b3c4f5a6e7d8c9b0a1f2e3d4c5b6a7980f1e2d3",
)

_OOM = ERROR_INFO[ModelTrainerErrorCode.CUDA_OOM]
FAILED = FailedEventV1(
    event_id="0b6f2d4e-8f0c-4c57-9a53-1f3c2f7de003",
    ts=datetime(2025, 3, 14, 9, 27, 11, 40000, tzinfo=UTC),
    seq=2,
    job_id="tinyshakespeare-gpt2-0009",
    user_id=_USER,
    attempt=1,
    labels=_LABELS,
    code=ModelTrainerErrorCode.CUDA_OOM,
    message="CUDA out of memory at step 1 with batch_size 256; shrink the model or batch",
    retryable=_OOM.retryable,
    http_status=_OOM.http_status,
    stage="train",
    details={"step": 1, "batch_size": 256, "device": "cuda:0", "allocated_gb": 139.2},
)

EXAMPLES: tuple[Message, ...] = (
    SUBMIT,
    CANCEL,
    QUEUED,
    CONFIG,
    PROGRESS,
    DOWNLOAD,
    COMPLETED,
    FAILED,
)
"""One example per message type, commands first, in catalogue order."""
