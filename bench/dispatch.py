"""Dispatch latency and idle footprint of the service, against a real broker.

With a warm pool, submits tiny jobs one after another and measures the time from publishing
each submit to receiving its config event; then the service process's resident memory while
idle. Last line: one JSON object with ``p50_ms``, ``p99_ms``, ``idle_rss_mb``.

    .venv/bin/python bench/dispatch.py --jobs 50 [--bootstrap-servers HOST:PORT] [--secure]

With ``--bootstrap-servers`` the service and the bench's clients connect as the
``MODEL_TRAINER_KAFKA_*`` variables say (SASL, TLS); without it the bench starts a local
broker, secured (SASL_SSL, SCRAM-SHA-512, a CA made for the run) with ``--secure``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from local_kafka import LocalKafka, free_port  # noqa: E402
from local_service import ServiceProcess, Stack  # noqa: E402
from model_trainer_client import CommandSender, EventWatcher  # noqa: E402
from model_trainer_client.settings import KAFKA_ENV_PREFIX  # noqa: E402
from model_trainer_contracts import ConfigEventV1, SubmitJobV1  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def measure(stack: Stack, jobs: int) -> list[float]:
    latencies: list[float] = []
    async with (
        EventWatcher(stack.connection, stack.events_topic) as watcher,
        CommandSender(stack.connection, stack.commands_topic) as sender,
    ):
        for i in range(-3, jobs):  # three unmeasured jobs warm the pool and the token cache
            job = SubmitJobV1.model_validate(stack.job(f"dispatch-{i + 3}", steps=2))
            started = time.perf_counter()
            await sender.send(job)
            while not any(
                isinstance(e, ConfigEventV1) and e.job_id == job.job_id for e in watcher.seen
            ):
                await watcher.poll()
            took = (time.perf_counter() - started) * 1000
            await watcher.until_terminal(job.job_id, timeout_s=120)
            if i >= 0:
                latencies.append(took)
                print(f"job {i + 1}/{jobs}: config after {took:.0f} ms", file=sys.stderr)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--bootstrap-servers", default=None, help="default: a local broker")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle time before RSS")
    parser.add_argument(
        "--secure", action="store_true", help="the local broker listens with SASL_SSL"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        bootstrap = args.bootstrap_servers
        security = {k: v for k, v in os.environ.items() if k.startswith(KAFKA_ENV_PREFIX)}
        if bootstrap is None:
            print("starting a local Kafka broker", file=sys.stderr)
            broker = LocalKafka(workdir=Path(tmp) / "kafka", port=free_port(), secure=args.secure)
            broker.start()
            bootstrap = broker.bootstrap_servers
            security = broker.client_env()
        stack = Stack(bootstrap, Path(tmp) / "stack", security=security)
        service = ServiceProcess(stack, log_level="warning")
        try:
            print("starting the service (warm pool)", file=sys.stderr)
            service.start()
            latencies = asyncio.run(measure(stack, args.jobs))
            time.sleep(args.idle_s)
            assert service.proc is not None
            idle = rss_mb(service.proc.pid)
        finally:
            service.stop()
            if broker is not None:
                broker.stop()
    print(
        json.dumps(
            {
                "jobs": len(latencies),
                "security_protocol": stack.connection.security_protocol,
                "p50_ms": round(percentile(latencies, 0.50), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1),
                "mean_ms": round(statistics.fmean(latencies), 1),
                "max_ms": round(max(latencies), 1),
                "idle_rss_mb": round(idle, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
