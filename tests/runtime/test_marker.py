"""Crash markers: a command being handled when the process died is known at the next start."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_trainer.book.records import Record
from model_trainer.shell.marker import CrashMarkers


def test_a_marker_is_on_disk_only_while_its_command_is_handled(tmp_path: Path) -> None:
    markers = CrashMarkers(tmp_path / "m")
    record = Record("jobs", 2, 41, b"k", b"{}", [])
    with markers.handling(record):
        assert (tmp_path / "m" / "jobs-2").read_text() == "jobs\n2\n41\n"
    assert list((tmp_path / "m").iterdir()) == []
    with pytest.raises(RuntimeError), markers.handling(record):  # the process "dies" here
        raise RuntimeError("segfault")
    successor = CrashMarkers(tmp_path / "m")
    assert successor.load() == {("jobs", 2, 41)}
    assert successor.crashed_on(record)
    assert not successor.crashed_on(Record("jobs", 2, 42, b"k", b"{}", []))
    assert list((tmp_path / "m").iterdir()) == [], "a marker is read once"
