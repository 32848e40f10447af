"""Token data: tokenize once into a memory-mapped cache, split it, and draw batches.

The cache lives in ``<artifacts_root>/.token-cache/<key>.npy`` (with the tokenizer beside it
as ``<key>.tokenizer.json``); the key digests the corpus bytes and the tokenizer request, so a
second job on the same corpus skips decoding, tokenizer training and encoding.

Splits are contiguous, like nanoGPT's: train first, then validation, then test. A batch is a
pure function of ``(data, seed)``: callers derive the seed from (job seed, step, micro-step),
which makes resuming at any step exact without saving any sampler state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from model_trainer_contracts import DataSpec, ModelTrainerError, ModelTrainerErrorCode
from torch import Tensor

from model_trainer.engine.files import atomic_write, atomic_write_bytes
from model_trainer.engine.tokenizer import TextTokenizer, from_json

_C = ModelTrainerErrorCode

Tokens = npt.NDArray[np.uint16] | npt.NDArray[np.uint32]


@dataclass(frozen=True)
class Splits:
    """Train, validation and test views (possibly empty test) of one token array."""

    train: Tokens
    val: Tokens
    test: Tokens
    cache_key: str


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts; distinct parts give independent streams."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def cache_key(corpus_digest: str, tokenizer_request: str) -> str:
    return hashlib.sha256(f"{corpus_digest}\0{tokenizer_request}".encode()).hexdigest()[:32]


def load_cached(cache_root: Path, key: str) -> tuple[Tokens, TextTokenizer] | None:
    """The cached tokens (memory-mapped) and tokenizer for ``key``, if a complete entry exists.

    A hit touches the entry's files: their mtime is its last use, which the sweep of the
    artifacts root goes by. The sweep may delete an entry at any moment: one gone before it
    is read is a miss (the caller tokenizes again and stores it anew); once the tokens are
    mapped, deleting the file leaves the mapping readable."""
    tokens_path = cache_root / f"{key}.npy"
    tok_path = cache_root / f"{key}.tokenizer.json"
    if not (tokens_path.is_file() and tok_path.is_file()):
        return None
    try:
        tokens = _mapped(tokens_path)
        tokenizer = from_json(tok_path.read_text(encoding="utf-8"))
    except Exception:  # a broken or vanished entry (OS, numpy, tokenizer error) is rebuilt
        return None
    for path in (tokens_path, tok_path):
        with contextlib.suppress(OSError):  # a read-only or vanished entry is still a hit
            os.utime(path)
    return tokens, tokenizer


def store(cache_root: Path, key: str, ids: npt.NDArray[np.uint32], tok: TextTokenizer) -> Tokens:
    """Write a cache entry atomically and return the tokens memory-mapped from it."""
    cache_root.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    atomic_write_bytes(cache_root / f"{key}.tokenizer.json", tok.to_json().encode())
    atomic_write(cache_root / f"{key}.npy", lambda f: np.save(f, ids.astype(dtype)))
    return _mapped(cache_root / f"{key}.npy")


def _mapped(path: Path) -> Tokens:
    arr = np.load(path, mmap_mode="r")
    if arr.dtype == np.uint16:
        small: npt.NDArray[np.uint16] = arr
        return small
    if arr.dtype == np.uint32:
        large: npt.NDArray[np.uint32] = arr
        return large
    raise ValueError(f"unexpected token dtype {arr.dtype}")


def split(tokens: Tokens, spec: DataSpec, context: int, key: str) -> Splits:
    """Contiguous train/val/test split; CORPUS_HOLDOUT_UNSATISFIABLE if a split that must
    exist is shorter than one window (``context + 1`` tokens)."""
    n = len(tokens)
    n_val = int(n * spec.val_fraction)
    n_test = int(n * spec.test_fraction)
    n_train = n - n_val - n_test
    need = context + 1
    short = [
        name
        for name, size, wanted in (
            ("train", n_train, True),
            ("val", n_val, True),
            ("test", n_test, spec.test_fraction > 0),
        )
        if wanted and size < need
    ]
    if short:
        raise ModelTrainerError(
            _C.CORPUS_HOLDOUT_UNSATISFIABLE,
            f"{n} tokens leave {', '.join(short)} shorter than one window of {need}: give "
            "more text, a shorter context, or smaller val_fraction/test_fraction (test_fraction "
            "0 for no test split)",
            details={"tokens": n, "train": n_train, "val": n_val, "test": n_test, "need": need},
        )
    return Splits(
        tokens[:n_train], tokens[n_train : n_train + n_val], tokens[n_train + n_val :], key
    )


def batch(data: Tokens, context: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``data``: inputs and next-token targets, int64, CPU."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - context, (batch_size,), generator=gen).numpy()
    windows = data[starts[:, None] + np.arange(context + 1)].astype(np.int64)
    chunk = torch.from_numpy(windows)
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
