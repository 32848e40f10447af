"""A small filesystem a test can fill: a tmpfs mounted for the test (skipped where the
machine refuses the mount), and a file that takes every byte of it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``where`` (which must exist), unmounted afterwards."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its filesystem has no byte left; returns it."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12):
            with contextlib.suppress(OSError):  # ENOSPC: then smaller writes, then none
                while True:
                    out.write(b"\0" * size)
    assert shutil.disk_usage(folder).free < 1 << 12
    return filler
