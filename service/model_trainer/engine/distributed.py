"""One job on several processes: ``torch.distributed`` (gloo) around the shared training loop.

Every rank runs the same :class:`~model_trainer.engine.trainer.BaseTrainer` loop on the same
seeds, so every decision (steps, evaluations, early stopping, stops) is taken identically
everywhere; what differs:

* the batch: each rank draws the same global batch of ``training.batch_size`` rows and trains
  on its own contiguous slice (:func:`local_rows`); gradients are averaged over the ranks, so
  a step is the step of one process on the whole batch, up to float summation order;
* the model: ``ddp`` wraps it in ``DistributedDataParallel`` (a replica per rank, gradients
  all-reduced), ``fsdp`` shards it with FSDP2's ``fully_shard`` as one unit (weights,
  gradients and optimizer state 1/N per rank between steps; the weights gathered whole for
  the forward and backward passes);
* stop requests (cancel, deadline, shutdown) are agreed by all-reduce at each check, so all
  ranks stop at the same step: a collective one rank skips would hang the others;
* rank 0 alone emits events and writes the artifact (one ordinary ``transformers`` folder,
  gathered to whole tensors first); checkpoints are written by every rank, its own shards,
  with ``torch.distributed.checkpoint`` (:func:`save_shards`), and load at any number of
  processes (:func:`load_shards` reshards).
"""

from __future__ import annotations

import contextlib
import datetime
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    DictValueType,
    ListDictValueType,
    PrimitiveType,
    StateDictOptions,
    ValueType,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from model_trainer.core.distributed import Rank
from model_trainer.core.stop import StopReason, reason_of

TIMEOUT = datetime.timedelta(minutes=30)  # torch's default: rank 0 may tokenize a corpus alone


def join(rank: Rank) -> None:
    """Join the job's process group (gloo: CPU)."""
    dist.init_process_group(
        "gloo",
        init_method=rank.init_method,
        rank=rank.rank,
        world_size=rank.world,
        timeout=TIMEOUT,
    )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    dist.barrier()


@contextlib.contextmanager
def leader_first(rank: Rank | None) -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (files rank 0 creates, such as the
    token cache or the attempt's checkpoint folder, are then found, not raced for)."""
    if rank is not None and not rank.leader:
        barrier()
    yield
    if rank is not None and rank.leader:
        barrier()


def local_rows(x: Tensor, rank: Rank | None) -> Tensor:
    """This rank's contiguous slice of a global batch's rows."""
    if rank is None:
        return x
    size = x.size(0) // rank.world
    return x[rank.rank * size : (rank.rank + 1) * size]


def mean(value: Tensor, rank: Rank | None) -> Tensor:
    """The mean of ``value`` over the ranks (the global batch's loss from the local ones)."""
    if rank is None:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / rank.world


def agreed_stop(local: Callable[[], StopReason | None]) -> Callable[[], StopReason | None]:
    """A stop check every rank answers alike: the highest reason any rank sees (0: none)."""

    def check() -> StopReason | None:
        reason = local()
        flag = torch.tensor([0 if reason is None else int(reason)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return reason_of(int(flag.item()))

    return check


def wrap(model: nn.Module, rank: Rank) -> nn.Module:
    """``model`` under the rank's strategy; under ``fsdp`` its parameters become shards, so
    build the optimizer after this."""
    if rank.strategy == "fsdp":
        # One unit, the root: the backends' lean forwards read their layers' weights from the
        # root's forward, never calling the layers, so a per-layer unit would stay sharded.
        fully_shard(model)
        return model
    # No buffer broadcast per forward: the buffers are constants, the same on every rank.
    return DistributedDataParallel(model, broadcast_buffers=False)


def inner(model: nn.Module) -> nn.Module:
    """The backend's own module (DDP wraps it; FSDP2 shards in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_norm(norm: Tensor) -> float:
    """A gradient norm as a float (a DTensor under FSDP2: reduced over the shards)."""
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state on rank 0 (empty elsewhere); a collective under FSDP."""
    state = get_model_state_dict(inner(model), options=_FULL)
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in the order ``state_dict()`` numbers them."""
    names = {id(p): name for name, p in inner(model).named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The optimizer's whole state on rank 0 in ``optimizer.state_dict()``'s own format
    (parameters by index), as a single process writes it; a collective under FSDP."""
    by_name = get_optimizer_state_dict(inner(model), optimizer, options=_FULL)
    index = {name: i for i, name in enumerate(_order(model, optimizer))}
    named_state, named_groups = by_name.get("state", {}), by_name.get("param_groups", [])
    state = {index[n]: s for n, s in named_state.items()} if isinstance(named_state, dict) else {}
    groups: list[dict[str, object]] = []
    for group in named_groups if isinstance(named_groups, list) else []:
        names = group.get("params", [])
        ids = [index[n] for n in names if isinstance(n, str)] if isinstance(names, list) else []
        groups.append({**group, "params": ids})
    return {"state": state, "param_groups": groups}


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, object]
) -> None:
    """Load a single-process ``optimizer.state_dict()`` into the optimizer of the sharded
    ``model`` (every rank reads the whole state and keeps its shard)."""
    order = _order(model, optimizer)
    plain_state, plain_groups = plain.get("state", {}), plain.get("param_groups", [])
    state: DictValueType = {}
    if isinstance(plain_state, dict):
        for i, values in plain_state.items():
            if isinstance(i, int) and isinstance(values, dict):
                state[order[i]] = {str(k): v for k, v in values.items()}
    groups: ListDictValueType = []
    for group in plain_groups if isinstance(plain_groups, list) else []:
        if isinstance(group, dict):
            ids = group.get("params", [])
            names: list[PrimitiveType] = [order[i] for i in ids if isinstance(i, int)]
            groups.append({**{str(k): v for k, v in group.items()}, "params": names})
    set_optimizer_state_dict(
        inner(model),
        optimizer,
        {"state": state, "param_groups": groups},
        options=StateDictOptions(full_state_dict=True),
    )


def whole_states(
    model: nn.Module, optimizer: torch.optim.Optimizer, rank: Rank | None
) -> tuple[nn.Module | dict[str, Tensor], torch.optim.Optimizer | dict[str, object]]:
    """What a checkpoint saves: the model and optimizer as one process holds them (their
    whole states gathered to rank 0 under FSDP: a collective)."""
    if rank is None or rank.strategy != "fsdp":
        return inner(model), optimizer
    return full_model_state(model), full_optimizer_state(model, optimizer)


def whole_model(
    model: nn.Module, rank: Rank | None, build: Callable[[], nn.Module]
) -> nn.Module | None:
    """The unsharded model for the artifact on rank 0 (None on the others); under FSDP a
    fresh ``build()`` loaded with the gathered weights (a collective)."""
    if rank is None:
        return model
    if rank.strategy != "fsdp":
        return inner(model) if rank.leader else None
    state = full_model_state(model)
    if not rank.leader:
        return None
    whole = build()
    whole.load_state_dict(state)
    return whole


def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Write the model's and optimizer's states into ``folder`` with DCP, each rank its own
    shards (FSDP2's DTensors; DDP's replicas once, DCP dedupes them); a collective when a
    process group is up."""
    states = {
        "model": get_model_state_dict(inner(model)),
        "optimizer": get_optimizer_state_dict(inner(model), optimizer),
    }
    try:
        dcp_save(states, checkpoint_id=folder, no_dist=not dist.is_initialized())
    except CheckpointException as failed:
        # A BaseException, which would pass every handler by: the first rank's own error
        # instead, so that a full disk is DISK_FULL as for any checkpoint.
        causes = [cause for cause, _ in failed.failures.values() if isinstance(cause, Exception)]
        raise (causes[0] if causes else RuntimeError(str(failed))) from None


def load_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load a :func:`save_shards` folder written at any number of processes into ``model``
    and ``optimizer`` as they are now (one process, or this rank's shards: DCP reads the
    slices each one needs)."""
    model_state = get_model_state_dict(inner(model))
    optimizer_state = get_optimizer_state_dict(inner(model), optimizer)
    states = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():  # one process reading shards is what we mean to do
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_load(states, checkpoint_id=folder, no_dist=not dist.is_initialized())
    set_model_state_dict(inner(model), model_state)
    set_optimizer_state_dict(inner(model), optimizer, optimizer_state)


def load_whole(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, ValueType],
    plain: dict[str, object],
) -> tuple[list[str], list[str]]:
    """Load a single-process checkpoint (the whole model state, ``optimizer.state_dict()``)
    into this rank's model and optimizer (FSDP2: every rank reads the whole and keeps its
    shard); returns the missing and unexpected model keys."""
    if isinstance(model, DistributedDataParallel):
        missing, unexpected = model.module.load_state_dict(state, strict=False)
        optimizer.load_state_dict(plain)
        return list(missing), list(unexpected)
    keys = set_model_state_dict(
        model, state, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    load_optimizer_state(model, optimizer, plain)
    return list(keys.missing_keys), list(keys.unexpected_keys)


def gather(value: object, rank: Rank) -> list[object]:
    """Every rank's ``value`` on rank 0, in rank order (empty elsewhere; a collective)."""
    found: list[object] = [None] * rank.world
    dist.gather_object(value, found if rank.leader else None, dst=0)
    return found if rank.leader else []


def agreed(value: object, rank: Rank | None) -> object:
    """Rank 0's ``value`` on every rank (a collective): a decision all ranks must share."""
    if rank is None:
        return value
    box = [value if rank.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
