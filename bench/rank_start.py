"""How long two ranks take to meet at a gloo barrier: spawned (fresh imports each time) vs
forked from a forkserver that preloaded the engine (the launcher's choice, see the README's
"Distributed jobs"). Two launches per method; the forkserver pays its imports once.

    .venv/bin/python bench/rank_start.py [--method spawn|forkserver]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from model_trainer.core.distributed import Rank
from model_trainer.pool.ranks import PRELOAD


def _rank(
    index: int, init_method: str, started: float, out: multiprocessing.SimpleQueue[float]
) -> None:
    from model_trainer.engine.distributed import barrier, join, leave

    join(Rank(index, 2, "ddp", init_method))
    barrier()
    leave()
    out.put(time.time() - started)


def launch_s(method: str) -> float:
    context = (
        multiprocessing.get_context("forkserver")
        if method == "forkserver"
        else multiprocessing.get_context("spawn")
    )
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    out: multiprocessing.SimpleQueue[float] = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as folder:
        init_method = f"file://{Path(folder) / 'store'}"
        started = time.time()
        ranks = [
            context.Process(target=_rank, args=(i, init_method, started, out)) for i in range(2)
        ]
        for rank in ranks:
            rank.start()
        for rank in ranks:
            rank.join()
        return max(out.get(), out.get())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["spawn", "forkserver"], default="forkserver")
    method = parser.parse_args().method
    first = launch_s(method)
    print(f"{method}: first launch {first:.2f} s", file=sys.stderr)
    second = launch_s(method)
    print(json.dumps({"method": method, "first_s": round(first, 2), "second_s": round(second, 2)}))


if __name__ == "__main__":
    main()
