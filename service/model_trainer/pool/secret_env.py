"""Workers start without the service's secrets in their environment.

A worker runs a job's training, reads user-supplied files with third-party parsers, and never
talks to Kafka: it has no use for the SASL password, and a worker that is made to misbehave
(or a core dump, or ``/proc/<pid>/environ`` read by the same user) should not hand it out.
Spawned processes copy the parent's C environment at ``exec``, so the secret variables are
taken out of it for just that moment: the service itself read its settings at start.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Every Kafka connection variable goes (the password, and the TLS files' paths with it):
# nothing in a worker connects to Kafka.
SECRET_PREFIXES = ("MODEL_TRAINER_KAFKA_",)
_LOCK = threading.Lock()


def secret_names(environ: Mapping[str, str]) -> list[str]:
    """The variables of ``environ`` a worker must not inherit, in order."""
    return sorted(name for name in environ if name.startswith(SECRET_PREFIXES))


@contextmanager
def without_secrets() -> Iterator[None]:
    """The process environment without :data:`SECRET_PREFIXES` while the block runs (a
    process started in it inherits none of them), restored afterwards."""
    with _LOCK:
        saved = {name: os.environ.pop(name) for name in secret_names(os.environ)}
        try:
            yield
        finally:
            os.environ.update(saved)
