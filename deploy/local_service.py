"""The real service (``model-trainer serve``) as a subprocess of a checkout, on a broker.

One harness for the integration tests (``tests/integration``) and the benchmarks
(``bench/dispatch.py``, ``bench/soak_harness.py``): a :class:`Stack` names the topics, group
and folders its service instances share, :class:`ServiceProcess` starts one and talks to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from local_kafka import free_port
from model_trainer_client.settings import KAFKA_ENV_PREFIX, KafkaConnection, connection_from_env

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 60


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class Stack:
    """Topic names, folders and settings shared by the service instances of one test."""

    bootstrap: str
    root: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # The MODEL_TRAINER_KAFKA_* variables of a secured broker (none: PLAINTEXT).
    security: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.artifacts_root.mkdir(parents=True, exist_ok=True)
        (self.data_root / "corpus.txt").write_text(CORPUS)

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def artifacts_root(self) -> Path:
        return self.root / "artifacts"

    @property
    def commands_topic(self) -> str:
        return f"jobs-{self.uid}"

    @property
    def events_topic(self) -> str:
        return f"metrics-{self.uid}"

    @property
    def dead_letter_topic(self) -> str:
        return f"dlq-{self.uid}"

    @property
    def state_topic(self) -> str:
        return f"state-{self.uid}"

    @property
    def group_id(self) -> str:
        return f"group-{self.uid}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "MODEL_TRAINER_BOOTSTRAP_SERVERS": self.bootstrap,
            "MODEL_TRAINER_COMMANDS_TOPIC": self.commands_topic,
            "MODEL_TRAINER_EVENTS_TOPIC": self.events_topic,
            "MODEL_TRAINER_DEAD_LETTER_TOPIC": self.dead_letter_topic,
            "MODEL_TRAINER_STATE_TOPIC": self.state_topic,
            "MODEL_TRAINER_LOGS_TOPIC": f"logs-{self.uid}",
            "MODEL_TRAINER_GROUP_ID": self.group_id,
            "MODEL_TRAINER_DATA_ROOT": str(self.data_root),
            "MODEL_TRAINER_ARTIFACTS_ROOT": str(self.artifacts_root),
            "MODEL_TRAINER_WORKERS": "1",
            "MODEL_TRAINER_THREADS_PER_WORKER": "1",
            "MODEL_TRAINER_LOG_FORMAT": "json",
            "MODEL_TRAINER_SESSION_TIMEOUT_MS": "10000",
            "MODEL_TRAINER_SHUTDOWN_GRACE_S": "20",
            # The jobs here train char_lstm: workers skip importing transformers (seconds of
            # CPU each, on a 2-core CI); tests of other backends name them.
            "MODEL_TRAINER_WORKER_PRELOAD": "char_lstm",
            **{k: v for k, v in self.security.items() if k.startswith(KAFKA_ENV_PREFIX)},
        }
        env.update({f"MODEL_TRAINER_{k.upper()}": v for k, v in overrides.items()})
        return env

    @property
    def connection(self) -> KafkaConnection:
        """How the test's own clients reach the broker, as the service does."""
        return connection_from_env(self.env())

    def job(self, job_id: str, *, steps: int = 30, **extra: object) -> dict[str, object]:
        """A small, real char-level job on the test corpus."""
        spec: dict[str, object] = {
            "type": "trainer.job.submit.v1",
            "job_id": job_id,
            "user_id": 7,
            "backend": "char_lstm",
            "model": {"embedding_dim": 16, "hidden_size": 32, "num_layers": 1, "block_size": 32},
            "data": {"corpus_path": "corpus.txt", "val_fraction": 0.1, "test_fraction": 0.05},
            "training": {"max_steps": steps, "batch_size": 8, "eval_every": 10, "eval_batches": 2},
            "progress": {"every_steps": 2},
            "labels": {"suite": "integration"},
        }
        spec.update(extra)
        return spec


class ServiceProcess:
    """``model-trainer serve`` in a subprocess; its log goes to a file in the stack's root."""

    def __init__(self, stack: Stack, name: str = "svc", **overrides: str) -> None:
        self.stack = stack
        self.name = name
        self.launcher: tuple[str, ...] = ()  # a command to run the service under (setpriv ...)
        self.http_port = free_port()
        self.log_path = stack.root / f"{name}.log"
        self.env = {
            **os.environ,
            **stack.env(http_port=str(self.http_port), **overrides),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.launcher, sys.executable, "-m", "model_trainer", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.stack.root,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                tail = self.tail()
                self.stop()  # never leave a service behind a failed start
                raise TimeoutError(f"service not ready in {timeout_s}s: {tail}")
            time.sleep(0.3)
        return self

    def readyz(self) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, {}

    def ready(self) -> bool:
        return self.readyz()[0] == 200

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            body: bytes = response.read()
            return body.decode()

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return lines

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        pids = [int(pid) for pid in out.stdout.split()]
        # Spawned workers, not multiprocessing's resource tracker.
        return [pid for pid in pids if b"spawn_main" in _cmdline(pid)]

    def kill(self) -> None:
        """SIGKILL the service process (its workers notice and stop on their own)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Leave nothing running: SIGTERM, then SIGKILL of the whole process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # A frozen one (the soak's zombies) would hold SIGTERM until it is continued.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still run."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]
