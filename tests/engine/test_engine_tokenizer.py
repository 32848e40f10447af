"""Tokenizers: char and byte-level BPE, reuse by job, unknown characters."""

from __future__ import annotations

import pytest
from model_trainer.engine import run_job
from model_trainer.engine.tokenizer import UNK, from_json, train_bpe, train_char
from model_trainer_contracts import ConfigEventV1, ModelTrainerError, ModelTrainerErrorCode

from tests.engine.engine_helpers import Env, Event, make_text


def test_bpe_round_trips_any_text() -> None:
    tok = train_bpe(make_text(20_000), vocab_size=300, min_frequency=2)
    assert tok.kind == "bpe"
    assert 256 < tok.vocab_size <= 300
    text = "The king said: ünïcödé → 🙂\n\tand more\n"
    ids = tok.encode(text)
    assert tok.decode(ids.tolist()) == text
    assert len(tok.encode("the king and the queen")) < len("the king and the queen")
    again = from_json(tok.to_json())
    assert again.kind == "bpe"
    assert (again.encode(text) == ids).all()


def test_char_tokenizer_orders_by_code_point_and_maps_unknowns() -> None:
    tok = train_char("baca\n")
    assert tok.vocab_size == 4 + 1  # \n a b c, then <unk>
    assert tok.encode("abc\n").tolist() == [1, 2, 3, 0]
    assert tok.encode("abz").tolist() == [1, 2, tok.unk_id]
    assert tok.decode([2, 1, 3]) == "bac"
    assert tok.decode([tok.unk_id]) == UNK


def test_gpt2_trains_with_bpe_and_a_later_job_reuses_it(env: Env) -> None:
    first: list[Event] = []
    run_job(
        env.ctx(env.job("gpt2", job_id="bpe", tokenizer={"kind": "bpe", "vocab_size": 280}), first)
    )
    second: list[Event] = []
    reuse = {"kind": "job", "job_id": "bpe"}
    run_job(env.ctx(env.job("gpt2", job_id="reuse", tokenizer=reuse), second))
    a, b = first[0], second[0]
    assert isinstance(a, ConfigEventV1)
    assert isinstance(b, ConfigEventV1)
    assert a.tokenizer == "bpe"
    assert b.tokenizer == "bpe:bpe"
    assert a.vocab_size == b.vocab_size
    shared = (env.artifacts_root / "bpe" / "tokenizer.json").read_text()
    assert (env.artifacts_root / "reuse" / "tokenizer.json").read_text() == shared


def test_job_tokenizer_of_the_wrong_kind_is_refused(env: Env) -> None:
    run_job(
        env.ctx(env.job("gpt2", job_id="bpe", tokenizer={"kind": "bpe", "vocab_size": 280}), [])
    )
    job = env.job("char_lstm", job_id="lstm", tokenizer={"kind": "job", "job_id": "bpe"})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(job, []))
    assert err.value.code == ModelTrainerErrorCode.UNSUPPORTED_BACKEND
    (env.artifacts_root / "broken").mkdir()
    (env.artifacts_root / "broken" / "tokenizer.json").write_text("{not json")
    broken = env.job("gpt2", job_id="x", tokenizer={"kind": "job", "job_id": "broken"})
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(broken, []))
    assert err.value.code == ModelTrainerErrorCode.TOKENIZER_LOAD_FAILED
