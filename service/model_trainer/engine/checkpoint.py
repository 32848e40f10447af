"""Checkpoints: everything needed to continue a run exactly, in one atomically written file.

``<job_dir>/checkpoints/attempt-<n>/checkpoint.pt`` holds the model, optimizer and (fp16)
scaler states, the RNG states (torch, CUDA, numpy, python), the loop counters, and digests of
the job spec and token data it belongs to. It is read with ``torch.load(weights_only=True)``:
tensors and plain containers only, never arbitrary pickles. The learning-rate schedule and the
batch sampler are pure functions of the step, so the step is all the "scheduler state" and
"data position" a resume needs.

Each attempt writes only into its own ``attempt-<n>`` folder (:class:`Fence`), so a run the
service lost track of (its process paused past the session timeout, a kill -9 of the service
while its worker trained on) can never overwrite the files of the attempt that took the job
over, nor be resumed from once that attempt exists: creating its folder is the new attempt's
claim, and a run that sees a higher attempt's folder before it writes stops (:class:`Superseded`).

A job of several processes writes ``checkpoint.dcp/`` instead (:func:`save_sharded`): every
rank its own shards with ``torch.distributed.checkpoint``, rank 0 the loop, RNG and digests
(``loop.pt``, the file format less model and optimizer) and, last, ``sha256.json``, the
digest of every file in the folder; the folder is written under a temporary name and renamed
into place, as the file is. It loads at any number of processes, one included (DCP reads the
slices each rank's shards need). Either format is "the latest" or "the previous": a save
of one makes the latest of the other the previous.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import structlog
import torch
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from model_trainer.core.distributed import Rank
from model_trainer.core.layout import CHECKPOINTS, temp_path
from model_trainer.engine import distributed
from model_trainer.engine.context import RunContext, Superseded
from model_trainer.engine.files import sha256_file
from model_trainer.engine.remote import RemoteCheckpoints

log = structlog.get_logger()

_C = ModelTrainerErrorCode
FILE = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the one before, kept in case the latest is damaged
DIGEST = ".sha256"  # beside each file: its content digest, checked before loading
SHARDED = "checkpoint.dcp"  # a folder: a job of several processes' checkpoint
PREVIOUS_SHARDED = "checkpoint.prev.dcp"
EXTRA = "loop.pt"  # in a sharded checkpoint: everything but the model and optimizer
SHARD_DIGESTS = "sha256.json"  # in a sharded checkpoint: every other file's digest
FORMAT = 1
ATTEMPT = re.compile(r"^attempt-([0-9]+)$")
LEGACY_ATTEMPT = 0  # files directly in checkpoints/, written before attempts had folders


@dataclass
class LoopState:
    """The training loop's counters; saved with every checkpoint."""

    step: int = 0
    best_val: float | None = None
    evals_since_best: int = 0
    smooth_loss: float | None = None
    best_smooth: float | None = None


def save(
    folder: Path,
    *,
    model: nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, object],
    scaler: torch.amp.GradScaler | None,
    loop: LoopState,
    run_digest: str,
    data_key: str,
) -> Path:
    """Write the checkpoint (temp file, fsync, rename); returns its path. Until the new one
    is complete the latest stays the latest; then it becomes the previous one. ``model`` and
    ``optimizer`` may be their whole states already (gathered from the shards of a job of
    several processes)."""
    state = {
        **_extras(loop, scaler, run_digest, data_key),
        "model": trained_state(model) if isinstance(model, nn.Module) else model,
        "optimizer": optimizer if isinstance(optimizer, dict) else optimizer.state_dict(),
    }
    path = folder / FILE
    folder.mkdir(parents=True, exist_ok=True)
    tmp, tmp_digest = temp_path(path, os.getpid()), temp_path(_digest_path(path), os.getpid())
    try:
        # The new checkpoint is complete (written, synced, digested) before the last good one
        # moves aside: a write that fails (a full disk) leaves the folder as it was.
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp_digest.write_bytes(sha256_file(tmp).encode())
        _demote(folder)
        os.replace(tmp_digest, _digest_path(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)
    return path


def _extras(
    loop: LoopState, scaler: torch.amp.GradScaler | None, run_digest: str, data_key: str
) -> dict[str, object]:
    """A checkpoint's state but the model and optimizer."""
    np_state = np.random.get_state(legacy=False)
    return {
        "format": FORMAT,
        "spec_digest": run_digest,  # on-disk name kept: older checkpoints still resume
        "data_key": data_key,
        "loop": asdict(loop),
        "data_position": loop.step,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "numpy_pos": int(np_state["state"]["pos"]),
            "numpy_gauss": (int(np_state["has_gauss"]), float(np_state["gauss"])),
        },
    }


def _demote(folder: Path) -> None:
    """Make room for a new latest checkpoint: the previous one goes, the latest (of either
    format) becomes the previous one. Called once the new one is complete."""
    latest, previous = folder / FILE, folder / PREVIOUS
    if not latest.is_file() and not (folder / SHARDED).is_dir():
        return
    previous.unlink(missing_ok=True)
    _digest_path(previous).unlink(missing_ok=True)
    shutil.rmtree(folder / PREVIOUS_SHARDED, ignore_errors=True)
    if latest.is_file():
        os.replace(latest, previous)
        with contextlib.suppress(OSError):
            os.replace(_digest_path(latest), _digest_path(previous))
    if (folder / SHARDED).is_dir():
        os.replace(folder / SHARDED, folder / PREVIOUS_SHARDED)


def save_sharded(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    loop: LoopState,
    run_digest: str,
    data_key: str,
    rank: Rank,
) -> Path:
    """Every rank writes its shards (a collective) into a temporary folder; rank 0 adds the
    loop state and the digests of every file (each rank hashes its own), then renames the
    folder into place as the latest checkpoint."""
    path = folder / SHARDED
    tmp = folder / f".{SHARDED}.tmp"  # one name all ranks know; a leftover is cleared here
    if rank.leader:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    distributed.save_shards(model, optimizer, tmp)  # DCP fsyncs each file it writes
    mine = {f.name: sha256_file(f) for f in sorted(tmp.glob(f"__{rank.rank}_*"))}
    every = distributed.gather(mine, rank)
    if not rank.leader:
        return path
    digests = {str(k): str(v) for d in every if isinstance(d, dict) for k, v in d.items()}
    with open(tmp / EXTRA, "wb") as f:
        torch.save(_extras(loop, scaler, run_digest, data_key), f)
        f.flush()
        os.fsync(f.fileno())
    for name in (EXTRA, ".metadata"):
        digests[name] = sha256_file(tmp / name)
    with open(tmp / SHARD_DIGESTS, "w") as listing:
        json.dump(digests, listing, sort_keys=True)
        listing.flush()
        os.fsync(listing.fileno())
    _demote(folder)
    os.replace(tmp, path)
    return path


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state, less frozen parameters (a LoRA adapter's base, frozen embeddings):
    they are what the run started from, rebuilt the same on every attempt."""
    frozen = _frozen(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def _frozen(model: nn.Module) -> set[str]:
    """Names of frozen parameters, a tied weight's every name included."""
    named = model.named_parameters(remove_duplicate=False)
    return {name for name, p in named if not p.requires_grad}


def _load_trained(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trained_state`: every parameter that trains must be in it."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = _frozen(model)
    lacking = [k for k in missing if k not in frozen]
    if lacking or unexpected:
        raise ValueError(f"missing {lacking[:5]}, unexpected {list(unexpected)[:5]}")


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST)


def restore(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    run_digest: str,
    data_key: str,
    rank: Rank | None = None,
) -> LoopState | None:
    """Load the checkpoint into ``model``, ``optimizer``, ``scaler`` and the global RNGs and
    return its loop state; None when there is none. A damaged latest checkpoint (digest
    mismatch, unreadable) falls back to the previous one; CHECKPOINT_CORRUPT when neither can
    be used, CHECKPOINT_CONFIG_MISMATCH when it was written for another spec or other data.
    With ``rank``, ``model`` and ``optimizer`` are this rank's (wrapped, sharded): either
    format loads into them, whatever the number of processes that wrote it."""
    latest = next((p for p in (folder / FILE, folder / SHARDED) if p.exists()), None)
    previous = next((p for p in (folder / PREVIOUS, folder / PREVIOUS_SHARDED) if p.exists()), None)
    if latest is None and previous is None:
        return None
    into = _Into(model, optimizer, scaler, run_digest, data_key, rank)
    try:
        if latest is None:
            raise _corrupt(folder / FILE, "missing")
        return _restore_any(latest, into)
    except ModelTrainerError as damaged:
        if damaged.code is not _C.CHECKPOINT_CORRUPT or previous is None:
            raise
        log.warning("engine.checkpoint_damaged", error=damaged.message, using=previous.name)
        return _restore_any(previous, into)


@dataclass(frozen=True)
class _Into:
    """What a checkpoint loads into, and what it must have been written for."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    run_digest: str
    data_key: str
    rank: Rank | None  # None: one process; else ``model`` and ``optimizer`` are the rank's


def _restore_any(path: Path, into: _Into) -> LoopState:
    return _restore_sharded(path, into) if path.is_dir() else _restore(path, into)


def _checked(raw: object, path: Path, run_digest: str, data_key: str) -> dict[str, object]:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _corrupt(path, "not a checkpoint of this format")
    if raw.get("spec_digest") != run_digest or raw.get("data_key") != data_key:
        raise ModelTrainerError(
            _C.CHECKPOINT_CONFIG_MISMATCH,
            "the checkpoint was written for a different job spec or corpus",
            details={"checkpoint": str(path)},
        )
    return {str(k): v for k, v in raw.items()}


def _load(path: Path) -> object:
    try:
        raw: object = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise _corrupt(path, f"unreadable: {exc}") from None
    return raw


def _restore(path: Path, into: _Into) -> LoopState:
    digest = _digest_path(path)
    if digest.is_file() and digest.read_text().strip() != sha256_file(path):
        raise _corrupt(path, "its content does not match its digest")
    raw = _checked(_load(path), path, into.run_digest, into.data_key)
    model, optimizer = into.model, into.optimizer
    try:
        state, plain = raw["model"], raw["optimizer"]
        if not isinstance(state, dict) or not isinstance(plain, dict):
            raise TypeError("the model or optimizer state is not a mapping")
        if into.rank is None:
            _load_trained(model, state)
            optimizer.load_state_dict(plain)
        else:  # one process's checkpoint into this rank's shards
            _, unexpected = distributed.load_whole(model, optimizer, state, plain)
            # FSDP2's full-state load reports no missing keys (it keeps what it is not
            # given): which trained names the checkpoint lacks is checked here.
            inner = distributed.inner(model)
            frozen = _frozen(inner)
            lacking = [k for k in inner.state_dict() if k not in state and k not in frozen]
            if lacking or unexpected:
                raise ValueError(f"missing {lacking[:5]}, unexpected {unexpected[:5]}")
        return _rest(raw, into.scaler)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _corrupt(path, f"inconsistent: {exc}") from None


def _rest(raw: dict[str, object], scaler: torch.amp.GradScaler | None) -> LoopState:
    """The scaler, the RNGs and the loop's counters of a checked checkpoint."""
    scaler_state, rng, loop = raw["scaler"], raw["rng"], raw["loop"]
    if scaler is not None and isinstance(scaler_state, dict):
        scaler.load_state_dict(scaler_state)
    if not isinstance(rng, dict) or not isinstance(loop, dict):
        raise TypeError("the RNG or loop state is not a mapping")
    _restore_rng(rng)
    return LoopState(**loop)


def _restore_sharded(path: Path, into: _Into) -> LoopState:
    # Rank 0 checks the digests and every rank takes its answer: ranks that chose
    # differently between this checkpoint and the previous one would wait on each other.
    rank = into.rank
    problem = distributed.agreed(
        _shards_problem(path) if rank is None or rank.leader else None, rank
    )
    if isinstance(problem, str):
        raise _corrupt(path, problem)
    raw = _checked(_load(path / EXTRA), path, into.run_digest, into.data_key)
    try:
        distributed.load_shards(into.model, into.optimizer, path)
        return _rest(raw, into.scaler)
    except (KeyError, TypeError, ValueError, RuntimeError, CheckpointException) as exc:
        raise _corrupt(path, f"inconsistent: {exc}") from None


def _shards_problem(path: Path) -> str | None:
    """Why the sharded checkpoint at ``path`` cannot be used (None: it can): its files must be
    exactly those its digest list names, each with its digest (a torn write, a file from
    another save)."""
    try:
        listed: object = json.loads((path / SHARD_DIGESTS).read_bytes())
    except (OSError, ValueError):
        return "its digest list is missing or unreadable"
    if not isinstance(listed, dict):
        return "its digest list is not a mapping"
    present = sorted(f.name for f in path.iterdir() if f.name != SHARD_DIGESTS)
    if present != sorted(listed):
        return f"it holds {present}, its digest list names {sorted(listed)}"
    for name, digest in sorted(listed.items()):
        if sha256_file(path / name) != digest:
            return f"{name} does not match its digest"
    return None


def _restore_rng(rng: dict[object, object]) -> None:
    torch_state = rng["torch"]
    if not isinstance(torch_state, torch.Tensor):
        raise TypeError("torch RNG state is not a tensor")
    torch.set_rng_state(torch_state)
    cuda = rng["cuda"]
    if isinstance(cuda, list) and cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    python = rng["python"]
    if not isinstance(python, tuple):
        raise TypeError("python RNG state is not a tuple")
    random.setstate(python)
    key, pos, gauss = rng["numpy_key"], rng["numpy_pos"], rng["numpy_gauss"]
    if not (isinstance(key, torch.Tensor) and isinstance(pos, int) and isinstance(gauss, tuple)):
        raise TypeError("numpy RNG state is malformed")
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": key.numpy().astype(np.uint32), "pos": pos},
            "has_gauss": gauss[0],
            "gauss": gauss[1],
        }
    )


def _corrupt(path: Path, why: str) -> ModelTrainerError:
    return ModelTrainerError(
        _C.CHECKPOINT_CORRUPT, f"checkpoint {path.name}: {why}", details={"checkpoint": str(path)}
    )


def _attempts(root: Path) -> dict[int, Path]:
    """The attempt folders under ``root`` by attempt number (legacy flat files as attempt 0)."""
    found: dict[int, Path] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in root.iterdir():
            match = ATTEMPT.match(entry.name)
            if match is not None and entry.is_dir():
                found[int(match.group(1))] = entry
    if (root / FILE).is_file() or (root / PREVIOUS).is_file():
        found.setdefault(LEGACY_ATTEMPT, root)
    return found


def has_checkpoint(folder: Path) -> bool:
    files = (folder / FILE).is_file() or (folder / PREVIOUS).is_file()
    return files or (folder / SHARDED).is_dir() or (folder / PREVIOUS_SHARDED).is_dir()


class Fence:
    """Attempt ``attempt``'s checkpoint folder under ``root`` (``<job_dir>/checkpoints``).

    :meth:`claim` creates the folder (from then on every lower attempt is fenced off) and
    brings the newest checkpoint of the highest earlier attempt into it; :meth:`check` raises
    :class:`Superseded` once a higher attempt has claimed the job."""

    def __init__(self, root: Path, attempt: int, remote: RemoteCheckpoints | None = None) -> None:
        self.root = root
        self.attempt = attempt
        self.folder = root / f"attempt-{attempt}"
        self.remote = remote

    @classmethod
    def of(cls, ctx: RunContext) -> Fence:
        """The fence of ``ctx``'s attempt, mirrored to its artifacts URL when it has one."""
        remote = None
        if ctx.artifacts_url is not None:
            remote = RemoteCheckpoints(
                ctx.artifacts_url, ctx.job.job_id, ctx.attempt, ctx.storage_retry_s
            )
        return cls(ctx.job_dir / CHECKPOINTS, ctx.attempt, remote)

    def superseded_by(self) -> int | None:
        """The highest attempt above this one that has claimed the job, if any (here or, with
        object storage, on any node)."""
        higher = [n for n in _attempts(self.root) if n > self.attempt]
        if self.remote is not None:
            higher += [n for n in [self.remote.superseded_by()] if n is not None]
        return max(higher) if higher else None

    def saved(self, path: Path, step: int) -> None:
        """Mirror the checkpoint of ``step`` just written at ``path`` to the store (no-op
        without one)."""
        if self.remote is not None:
            self.remote.upload(path, step, _digest_path(path).read_text().strip())

    def check(self, step: int) -> None:
        """Stop (Superseded) when a later attempt owns the job: its files are not ours."""
        newer = self.superseded_by()
        if newer is not None:
            log.warning("engine.superseded", attempt=self.attempt, by=newer, step=step)
            raise Superseded(step, newer)

    def claim(self) -> bool:
        """Create this attempt's folder and, unless it holds a checkpoint already (the same
        attempt run again, as ``model-trainer run`` does), copy in the files of the highest
        earlier attempt that has one. Returns whether there is a checkpoint to resume."""
        self.check(0)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.remote is not None:
            self.remote.claim()
        if has_checkpoint(self.folder):
            return True
        found = _attempts(self.root)
        earlier = sorted(
            (n for n, folder in found.items() if n < self.attempt and has_checkpoint(folder)),
            reverse=True,
        )
        if _fetch_remote(self, earlier[0] if earlier else -1):
            return True
        if earlier:
            _copy_checkpoint(found[earlier[0]], self.folder)
            log.info("engine.checkpoint_claimed", attempt=self.attempt, source=earlier[0])
            return True
        return False


def _fetch_remote(fence: Fence, local_best: int) -> bool:
    """Bring the store's newest complete checkpoint into the fence's folder when it is of a
    later attempt than any here (another node ran the job since); True when one came."""
    remote = fence.remote
    if remote is None:
        return False
    for found in remote.newest(up_to=fence.attempt):
        if found.attempt <= local_best:
            return False  # this node has that attempt's files itself
        if remote.download(found, fence.folder / FILE):
            return True
    return False


def _copy_checkpoint(source: Path, target: Path) -> None:
    """Bring ``source``'s checkpoint files into ``target``: a hard link when the filesystem
    allows (a later save replaces the file, never writes into it), else a copy; each lands
    under its final name in one rename, so a reader never sees half a file (or folder)."""
    for name in (PREVIOUS, PREVIOUS + DIGEST, FILE, FILE + DIGEST, PREVIOUS_SHARDED, SHARDED):
        src = source / name
        if not src.exists():
            continue
        tmp = temp_path(target / name, os.getpid())
        _remove(tmp)
        try:
            if src.is_dir():
                shutil.copytree(src, tmp, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, tmp)
            os.replace(tmp, target / name)
        except (FileNotFoundError, shutil.Error):  # replaced by a run that is still saving
            continue
        finally:
            _remove(tmp)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
