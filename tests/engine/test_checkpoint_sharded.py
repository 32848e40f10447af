"""Sharded (DCP) checkpoints in process: written under a one-rank FSDP2 process group, read back
by a plain single process; a torn or foreign folder is refused and the previous one used.

The several-process runs (2 -> 1 resume, kill, cancel) are in test_engine_distributed.py and
the broker test; these are the format's integrity rules, cheap enough for every run.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from model_trainer.core.distributed import Rank
from model_trainer.engine import checkpoint
from model_trainer.engine.checkpoint import (
    FILE,
    PREVIOUS_SHARDED,
    SHARD_DIGESTS,
    SHARDED,
    LoopState,
    restore,
    save,
    save_sharded,
)
from model_trainer.engine.distributed import full_model_state, leave, wrap
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from torch import nn

from tests.small_disk import fill, mounted_tmpfs

DIGEST, DATA = "spec", "data"


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def _written(folder: Path, rank: Rank) -> dict[int, dict[str, torch.Tensor]]:
    """Two sharded checkpoints (steps 1 and 2) of an FSDP2 model; its whole weights at each."""
    model, _ = _model()
    wrapped = wrap(model, rank)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=0.1)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    for step in (1, 2):
        _step(wrapped, optimizer)
        save_sharded(
            folder,
            model=wrapped,
            optimizer=optimizer,
            scaler=None,
            loop=LoopState(step=step),
            run_digest=DIGEST,
            data_key=DATA,
            rank=rank,
        )
        # copies: on one rank the gathered tensors may share the shards' storage
        weights[step] = {k: v.clone() for k, v in full_model_state(wrapped).items()}
    return weights


def _restored(folder: Path) -> tuple[int, nn.Module, torch.optim.Optimizer]:
    model, optimizer = _model()
    loop = restore(
        folder, model=model, optimizer=optimizer, scaler=None, run_digest=DIGEST, data_key=DATA
    )
    assert loop is not None
    return loop.step, model, optimizer


def test_a_sharded_checkpoint_loads_in_one_process(tmp_path: Path, one_rank: Rank) -> None:
    folder = tmp_path / "attempt-1"
    weights = _written(folder, one_rank)
    leave()  # a plain process now: DCP reads without a process group
    assert sorted(p.name for p in folder.iterdir()) == sorted([SHARDED, PREVIOUS_SHARDED])
    step, model, optimizer = _restored(folder)
    assert step == 2
    state = model.state_dict()
    assert sorted(state) == sorted(weights[2])
    assert all(torch.equal(state[k], weights[2][k]) for k in state)
    assert [int(s["step"]) for s in optimizer.state_dict()["state"].values()] == [2, 2, 2, 2]


def test_a_torn_sharded_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, one_rank: Rank
) -> None:
    folder = tmp_path / "attempt-1"
    weights = _written(folder, one_rank)
    leave()
    shard = next((folder / SHARDED).glob("__0_*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-7])  # torn: the digest list no longer matches
    step, model, _ = _restored(folder)
    assert step == 1
    assert all(torch.equal(v, weights[1][k]) for k, v in model.state_dict().items())
    # A file no save of this folder wrote (a foreign shard): refused too, and nothing is left.
    (folder / PREVIOUS_SHARDED / "__1_0.distcp").write_bytes(b"not ours")
    with pytest.raises(ModelTrainerError) as refused:
        _restored(folder)
    assert refused.value.code is ModelTrainerErrorCode.CHECKPOINT_CORRUPT
    assert "__1_0.distcp" in refused.value.message


def test_a_single_file_save_demotes_a_sharded_latest(tmp_path: Path, one_rank: Rank) -> None:
    """A job resumed at one process writes files after its shards: its file is the latest,
    the shards the previous, and a claim by the next attempt brings both."""
    folder = tmp_path / "checkpoints" / "attempt-1"
    _written(folder, one_rank)
    leave()
    step, model, optimizer = _restored(folder)
    _step(model, optimizer)
    save(
        folder,
        model=model,
        optimizer=optimizer,
        scaler=None,
        loop=LoopState(step=step + 1),
        run_digest=DIGEST,
        data_key=DATA,
    )
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([FILE, FILE + checkpoint.DIGEST, PREVIOUS_SHARDED])
    fence = checkpoint.Fence(folder.parent, 2)
    assert fence.claim()
    assert sorted(p.name for p in fence.folder.iterdir()) == names
    assert (fence.folder / PREVIOUS_SHARDED / SHARD_DIGESTS).is_file()
    assert _restored(fence.folder)[0] == 3
    assert not dist.is_initialized()


def test_a_full_disk_under_a_sharded_save_is_an_os_error_and_keeps_the_latest(
    tmp_path: Path, one_rank: Rank
) -> None:
    """DCP's own failure is a BaseException that would pass every handler by; the save hands
    on the rank's ENOSPC instead (DISK_FULL, as for a file), and the latest checkpoint stays."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted_tmpfs(disk, 4):
        folder = disk / "attempt-1"
        _written(folder, one_rank)
        fill(disk)
        model, _ = _model()
        wrapped = wrap(model, one_rank)
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=0.1)
        _step(wrapped, optimizer)
        with pytest.raises(OSError, match="No space left") as full:
            save_sharded(
                folder,
                model=wrapped,
                optimizer=optimizer,
                scaler=None,
                loop=LoopState(step=3),
                run_digest=DIGEST,
                data_key=DATA,
                rank=one_rank,
            )
        assert full.value.errno == errno.ENOSPC
        leave()
        assert _restored(folder)[0] == 2
