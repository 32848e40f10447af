"""Capability refusals: a job its backend cannot run is refused before any work."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest
from model_trainer.engine import create_backend, run_job, validate_job
from model_trainer.engine.registry import backend_names, preload
from model_trainer_contracts import (
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
)
from model_trainer_contracts.commands import BackendName

from tests.engine.engine_helpers import Env, Event

C = ModelTrainerErrorCode


def _refusal(job: SubmitJobV1, env: Env | None = None, cuda: bool = False) -> ModelTrainerErrorCode:
    with pytest.raises(ModelTrainerError) as err:
        validate_job(
            job,
            data_root=env.data_root if env else None,
            artifacts_root=env.artifacts_root if env else None,
            cuda_available=cuda,
        )
    assert err.value.stage == "validate"
    return err.value.code


def test_registry_lists_and_refuses_backends() -> None:
    assert backend_names() == ["char_lstm", "gpt2", "llama", "pretrained"]
    caps = create_backend("gpt2").capabilities
    assert caps.can_resume
    assert caps.can_finetune
    assert "bpe" in caps.tokenizers
    with pytest.raises(ModelTrainerError) as err:
        create_backend("rnn")
    assert err.value.code == C.UNSUPPORTED_BACKEND


def test_char_lstm_refuses_bpe(env: Env) -> None:
    job = env.job("char_lstm", tokenizer={"kind": "bpe", "vocab_size": 300})
    assert _refusal(job) == C.UNSUPPORTED_BACKEND


def test_device_and_precision(env: Env) -> None:
    assert _refusal(env.job(training={"device": "cuda"})) == C.CUDA_NOT_AVAILABLE
    assert _refusal(env.job(training={"precision": "fp16"})) == C.UNSUPPORTED_BACKEND
    validate_job(env.job(training={"device": "cuda", "precision": "fp16"}), cuda_available=True)
    validate_job(env.job(training={"device": "auto", "precision": "auto"}), cuda_available=False)


def test_model_size_bounds(env: Env) -> None:
    huge = env.job("gpt2", model={"n_layer": 48, "n_embd": 8192, "n_head": 64})
    assert _refusal(huge) == C.INVALID_MODEL_SIZE
    wide = env.job("char_lstm", model={"hidden_size": 8192, "num_layers": 16})
    assert _refusal(wide) == C.INVALID_MODEL_SIZE


def test_paths_and_references(env: Env) -> None:
    assert _refusal(env.job(data={"corpus_path": "../x.txt"}), env) == C.PATH_NOT_ALLOWED
    assert _refusal(env.job(data={"corpus_path": "/etc/passwd"}), env) == C.PATH_NOT_ALLOWED
    assert _refusal(env.job(data={"corpus_path": "none.txt"}), env) == C.CORPUS_NOT_FOUND
    assert _refusal(env.job(init_from="never-ran"), env) == C.MODEL_NOT_FOUND
    job_tok = env.job(tokenizer={"kind": "job", "job_id": "never-ran"})
    assert _refusal(job_tok, env) == C.TOKENIZER_NOT_FOUND


def test_run_job_refuses_before_any_work(env: Env) -> None:
    events: list[Event] = []
    job = env.job("char_lstm", tokenizer={"kind": "bpe", "vocab_size": 300})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, events))
    assert err.value.code == C.UNSUPPORTED_BACKEND
    assert events == []
    assert not env.artifacts_root.exists()


@pytest.mark.slow  # a fresh interpreter imports transformers
def test_the_table_is_the_contracts_backend_set_and_imports_lazily() -> None:
    assert set(backend_names()) == set(get_args(BackendName))
    assert all(create_backend(name).name == name for name in backend_names())
    # A fresh interpreter: char_lstm needs no transformers (importing it costs 12 s of CPU,
    # so the probe stops there); here, a preload imports it and ignores an unknown name.
    probe = (
        "import sys\n"
        "from model_trainer.engine import create_backend\n"
        "create_backend('char_lstm')\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False"]
    preload(["gpt2", "no-such-backend"])
    assert "transformers" in sys.modules
