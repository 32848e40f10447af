"""Measure what jobs really take, as a pool worker would run them: ``python -m
tests.engine.memory_probe PLAN.json OUT.jsonl``.

The process starts as a worker does (glibc told to return freed blocks, torch, the engine and
its backends imported), then forks one child per entry of the plan, before any torch operation,
so every child starts from the same idle worker. A child warms up and raises its OOM score as a
worker does (:func:`model_trainer.pool.worker.guard_memory`), takes its baseline (RSS and
``VmData``), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs its jobs
with :func:`model_trainer.engine.run_job` while a thread samples ``VmData``, and writes one
JSON line per job: the peak RSS above the baseline, the peak ``VmData`` above it (what
``RLIMIT_DATA`` counts), and the outcome. With ``limit_mb`` the child first limits its heap to
its baseline plus that much (:func:`model_trainer.core.limits.limit_data`), as a worker with that
budget does.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from model_trainer.core.limits import MIB, data_size, limit_data, return_freed_memory

return_freed_memory()

import torch  # noqa: E402  (after the allocator is set, as in a worker)
from model_trainer.engine import RunContext, run_job  # noqa: E402
from model_trainer.engine.registry import BACKENDS, preload  # noqa: E402
from model_trainer.pool.protocol import WorkerMemory  # noqa: E402
from model_trainer.pool.worker import guard_memory  # noqa: E402
from model_trainer_contracts import ModelTrainerError, SubmitJobV1  # noqa: E402
from pydantic import JsonValue  # noqa: E402

preload(BACKENDS)  # as a worker does by default, before its memory is guarded


def _status_kb(key: str) -> int:
    found = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(found.group(1)) if found else 0


class _DataPeak:
    """The largest ``VmData`` seen since :meth:`start`, sampled every 2 ms."""

    def __init__(self) -> None:
        self.peak = data_size()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, data_size())
            time.sleep(0.002)

    def start(self) -> _DataPeak:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, data_size())


def run_one(job: SubmitJobV1, data_root: Path, artifacts_root: Path) -> dict[str, JsonValue]:
    gc.collect()
    base_rss, base_data = _status_kb("VmRSS") * 1024, data_size()
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
    sampler = _DataPeak().start()
    started = time.monotonic()
    outcome: dict[str, JsonValue] = {"job_id": job.job_id}
    try:
        done = run_job(
            RunContext(job=job, data_root=data_root, artifacts_root=artifacts_root, threads=1)
        )
        outcome["code"] = None
        outcome["steps"] = done.steps
    except ModelTrainerError as exc:
        outcome["code"] = str(exc.code)
        outcome["stage"] = exc.stage
        outcome["message"] = exc.message[:300]
    data_peak = sampler.stop()
    outcome["seconds"] = round(time.monotonic() - started, 2)
    outcome["baseline_rss_mb"] = round(base_rss / MIB, 1)
    outcome["rss_mb"] = round((_status_kb("VmHWM") * 1024 - base_rss) / MIB, 1)
    outcome["data_mb"] = round((data_peak - base_data) / MIB, 1)
    return outcome


def child(entry: dict[str, JsonValue], out: Path) -> None:
    torch.set_num_threads(1)
    guard_memory(WorkerMemory(), cuda=False)
    limit = entry.get("limit_mb")
    if isinstance(limit, int):
        assert limit_data(limit) is not None
    roots = entry["roots"]
    jobs = entry["jobs"]
    assert isinstance(roots, list)
    assert isinstance(jobs, list)
    for root, spec in zip(roots, jobs, strict=True):
        job = SubmitJobV1.model_validate(spec)
        base = Path(str(root))
        outcome = run_one(job, base / "data", base / "artifacts")
        with out.open("a") as sink:
            sink.write(json.dumps(outcome) + "\n")


def main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    out = Path(out_path)
    for entry in plan:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(entry, out)
            except BaseException as exc:  # reported, so the test shows why
                with out.open("a") as sink:
                    sink.write(json.dumps({"crash": repr(exc)[:500]}) + "\n")
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status:
            with out.open("a") as sink:
                sink.write(json.dumps({"exit_status": status}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
