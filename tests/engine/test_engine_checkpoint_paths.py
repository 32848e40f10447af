"""Checkpoint edge paths, in process on a tiny model: a checkpoint that is damaged in any part
(format, model or optimizer state, RNG or loop state, a sharded folder's digest list) is
CHECKPOINT_CORRUPT naming it, and a previous one is used instead when there is one; the
scaler's state comes back; a fence stops a run a later attempt has claimed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from model_trainer.core.distributed import Rank
from model_trainer.core.layout import temp_path
from model_trainer.engine.checkpoint import (
    DIGEST,
    FILE,
    PREVIOUS,
    SHARD_DIGESTS,
    SHARDED,
    Fence,
    LoopState,
    restore,
    save,
    save_sharded,
)
from model_trainer.engine.context import Superseded
from model_trainer.engine.distributed import leave, wrap
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from torch import nn

C = ModelTrainerErrorCode
SPEC, DATA = "spec", "data"
State = dict[str, object]


def _model(width: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(2, width)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _save(folder: Path, step: int, scaler: torch.amp.GradScaler | None = None) -> Path:
    model, optimizer = _model()
    return save(
        folder,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        loop=LoopState(step=step),
        run_digest=SPEC,
        data_key=DATA,
    )


def _restore(folder: Path, scaler: torch.amp.GradScaler | None = None) -> LoopState | None:
    model, optimizer = _model()
    return restore(
        folder, model=model, optimizer=optimizer, scaler=scaler, run_digest=SPEC, data_key=DATA
    )


def _corrupt(folder: Path) -> tuple[object, str, object]:
    with pytest.raises(ModelTrainerError) as err:
        _restore(folder)
    return err.value.code, err.value.message, err.value.details


def _tamper(path: Path, change: Callable[[State], None]) -> None:
    """Rewrite the checkpoint at ``path`` changed, its digest dropped (as a checkpoint written
    before digests existed, or by another writer, has none)."""
    state: State = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    path.with_name(path.name + DIGEST).unlink()


def _rng(state: State) -> dict[str, object]:
    rng = state["rng"]
    assert isinstance(rng, dict)
    return rng


def test_only_a_previous_checkpoint_is_used_when_the_latest_is_gone(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / FILE).unlink()
    assert (tmp_path / PREVIOUS).is_file()
    assert _restore(tmp_path) == LoopState(step=1)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: s.update(format=2), "not a checkpoint of this format"),
        (
            lambda s: s.update(model=[1]),
            "inconsistent: the model or optimizer state is not a mapping",
        ),
        (
            lambda s: s.update(model={}),
            "inconsistent: missing ['weight', 'bias'], unexpected []",
        ),
        (lambda s: s.pop("loop"), "inconsistent: 'loop'"),
        (lambda s: s.update(rng=[]), "inconsistent: the RNG or loop state is not a mapping"),
        (
            lambda s: _rng(s).update(torch=[0]),
            "inconsistent: torch RNG state is not a tensor",
        ),
        (
            lambda s: _rng(s).update(python=[0]),
            "inconsistent: python RNG state is not a tuple",
        ),
        (
            lambda s: _rng(s).update(numpy_pos="0"),
            "inconsistent: numpy RNG state is malformed",
        ),
    ],
)
def test_a_damaged_checkpoint_is_corrupt_and_the_previous_is_used(
    tmp_path: Path, change: Callable[[State], None], why: str
) -> None:
    path = _save(tmp_path, 1)
    _tamper(path, change)
    assert _corrupt(tmp_path) == (
        C.CHECKPOINT_CORRUPT,
        f"checkpoint {FILE}: {why}",
        {"checkpoint": str(path)},
    )
    _save(tmp_path, 2)  # the damaged one becomes the previous: the new latest is used
    _tamper(tmp_path / FILE, change)
    (tmp_path / PREVIOUS).unlink()
    _save(tmp_path, 3)
    assert _restore(tmp_path) == LoopState(step=3)
    _tamper(tmp_path / FILE, change)
    with pytest.raises(ModelTrainerError) as err:
        _restore(tmp_path)  # the previous is the damaged step 2
    assert err.value.code == C.CHECKPOINT_CORRUPT
    assert err.value.details == {"checkpoint": str(tmp_path / PREVIOUS)}


def test_the_scaler_state_comes_back(tmp_path: Path) -> None:
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _save(tmp_path, 1, saved)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0)
    assert _restore(tmp_path, fresh) == LoopState(step=1)
    assert fresh.state_dict()["scale"] == 1024.0


@pytest.mark.parametrize(
    ("listing", "why"),
    [
        (None, "its digest list is missing or unreadable"),
        (b"{not json", "its digest list is missing or unreadable"),
        (b"[]", "its digest list is not a mapping"),
        (b'{"a": "0"}', "it holds [], its digest list names ['a']"),
    ],
)
def test_a_sharded_checkpoint_with_a_bad_digest_list_is_corrupt(
    tmp_path: Path, listing: bytes | None, why: str
) -> None:
    (tmp_path / SHARDED).mkdir()
    if listing is not None:
        (tmp_path / SHARDED / SHARD_DIGESTS).write_bytes(listing)
    assert _corrupt(tmp_path) == (
        C.CHECKPOINT_CORRUPT,
        f"checkpoint {SHARDED}: {why}",
        {"checkpoint": str(tmp_path / SHARDED)},
    )


def test_a_claimed_later_attempt_stops_the_earlier_run(tmp_path: Path) -> None:
    first, second = Fence(tmp_path, 1), Fence(tmp_path, 2)
    assert not first.claim()
    first.check(5)
    assert second.claim() is False
    with pytest.raises(Superseded) as stopped:
        first.check(7)
    assert (stopped.value.by, first.superseded_by(), second.superseded_by()) == (2, 2, None)
    with pytest.raises(Superseded):
        first.claim()


def test_a_claim_brings_the_earlier_attempts_files_over_a_leftover_temp_folder(
    tmp_path: Path,
) -> None:
    earlier = Fence(tmp_path, 1)
    earlier.claim()
    _save(earlier.folder, 1)
    (earlier.folder / SHARDED).mkdir()
    (earlier.folder / SHARDED / "shard").write_bytes(b"x")
    later = Fence(tmp_path, 2)
    # A copy this process left half done: it goes before the copy lands under its name.
    leftover = temp_path(later.folder / SHARDED, os.getpid())
    leftover.mkdir(parents=True)
    (leftover / "stale").write_bytes(b"y")
    assert later.claim()
    assert not leftover.exists()
    assert sorted(p.name for p in later.folder.iterdir()) == sorted([FILE, FILE + DIGEST, SHARDED])
    assert (later.folder / SHARDED / "shard").read_bytes() == b"x"
    assert (later.folder / FILE).read_bytes() == (earlier.folder / FILE).read_bytes()
    later.saved(later.folder / FILE, 1)  # no store: nothing to mirror
    assert later.claim()  # run again: its own files, nothing copied


def test_legacy_flat_files_are_attempt_0_and_a_file_named_like_an_attempt_is_not_one(
    tmp_path: Path,
) -> None:
    _save(tmp_path, 4)  # written before attempts had folders: checkpoints/checkpoint.pt
    (tmp_path / "attempt-9").write_bytes(b"")  # a file, not an attempt's folder
    fence = Fence(tmp_path, 1)
    assert fence.superseded_by() is None
    assert fence.claim()
    assert _restore(fence.folder) == LoopState(step=4)


def test_a_single_file_checkpoint_loads_into_a_rank_unless_a_parameter_lacks(
    tmp_path: Path, one_rank: Rank
) -> None:
    path = _save(tmp_path, 2)
    model, _ = _model()
    wrapped = wrap(model, one_rank)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=0.1)

    def into_rank() -> LoopState | None:
        return restore(
            tmp_path,
            model=wrapped,
            optimizer=optimizer,
            scaler=None,
            run_digest=SPEC,
            data_key=DATA,
            rank=one_rank,
        )

    assert into_rank() == LoopState(step=2)
    # FSDP2's full-state load itself reports no missing keys: the checkpoint refuses it.
    _tamper(path, lambda s: s.update(model={}))
    with pytest.raises(ModelTrainerError) as err:
        into_rank()
    assert (err.value.code, err.value.message) == (
        C.CHECKPOINT_CORRUPT,
        f"checkpoint {FILE}: inconsistent: missing ['weight', 'bias'], unexpected []",
    )


def test_a_sharded_checkpoint_of_another_shape_is_corrupt(tmp_path: Path, one_rank: Rank) -> None:
    model, _ = _model()
    wrapped = wrap(model, one_rank)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=0.1)
    save_sharded(
        tmp_path,
        model=wrapped,
        optimizer=optimizer,
        scaler=None,
        loop=LoopState(step=1),
        run_digest=SPEC,
        data_key=DATA,
        rank=one_rank,
    )
    leave()  # a plain process reads it
    other, other_optimizer = _model(width=5)
    with pytest.raises(ModelTrainerError) as err:
        restore(
            tmp_path,
            model=other,
            optimizer=other_optimizer,
            scaler=None,
            run_digest=SPEC,
            data_key=DATA,
        )
    assert err.value.code == C.CHECKPOINT_CORRUPT
    assert err.value.message.startswith(f"checkpoint {SHARDED}: inconsistent: ")
