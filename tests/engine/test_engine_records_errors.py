"""The record reader's refusals (chat and instruction corpora) are the text reader's: the
same codes and details for a file that is not UTF-8 or a corpus over the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_trainer.engine.records import iter_records, records_digest
from model_trainer_contracts import DataSpec, ModelTrainerError, ModelTrainerErrorCode

C = ModelTrainerErrorCode


def test_a_record_file_not_utf8_or_over_the_limit_is_refused_with_its_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "a.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "chats" / "b.jsonl").write_bytes(b'{"messages": []}\n\xff\n')
    spec = DataSpec(corpus_path="chats", format="chat")
    with pytest.raises(ModelTrainerError) as err:
        list(iter_records(spec, tmp_path, []))
    assert (err.value.code, err.value.details) == (
        C.CORPUS_NOT_DECODABLE,
        {"file": "b.jsonl", "byte": 17},
    )
    size = sum(p.stat().st_size for p in (tmp_path / "chats").iterdir())
    assert len(records_digest(spec, tmp_path, size)) == 64
    with pytest.raises(ModelTrainerError) as err:
        records_digest(spec, tmp_path, size - 1)
    assert (err.value.code, err.value.details) == (
        C.CORPUS_TOO_LARGE,
        {"size": size, "limit": size - 1},
    )
