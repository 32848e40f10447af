"""The llama and pretrained model settings, the model tokenizer, training.compile and the
progress event's mfu: validated strictly in, read tolerantly out."""

from __future__ import annotations

import pytest
from model_trainer_contracts import (
    ERROR_INFO,
    LlamaModel,
    ModelTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
    ProgressEventV1,
    SubmitJobV1,
    decode_command,
    decode_event,
    encode,
)
from model_trainer_contracts.examples import PROGRESS
from pydantic import ValidationError


def _submit(**fields: object) -> SubmitJobV1:
    body: dict[str, object] = {
        "job_id": "j",
        "user_id": 1,
        "data": {"corpus_path": "c.txt"},
        **fields,
    }
    return SubmitJobV1.model_validate(body)


def test_llama_settings() -> None:
    job = _submit(backend="llama")
    assert isinstance(job.model, LlamaModel)
    assert job.model.num_key_value_heads is None
    assert job.model.tie_word_embeddings
    gqa = _submit(backend="llama", model={"num_attention_heads": 8, "num_key_value_heads": 2})
    assert isinstance(gqa.model, LlamaModel)
    with pytest.raises(ValidationError):
        LlamaModel(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValidationError):
        LlamaModel(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValidationError):
        LlamaModel.model_validate({"n_layer": 4})  # strict: gpt2's names are not llama's


def test_pretrained_settings_bring_their_tokenizer() -> None:
    job = _submit(backend="pretrained", model={"path": "models/m", "freeze_embeddings": True})
    assert isinstance(job.model, PretrainedModel)
    assert isinstance(job.tokenizer, ModelTokenizer)
    assert job.model.block_size == 256
    with pytest.raises(ValidationError):
        _submit(backend="pretrained", model={})  # the folder is required
    assert _submit(backend="gpt2").tokenizer.kind == "char"  # defaults elsewhere unchanged


@pytest.mark.parametrize("value", ["auto", "on", "off", True, False])
def test_compile_switch(value: object) -> None:
    assert _submit(backend="gpt2", training={"compile": value}).training.compile == value


def test_compile_refuses_other_values() -> None:
    raw = encode(_submit(backend="gpt2")).replace(b'"compile":"auto"', b'"compile":"maybe"')
    with pytest.raises(ModelTrainerError) as err:
        decode_command(raw)
    assert err.value.code == ModelTrainerErrorCode.COMMAND_INVALID


def test_progress_mfu_is_optional_both_ways() -> None:
    assert PROGRESS.mfu is None
    with_mfu = PROGRESS.model_copy(update={"mfu": 0.41})
    decoded = decode_event(encode(with_mfu))
    assert isinstance(decoded, ProgressEventV1)
    assert decoded.mfu == 0.41
    old = encode(PROGRESS).replace(b',"mfu":null', b"")
    assert b"mfu" not in old
    assert decode_event(old) == PROGRESS


def test_model_format_unsupported_code() -> None:
    info = ERROR_INFO[ModelTrainerErrorCode.MODEL_FORMAT_UNSUPPORTED]
    assert (info.http_status, info.retryable) == (415, False)
