"""The kernel-side protections of a worker process, and the host's memory (torch-free).

A worker limits its own heap with ``RLIMIT_DATA``: since Linux 4.7 it bounds every private
writable mapping (``VmData``: brk, anonymous mmap, thread stacks), so an allocation past it
fails at once, inside the job (torch: "can't allocate memory"; Python and numpy:
MemoryError), and the job ends with TRAINING_OOM while the worker lives on. ``RLIMIT_AS``
would not do: it also counts the shared libraries and the address ranges torch and CUDA
reserve without using, and those vary from build to build. The limit is the worker's idle
``VmData`` (torch imported, thread pools started) plus its budget.

glibc returns freed blocks of 1 MiB and more to the kernel at once (a fixed
``M_MMAP_THRESHOLD``; by default the threshold grows up to 32 MiB and freed tensors stay in
a fragmented heap, which made a training step's peak up to 1.7x what it holds), so a job's
peak is close to what it uses and an idle worker returns to its baseline.

And a worker raises its own ``oom_score_adj`` (500), so that when the host runs out of
memory anyway the kernel's OOM killer picks a worker, not the service.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import resource
from collections.abc import Iterable
from pathlib import Path

import psutil

MIB = 1 << 20
WORKER_OOM_SCORE_ADJ = 500
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = MIB
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def host_memory_bytes(cgroup_limits: Iterable[Path] = _CGROUP_LIMITS) -> int:
    """The memory this process may use in all: the host's, or its container's limit (read
    from ``cgroup_limits``; a file that is missing or says ``max`` sets none)."""
    total: int = psutil.virtual_memory().total
    for path in cgroup_limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_worker_memory_mb(workers: int) -> int:
    """A fair share per worker: 80% of :func:`host_memory_bytes`, the rest for the service
    and the host."""
    return max(256, int(host_memory_bytes() * 0.8 / max(1, workers)) // MIB)


def data_size(status_file: Path = Path("/proc/self/status")) -> int:
    """This process's ``VmData`` in bytes (what ``RLIMIT_DATA`` bounds); 0 where unknown."""
    try:
        status = status_file.read_text()
    except OSError:
        return 0
    found = re.search(r"^VmData:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def limit_data(budget_mb: int, status_file: Path = Path("/proc/self/status")) -> int | None:
    """Limit this process's heap to its current size (``VmData`` in ``status_file``) plus
    ``budget_mb``; the limit in bytes, or None where it cannot be set (no ``/proc``, or a
    hard limit below it)."""
    base = data_size(status_file)
    if not base:
        return None
    limit = base + budget_mb * MIB
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and hard < limit:
        return None
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def prefer_oom_kill(
    adj: int = WORKER_OOM_SCORE_ADJ, path: Path = Path("/proc/self/oom_score_adj")
) -> bool:
    """Raise this process's ``oom_score_adj`` (``path``) to ``adj`` (raising needs no
    privilege; a higher one is kept); False where it cannot."""
    try:
        if int(path.read_text()) < adj:
            path.write_text(str(adj))
    except (OSError, ValueError):
        return False
    return True


def c_library(name: str | None = None) -> ctypes.CDLL | None:
    """The C library (or the shared library ``name``); None where it cannot be loaded."""
    try:
        return ctypes.CDLL(name or ctypes.util.find_library("c"))
    except OSError:
        return None


_LIBC = c_library()


def return_freed_memory(libc: ctypes.CDLL | None = _LIBC) -> bool:
    """Make glibc give every freed block of 1 MiB and more back to the kernel at once (see
    the module docstring); False where the C library is not glibc."""
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    done: int = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return done == 1


def release_memory(*, full: bool, libc: ctypes.CDLL | None = _LIBC) -> None:
    """After a job: collect reference cycles and hand free heap pages back (where the C
    library is glibc). A full collection walks all of torch's objects (about 100 ms here):
    the worker runs it only once no next job is waiting, so back-to-back jobs are not
    delayed."""
    gc.collect(2 if full else 1)
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
