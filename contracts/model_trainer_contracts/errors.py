"""Error codes: a closed set, each with an HTTP status and whether a retry can help."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import JsonValue

Stage = Literal["validate", "prepare", "train", "evaluate", "save"]


class ModelTrainerErrorCode(StrEnum):
    """Why a command was refused or a job failed. Dashboards switch on these strings."""

    TRAINING_CANCELLED = "TRAINING_CANCELLED"
    TRAINING_TIMEOUT = "TRAINING_TIMEOUT"
    TRAINING_STALLED = "TRAINING_STALLED"
    TRAINING_OOM = "TRAINING_OOM"
    TRAINING_NAN_LOSS = "TRAINING_NAN_LOSS"
    TRAINING_DIVERGED = "TRAINING_DIVERGED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    MODEL_INCOMPATIBLE = "MODEL_INCOMPATIBLE"
    MODEL_FORMAT_UNSUPPORTED = "MODEL_FORMAT_UNSUPPORTED"
    INVALID_MODEL_SIZE = "INVALID_MODEL_SIZE"
    RESOURCE_LIMIT_EXCEEDED = "RESOURCE_LIMIT_EXCEEDED"
    UNSUPPORTED_BACKEND = "UNSUPPORTED_BACKEND"
    TOKENIZER_NOT_FOUND = "TOKENIZER_NOT_FOUND"
    TOKENIZER_LOAD_FAILED = "TOKENIZER_LOAD_FAILED"
    TOKENIZER_TRAIN_FAILED = "TOKENIZER_TRAIN_FAILED"
    CORPUS_NOT_FOUND = "CORPUS_NOT_FOUND"
    CORPUS_EMPTY = "CORPUS_EMPTY"
    CORPUS_TOO_LARGE = "CORPUS_TOO_LARGE"
    CORPUS_HOLDOUT_UNSATISFIABLE = "CORPUS_HOLDOUT_UNSATISFIABLE"
    CORPUS_NOT_DECODABLE = "CORPUS_NOT_DECODABLE"
    CORPUS_MALFORMED_RECORD = "CORPUS_MALFORMED_RECORD"
    CHAT_TEMPLATE_NOT_FOUND = "CHAT_TEMPLATE_NOT_FOUND"
    PATH_NOT_ALLOWED = "PATH_NOT_ALLOWED"
    CHECKPOINT_NOT_FOUND = "CHECKPOINT_NOT_FOUND"
    CHECKPOINT_CORRUPT = "CHECKPOINT_CORRUPT"
    CHECKPOINT_CONFIG_MISMATCH = "CHECKPOINT_CONFIG_MISMATCH"
    RUN_NOT_RESUMABLE = "RUN_NOT_RESUMABLE"
    RUN_WORKER_DIED = "RUN_WORKER_DIED"
    CUDA_NOT_AVAILABLE = "CUDA_NOT_AVAILABLE"
    CUDA_OOM = "CUDA_OOM"
    ARTIFACT_WRITE_FAILED = "ARTIFACT_WRITE_FAILED"
    STORAGE_ACCESS_DENIED = "STORAGE_ACCESS_DENIED"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    DISK_FULL = "DISK_FULL"
    COMMAND_UNDECODABLE = "COMMAND_UNDECODABLE"
    COMMAND_INVALID = "COMMAND_INVALID"
    COMMAND_TOO_LARGE = "COMMAND_TOO_LARGE"
    JOB_ID_CONFLICT = "JOB_ID_CONFLICT"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    JOB_FORBIDDEN = "JOB_FORBIDDEN"
    JOB_ON_OTHER_PARTITION = "JOB_ON_OTHER_PARTITION"
    COMMAND_CRASHED = "COMMAND_CRASHED"
    ADMISSION_TIMEOUT = "ADMISSION_TIMEOUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True)
class ErrorInfo:
    http_status: int
    retryable: bool
    description: str


_C = ModelTrainerErrorCode
ERROR_INFO: dict[ModelTrainerErrorCode, ErrorInfo] = {
    _C.TRAINING_CANCELLED: ErrorInfo(499, False, "A cancel command stopped the job."),
    _C.TRAINING_TIMEOUT: ErrorInfo(504, True, "The job ran past its timeout_s."),
    _C.TRAINING_STALLED: ErrorInfo(
        504, True, "The run sent no progress for its stall timeout, on every attempt allowed."
    ),
    _C.TRAINING_OOM: ErrorInfo(507, False, "Host memory ran out; shrink the model or batch."),
    _C.TRAINING_NAN_LOSS: ErrorInfo(422, False, "The loss became NaN or infinite."),
    _C.TRAINING_DIVERGED: ErrorInfo(
        422, False, "The loss exploded far above its best value; lower the learning rate."
    ),
    _C.MODEL_NOT_FOUND: ErrorInfo(404, False, "init_from names a job with no artifact."),
    _C.MODEL_LOAD_FAILED: ErrorInfo(500, True, "The init_from artifact could not be loaded."),
    _C.MODEL_INCOMPATIBLE: ErrorInfo(
        409, False, "The init_from artifact does not match the requested backend or shape."
    ),
    _C.MODEL_FORMAT_UNSUPPORTED: ErrorInfo(
        415,
        False,
        "The model folder is not loadable as is: weights not in safetensors (pickled weights are "
        "refused), or an architecture transformers does not implement natively (remote code is "
        "never run).",
    ),
    _C.INVALID_MODEL_SIZE: ErrorInfo(
        422, False, "The model shape is outside the backend's bounds."
    ),
    _C.RESOURCE_LIMIT_EXCEEDED: ErrorInfo(
        422,
        False,
        "The job's estimated peak memory is over a worker's memory budget, its estimated disk "
        "use over a disk budget, or a setting over a service-wide cap (max_steps, "
        "eval_batches, checkpoint_every); details give the estimate_mb, the budget_mb and the "
        "breakdown, or the field, its value and the limit.",
    ),
    _C.UNSUPPORTED_BACKEND: ErrorInfo(
        400, False, "The backend does not exist or cannot do what the job asks."
    ),
    _C.TOKENIZER_NOT_FOUND: ErrorInfo(404, False, "The referenced job has no tokenizer."),
    _C.TOKENIZER_LOAD_FAILED: ErrorInfo(500, True, "The referenced tokenizer could not be read."),
    _C.TOKENIZER_TRAIN_FAILED: ErrorInfo(422, False, "A BPE tokenizer could not be trained."),
    _C.CORPUS_NOT_FOUND: ErrorInfo(404, False, "No corpus file or directory at that path."),
    _C.CORPUS_EMPTY: ErrorInfo(422, False, "The corpus holds no text."),
    _C.CORPUS_TOO_LARGE: ErrorInfo(413, False, "The corpus is over the service's size limit."),
    _C.CORPUS_HOLDOUT_UNSATISFIABLE: ErrorInfo(
        422, False, "The corpus is too small for the validation and test splits and a batch."
    ),
    _C.CORPUS_NOT_DECODABLE: ErrorInfo(422, False, "The corpus is not valid UTF-8."),
    _C.CORPUS_MALFORMED_RECORD: ErrorInfo(
        422,
        False,
        "A record (JSONL line or Parquet row) cannot be used: not an object, a field or column "
        "missing, a message the chat template cannot render, an empty assistant turn; details "
        "give the file, the line or row, and the reason.",
    ),
    _C.CHAT_TEMPLATE_NOT_FOUND: ErrorInfo(
        422, False, "Chat data needs a chat template in the model folder's tokenizer files."
    ),
    _C.PATH_NOT_ALLOWED: ErrorInfo(
        403,
        False,
        "The path leaves the service's data root, or a file a model folder would have loaded "
        "(a symlink, a shard its index names) leads outside the folder.",
    ),
    _C.CHECKPOINT_NOT_FOUND: ErrorInfo(404, False, "The checkpoint to resume from is missing."),
    _C.CHECKPOINT_CORRUPT: ErrorInfo(500, False, "The checkpoint cannot be read."),
    _C.CHECKPOINT_CONFIG_MISMATCH: ErrorInfo(
        409, False, "The checkpoint was written for a different job spec."
    ),
    _C.RUN_NOT_RESUMABLE: ErrorInfo(409, False, "The backend cannot resume this run."),
    _C.RUN_WORKER_DIED: ErrorInfo(500, True, "The worker process running the job died."),
    _C.CUDA_NOT_AVAILABLE: ErrorInfo(503, True, "The job asks for CUDA and this worker has none."),
    _C.CUDA_OOM: ErrorInfo(507, False, "GPU memory ran out; shrink the model or batch."),
    _C.ARTIFACT_WRITE_FAILED: ErrorInfo(500, True, "The artifact could not be written."),
    _C.STORAGE_ACCESS_DENIED: ErrorInfo(
        403, False, "The object store refused the service's credentials for that URL."
    ),
    _C.STORAGE_UNAVAILABLE: ErrorInfo(
        503,
        True,
        "The object store did not answer, on every retry within the bound; the job's last "
        "good checkpoint is kept.",
    ),
    _C.DISK_FULL: ErrorInfo(
        507,
        True,
        "The service's disk filled up while the run wrote (a checkpoint, the token cache, the "
        "artifact). The service does not end the job with it: the job goes back to the queue "
        "with its last good checkpoint and runs again from it once space returns.",
    ),
    _C.COMMAND_UNDECODABLE: ErrorInfo(400, False, "The command is not UTF-8 JSON."),
    _C.COMMAND_INVALID: ErrorInfo(422, False, "The command fails the contract's validation."),
    _C.COMMAND_TOO_LARGE: ErrorInfo(413, False, "The command is over the size limit."),
    _C.JOB_ID_CONFLICT: ErrorInfo(
        409,
        False,
        "That job_id was already submitted with a different spec, or is another tenant's.",
    ),
    _C.JOB_NOT_FOUND: ErrorInfo(404, False, "No queued or running job has that job_id."),
    _C.JOB_FORBIDDEN: ErrorInfo(
        403,
        False,
        "The job uses another user's or tenant's artifact (init_from or a job tokenizer), or "
        "the cancel is of another tenant's job.",
    ),
    _C.JOB_ON_OTHER_PARTITION: ErrorInfo(
        421,
        False,
        "The command reached a commands partition that does not hold its job, and forwarding it "
        "there failed; details name the partition (produce keyed by job_id with Kafka's default "
        "murmur2 partitioner).",
    ),
    _C.COMMAND_CRASHED: ErrorInfo(
        500,
        False,
        "The service process died while handling this command; it is dead-lettered instead of "
        "handled again, so one command cannot stop the service twice.",
    ),
    _C.ADMISSION_TIMEOUT: ErrorInfo(
        503, True, "Checking the job's files (corpus, model folder) took longer than allowed."
    ),
    _C.INTERNAL_ERROR: ErrorInfo(500, True, "An unexpected error; the details say where."),
}


class ModelTrainerError(Exception):
    """A typed failure: the code tells a machine what happened, the message tells a person.

    ``details`` is JSON data (offending fields, limits, paths) carried into the
    ``trainer.job.failed.v1`` event unchanged.
    """

    def __init__(
        self,
        code: ModelTrainerErrorCode,
        message: str,
        *,
        details: dict[str, JsonValue] | None = None,
        stage: Stage = "validate",
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, JsonValue] = details or {}
        self.stage: Stage = stage

    def __reduce__(self) -> tuple[object, ...]:
        # Pickle by fields, so the error crosses process boundaries (worker pools) intact.
        return (_rebuild, (self.code, self.message, self.details, self.stage))

    @property
    def http_status(self) -> int:
        return ERROR_INFO[self.code].http_status

    @property
    def retryable(self) -> bool:
        return ERROR_INFO[self.code].retryable


def _rebuild(
    code: ModelTrainerErrorCode, message: str, details: dict[str, JsonValue], stage: Stage
) -> ModelTrainerError:
    return ModelTrainerError(code, message, details=details, stage=stage)
