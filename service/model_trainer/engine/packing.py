"""Examples (chat or instruction records, tokenized) packed into fixed training windows.

Each example becomes its inputs (tokens but the last) and targets (tokens but the first, with
:data:`IGNORE` where the loss must not look: prompt, system and template tokens unless
``train_on_prompt``). Examples are packed best-fit-decreasing into rows of ``block_size``
positions; the rest of a row is padding (target :data:`IGNORE`). Position ids restart at 0
for every example (and for the padding): transformers' attention masks of Llama, Qwen2 and
GPT-2 (``create_causal_mask``) read a restart as the start of another sequence, so attention
never crosses an example in the ``pretrained`` backend. Without packing, each example has a
row of its own.

A batch is a pure function of ``(rows, seed)``, as for text, so a resume needs no sampler
state.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from model_trainer.engine.dataset import Tokens, batch

IGNORE = -100  # torch's cross_entropy ignore_index
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Example:
    """One tokenized record: ``ids`` and, per id, whether predicting it counts in the loss."""

    ids: Ints
    trainable: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Packed:
    """Rows of ``block_size`` positions: inputs, targets (IGNORE: no loss) and position ids."""

    inputs: Ints
    targets: Ints
    positions: Ints
    used: int  # positions holding an example's token (not padding)
    truncated: int  # examples cut to fit one row

    def __len__(self) -> int:
        return int(self.inputs.size)

    @property
    def loss_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def efficiency(self) -> float:
        return self.used / max(1, self.inputs.size)


@dataclass(frozen=True)
class PackedSplits:
    train: Packed
    val: Packed
    test: Packed
    cache_key: str


def pack(examples: list[Example], block_size: int, *, packing: bool = True) -> Packed:
    """The examples in rows of ``block_size``; an example longer than a row is cut (its
    first ``block_size + 1`` tokens), one without a trainable target left is dropped."""
    pieces: list[tuple[Ints, Ints]] = []
    truncated = 0
    for ex in examples:
        ids, trainable = ex.ids, ex.trainable
        if len(ids) > block_size + 1:
            ids, trainable = ids[: block_size + 1], trainable[: block_size + 1]
            truncated += 1
        targets = np.where(trainable[1:], ids[1:], IGNORE).astype(np.int64)
        if len(ids) < 2 or not (targets != IGNORE).any():
            continue
        pieces.append((ids[:-1].astype(np.int64), targets))
    rows = _rows([len(x) for x, _ in pieces], block_size, packing)
    n = len(rows)
    inputs = np.zeros((n, block_size), dtype=np.int64)
    targets = np.full((n, block_size), IGNORE, dtype=np.int64)
    positions = np.zeros((n, block_size), dtype=np.int64)
    used = 0
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            x, y = pieces[i]
            inputs[r, at : at + len(x)] = x
            targets[r, at : at + len(x)] = y
            positions[r, at : at + len(x)] = np.arange(len(x))
            at += len(x)
        used += at
        positions[r, at:] = np.arange(block_size - at)  # padding: a sequence of its own
    return Packed(inputs, targets, positions, used, truncated)


def _rows(lengths: list[int], block_size: int, packing: bool) -> list[list[int]]:
    """Best fit decreasing: each piece, longest first, into the fullest row it fits; rows
    come out in order of their first piece, pieces in their original order."""
    if not packing:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row), sorted
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            space, row = free.pop(at)
        else:
            space, row = block_size, len(rows)
            rows.append([])
        rows[row].append(i)
        if space - lengths[i] > 0:
            bisect.insort(free, (space - lengths[i], row))
    return [sorted(members) for members in rows]


def draw(
    data: Tokens | Packed, context: int, batch_size: int, seed: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A batch: random windows of a token array (no position ids), or random packed rows
    with their position ids."""
    if not isinstance(data, Packed):
        x, y = batch(data, context, batch_size, seed)
        return x, y, None
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(data.inputs), (batch_size,), generator=gen).numpy()
    return (
        torch.from_numpy(data.inputs[rows]),
        torch.from_numpy(data.targets[rows]),
        torch.from_numpy(data.positions[rows]),
    )
