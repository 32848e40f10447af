"""Tokens/s of one job on 1 vs 2 processes (gloo, CPU) on the same global batch, and the
communication share of a 2-process step.

    .venv/bin/python bench/distributed.py tinyshakespeare.txt [--steps 40] [--batch 16]

Each run goes through the engine (``run_job`` for 1 process, the worker's launcher
:func:`model_trainer.pool.ranks.launch` for 2), with the same total threads (2 for the single
process, 1 per rank). tokens/s is the median of the progress events after the first 5 steps,
best of ``--rounds`` rounds that each run all three (1 process, 2 DDP, 2 FSDP2) in turn, so a
shared machine's changing load falls on all of them alike.
The communication share: two ranks all-reduce a buffer the size of the model's gradients
(what DDP sends each step) as many times, timed, over the 2-process step time.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.distributed as dist
from model_trainer.core.distributed import Rank
from model_trainer.engine import RunContext, run_job
from model_trainer.engine.distributed import join, leave
from model_trainer.pool.protocol import JobEvent, RunOrder
from model_trainer.pool.standalone import launch_here
from model_trainer_contracts import (
    ConfigEventV1,
    ProgressEventV1,
    SubmitJobV1,
    decode_event,
    encode,
)

MODEL = {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "block_size": 64}


def _job(
    corpus: Path, job_id: str, processes: int, strategy: str, steps: int, batch: int
) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 1,
            "backend": "llama",
            "model": MODEL,
            "data": {"corpus_path": corpus.name},
            "training": {
                "max_steps": steps,
                "batch_size": batch,
                "eval_every": 10_000,
                "eval_batches": 1,
                "device": "cpu",
            },
            "progress": {"every_steps": 1},
            "resources": {"processes": processes, "strategy": strategy},
        }
    )


def _rate(events: list[ProgressEventV1]) -> float:
    return statistics.median(e.tokens_per_sec for e in events if e.step > 5)


def one(corpus: Path, root: Path, steps: int, batch: int) -> tuple[float, int]:
    events: list[ProgressEventV1] = []
    params: list[int] = []

    def emit(event: ConfigEventV1 | ProgressEventV1) -> None:
        if isinstance(event, ProgressEventV1):
            events.append(event)
        else:
            params.append(event.num_parameters)

    job = _job(corpus, "one", 1, "ddp", steps, batch)
    run_job(RunContext(job, corpus.parent, root, threads=2, emit=emit, checkpoint_every=10**6))
    return _rate(events), params[0]


def two(corpus: Path, root: Path, strategy: str, steps: int, batch: int) -> float:
    events: list[ProgressEventV1] = []

    def read(message: object) -> None:
        if isinstance(message, JobEvent):
            event = decode_event(message.data)
            if isinstance(event, ProgressEventV1):
                events.append(event)

    job = _job(corpus, f"two-{strategy}", 2, strategy, steps, batch)
    order = RunOrder(encode(job), 1, "bench", corpus.parent, root, 10**6, 1 << 30, None)
    launch_here(order, strategy, read)
    return _rate(events)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _all_reduce(
    index: int, init: str, numel: int, rounds: int, out: Connection[object, object]
) -> None:
    torch.set_num_threads(1)
    join(Rank(index, 2, "ddp", init))
    buffer = torch.ones(numel)
    dist.all_reduce(buffer)  # warm the connection
    started = time.perf_counter()
    for _ in range(rounds):
        dist.all_reduce(buffer)
    if index == 0:
        out.send((time.perf_counter() - started) / rounds)
    leave()


def all_reduce_s(numel: int, rounds: int = 20) -> float:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    init = f"tcp://127.0.0.1:{free_port()}"
    ranks = [
        context.Process(target=_all_reduce, args=(i, init, numel, rounds, send)) for i in range(2)
    ]
    for rank in ranks:
        rank.start()
    seconds = receive.recv()
    for rank in ranks:
        rank.join()
    assert isinstance(seconds, float)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        data = root / "data"
        data.mkdir()
        corpus = data / args.corpus.name
        corpus.write_bytes(args.corpus.read_bytes())
        rates: dict[str, list[float]] = {"one": [], "ddp": [], "fsdp": []}
        params = 0
        for round_ in range(args.rounds):
            artifacts = root / f"artifacts-{round_}"
            rate, params = one(corpus, artifacts, args.steps, args.batch)
            rates["one"].append(rate)
            for strategy in ("ddp", "fsdp"):
                rates[strategy].append(two(corpus, artifacts, strategy, args.steps, args.batch))
            print(f"round {round_}: {rates}", file=sys.stderr)
        rate_one, rate_ddp, rate_fsdp = (max(rates[k]) for k in ("one", "ddp", "fsdp"))
        reduce_s = all_reduce_s(params)
    step_s = args.batch * MODEL["block_size"] / rate_ddp
    print(
        json.dumps(
            {
                "parameters": params,
                "global_batch": args.batch,
                "rounds": {k: [round(r) for r in v] for k, v in rates.items()},
                "tokens_per_s_1": round(rate_one),
                "tokens_per_s_2_ddp": round(rate_ddp),
                "tokens_per_s_2_fsdp": round(rate_fsdp),
                "scaling_ddp": round(rate_ddp / rate_one, 3),
                "scaling_fsdp": round(rate_fsdp / rate_one, 3),
                "all_reduce_ms": round(reduce_s * 1000, 2),
                "ddp_step_ms": round(step_s * 1000, 2),
                "communication_share_ddp": round(reduce_s / step_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
