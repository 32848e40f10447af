"""Corpus handling: every data error code, JSONL and directory corpora, splits, the cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from model_trainer.core.layout import CACHE_DIR
from model_trainer.engine import run_job
from model_trainer.engine.corpus import corpus_files
from model_trainer.engine.dataset import load_cached, store
from model_trainer.engine.tokenizer import train_char
from model_trainer_contracts import (
    ConfigEventV1,
    DataSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
)

from tests.engine.engine_helpers import Env, Event, make_text

C = ModelTrainerErrorCode


def _fails(env: Env, data: dict[str, object], *, max_bytes: int = 1 << 30) -> ModelTrainerError:
    events: list[Event] = []
    with pytest.raises(ModelTrainerError) as err:
        run_job(env.ctx(env.job(data=data), events, max_corpus_bytes=max_bytes))
    assert events == []  # refused before the config event
    return err.value


def test_missing_corpus(env: Env) -> None:
    assert _fails(env, {"corpus_path": "nope.txt"}).code == C.CORPUS_NOT_FOUND


def test_path_leaving_the_data_root(env: Env, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text(make_text())
    assert _fails(env, {"corpus_path": "../outside.txt"}).code == C.PATH_NOT_ALLOWED
    (env.data_root / "link.txt").symlink_to(tmp_path / "outside.txt")
    assert _fails(env, {"corpus_path": "link.txt"}).code == C.PATH_NOT_ALLOWED
    (env.data_root / "dir").mkdir()
    (env.data_root / "dir" / "link.txt").symlink_to(tmp_path / "outside.txt")
    assert _fails(env, {"corpus_path": "dir"}).code == C.PATH_NOT_ALLOWED


def test_empty_corpus(env: Env) -> None:
    (env.data_root / "blank.txt").write_text(" \n\n ")
    err = _fails(env, {"corpus_path": "blank.txt"})
    assert (err.code, err.stage) == (C.CORPUS_EMPTY, "prepare")
    (env.data_root / "empty").mkdir()
    assert _fails(env, {"corpus_path": "empty"}).code == C.CORPUS_EMPTY


def test_corpus_over_the_limit(env: Env) -> None:
    err = _fails(env, {"corpus_path": "corpus.txt"}, max_bytes=1000)
    assert err.code == C.CORPUS_TOO_LARGE
    assert err.details["limit"] == 1000


def test_invalid_utf8(env: Env) -> None:
    (env.data_root / "bad.txt").write_bytes(make_text().encode() + b"\xff\xfe tail")
    err = _fails(env, {"corpus_path": "bad.txt"})
    assert err.code == C.CORPUS_NOT_DECODABLE
    assert err.details["file"] == "bad.txt"


def test_malformed_jsonl_names_the_line(env: Env) -> None:
    lines = [json.dumps({"text": make_text(200, seed=i)}) for i in range(5)]
    lines.insert(3, '{"body": "no text field"}')
    (env.data_root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    err = _fails(env, {"corpus_path": "docs.jsonl", "format": "jsonl"})
    assert err.code == C.CORPUS_MALFORMED_RECORD
    assert err.details["line"] == 4
    (env.data_root / "docs.jsonl").write_text(lines[0] + "\n{not json\n")
    err = _fails(env, {"corpus_path": "docs.jsonl", "format": "jsonl"})
    assert (err.code, err.details["line"]) == (C.CORPUS_MALFORMED_RECORD, 2)


def test_holdout_too_small(env: Env) -> None:
    (env.data_root / "short.txt").write_text(make_text(150))
    err = _fails(env, {"corpus_path": "short.txt", "val_fraction": 0.05})
    assert err.code == C.CORPUS_HOLDOUT_UNSATISFIABLE
    assert err.details["need"] == 17


def test_jsonl_directory_and_inline_corpora_train(env: Env) -> None:
    docs = env.data_root / "docs"
    (docs / "sub").mkdir(parents=True)
    for i in range(3):
        record = json.dumps({"text": make_text(2000, seed=i)})
        (docs / "sub" / f"part{i}.jsonl").write_text(record + "\n\n" + record + "\n")
    (docs / ".hidden.jsonl").write_text("ignored, not JSON")
    cases: list[tuple[str, dict[str, object]]] = [
        ("jsonl", {"corpus_path": "docs", "format": "jsonl", "test_fraction": 0.1}),
        ("inline", {"inline_text": make_text(3000), "test_fraction": 0.0}),
    ]
    for job_id, data in cases:
        events: list[Event] = []
        done = run_job(
            env.ctx(env.job(job_id=job_id, data=data, training={"max_steps": 2}), events)
        )
        config = events[0]
        assert isinstance(config, ConfigEventV1)
        assert config.train_tokens > config.val_tokens > 0
        assert (done.test_loss is not None) == (job_id == "jsonl")


def test_token_cache_is_reused(env: Env) -> None:
    first: list[Event] = []
    run_job(env.ctx(env.job(job_id="a", training={"max_steps": 2}), first))
    entries = sorted(p.name for p in (env.artifacts_root / CACHE_DIR).iterdir())
    assert len([e for e in entries if e.endswith(".npy")]) == 1
    second: list[Event] = []
    run_job(env.ctx(env.job(job_id="b", training={"max_steps": 2}), second))
    assert sorted(p.name for p in (env.artifacts_root / CACHE_DIR).iterdir()) == entries
    assert isinstance(first[0], ConfigEventV1)
    assert isinstance(second[0], ConfigEventV1)
    assert first[0].train_tokens == second[0].train_tokens


def test_a_cache_hit_counts_as_a_use_and_a_swept_entry_is_rebuilt(env: Env) -> None:
    first: list[Event] = []
    run_job(env.ctx(env.job(job_id="a", training={"max_steps": 2}), first))
    cache = env.artifacts_root / CACHE_DIR
    entry = sorted(cache.iterdir())
    month_ago = time.time() - 30 * 24 * 3600
    for path in entry:
        os.utime(path, (month_ago, month_ago))
    run_job(env.ctx(env.job(job_id="b", training={"max_steps": 2}), []))  # a hit
    assert all(path.stat().st_mtime > month_ago + 3600 for path in entry)  # its last use
    for path in entry:  # as the sweep deletes an entry unused for the retention
        path.unlink()
    again: list[Event] = []
    run_job(env.ctx(env.job(job_id="c", training={"max_steps": 2}), again))
    assert sorted(cache.iterdir()) == entry  # tokenized again, and stored anew
    assert isinstance(first[0], ConfigEventV1)
    assert isinstance(again[0], ConfigEventV1)
    assert again[0].train_tokens == first[0].train_tokens


def test_a_cache_entry_deleted_while_in_use_stays_readable(tmp_path: Path) -> None:
    text = "hello world, " * 50
    tok = train_char(text)
    stored = store(tmp_path, "k", tok.encode(text), tok)
    hit = load_cached(tmp_path, "k")
    assert hit is not None
    tokens, _ = hit
    for path in tmp_path.iterdir():  # the sweep, between this job's reads
        path.unlink()
    assert np.array_equal(tokens, stored)  # the mapping outlives the file
    assert load_cached(tmp_path, "k") is None  # the next job misses, and tokenizes again


def test_a_symlink_loop_inside_a_corpus_folder_is_a_typed_refusal(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world\n")
    (folder / "loop-a").symlink_to(folder / "loop-b")
    (folder / "loop-b").symlink_to(folder / "loop-a")
    spec = DataSpec(corpus_path="corpus")
    with pytest.raises(ModelTrainerError) as refused:
        corpus_files(spec, tmp_path)
    assert refused.value.code is ModelTrainerErrorCode.PATH_NOT_ALLOWED
    assert refused.value.details["file"] == "loop-a"
