"""Error codes: the spec's closed set, each with its HTTP status and retry advice."""

from __future__ import annotations

from model_trainer_contracts import ERROR_INFO, ModelTrainerError, ModelTrainerErrorCode

REQUIRED = [
    "TRAINING_CANCELLED",
    "TRAINING_TIMEOUT",
    "TRAINING_OOM",
    "TRAINING_NAN_LOSS",
    "TRAINING_DIVERGED",
    "MODEL_NOT_FOUND",
    "MODEL_LOAD_FAILED",
    "MODEL_INCOMPATIBLE",
    "INVALID_MODEL_SIZE",
    "UNSUPPORTED_BACKEND",
    "TOKENIZER_NOT_FOUND",
    "TOKENIZER_LOAD_FAILED",
    "TOKENIZER_TRAIN_FAILED",
    "CORPUS_NOT_FOUND",
    "CORPUS_EMPTY",
    "CORPUS_TOO_LARGE",
    "CORPUS_HOLDOUT_UNSATISFIABLE",
    "CORPUS_NOT_DECODABLE",
    "CORPUS_MALFORMED_RECORD",
    "PATH_NOT_ALLOWED",
    "CHECKPOINT_NOT_FOUND",
    "CHECKPOINT_CORRUPT",
    "CHECKPOINT_CONFIG_MISMATCH",
    "RUN_NOT_RESUMABLE",
    "RUN_WORKER_DIED",
    "CUDA_NOT_AVAILABLE",
    "CUDA_OOM",
    "ARTIFACT_WRITE_FAILED",
    "COMMAND_UNDECODABLE",
    "COMMAND_INVALID",
    "COMMAND_TOO_LARGE",
    "JOB_ID_CONFLICT",
    "JOB_NOT_FOUND",
]


def test_the_specs_codes_are_all_defined() -> None:
    assert len(REQUIRED) == 33
    missing = set(REQUIRED) - {str(code) for code in ModelTrainerErrorCode}
    assert not missing


def test_every_code_has_info() -> None:
    assert set(ERROR_INFO) == set(ModelTrainerErrorCode)
    for code, info in ERROR_INFO.items():
        assert code.value == code.name
        assert 400 <= info.http_status <= 599, code
        assert info.description.endswith("."), code


def test_retry_advice_where_it_matters() -> None:
    c = ModelTrainerErrorCode
    assert not ERROR_INFO[c.COMMAND_INVALID].retryable
    assert not ERROR_INFO[c.TRAINING_CANCELLED].retryable
    assert ERROR_INFO[c.RUN_WORKER_DIED].retryable
    err = ModelTrainerError(c.CORPUS_TOO_LARGE, "big")
    assert (err.http_status, err.retryable, err.stage, err.details) == (413, False, "validate", {})
