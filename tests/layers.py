"""The suite's layers, and the check that keeps ``make test-fast`` free of servers.

A test's layer says what it proves and what it costs: ``in-process`` (the book, the
two-book world, contracts, core, the client's views, the CLI: no server, seconds),
``world`` (the shell, a real ``TrainerService``, in the in-memory Kafka of ``tests/world``:
seconds), ``engine`` (real tiny trainings in the test's own process), ``S3 server`` (a real
SeaweedFS), ``real broker`` (a real Kafka, and most start ``model-trainer serve``).
The two server layers carry a marker (``s3``, ``kafka``) that the fast suite deselects; a
test that uses a server fixture, or starts a server itself, without its marker fails.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pytest

Server = TypeVar("Server")

LAYER = "layer"  # the user property's name
LAYERS = ("in-process", "world", "engine", "S3 server", "real broker")
# The session fixtures that start a server, and the marker a test using one carries.
SERVER_FIXTURES = {
    "kafka_bootstrap": "kafka",
    "local_broker": "kafka",
    "secure_kafka": "kafka",
    "local_s3": "s3",
}
_ENGINE = Path(__file__).resolve().parent / "engine"
_WORLD = Path(__file__).resolve().parent / "world"
_running: list[pytest.Item] = []  # the test whose setup or call runs now


def layer_of(item: pytest.Item) -> str:
    if item.get_closest_marker("kafka") is not None:
        return "real broker"
    if item.get_closest_marker("s3") is not None:
        return "S3 server"
    if _ENGINE in item.path.resolve().parents:
        return "engine"
    if _WORLD in item.path.resolve().parents:
        return "world"
    return "in-process"


# Layers from the costliest test to the cheapest: what a test's file is scheduled by.
COST_ORDER = ("real broker", "S3 server", "slow", "engine", "world", "in-process")


def cost_rank(item: pytest.Item) -> int:
    layer = layer_of(item)
    if layer in ("engine", "in-process") and item.get_closest_marker("slow") is not None:
        layer = "slow"
    return COST_ORDER.index(layer)


def server_markers_missing(item: pytest.Item) -> list[str]:
    """The markers ``item`` lacks for the server fixtures it uses; it is now the running test."""
    _running[:] = [item]
    fixtures = getattr(item, "fixturenames", ())
    wanted = {marker for name, marker in SERVER_FIXTURES.items() if name in fixtures}
    return sorted(marker for marker in wanted if item.get_closest_marker(marker) is None)


def guard_start(start: Callable[[Server], None], marker: str) -> Callable[[Server], None]:
    """``start`` of a server class, refused to a running test without ``marker``."""

    def guarded(server: Server) -> None:
        if _running and _running[0].get_closest_marker(marker) is None:
            pytest.fail(
                f"{_running[0].nodeid} starts a {type(server).__name__} without the "
                f"'{marker}' marker",
                pytrace=False,
            )
        start(server)

    return guarded


def count_layers(reports: Iterable[pytest.TestReport]) -> list[str]:
    """One line a layer: its tests by outcome, each test counted once (its worst phase)."""
    outcome_of: dict[str, tuple[str, str]] = {}
    for report in reports:
        layers = [str(value) for name, value in report.user_properties if name == LAYER]
        if not layers:
            continue
        outcome: str = "error" if report.when != "call" and report.failed else report.outcome
        kept = outcome_of.get(report.nodeid)
        if kept is None or kept[1] == "passed":
            outcome_of[report.nodeid] = (layers[0], outcome)
    if not outcome_of:
        return []  # nothing ran (--collect-only)
    by_layer: dict[str, Counter[str]] = {}
    for layer, outcome in outcome_of.values():
        by_layer.setdefault(layer, Counter())[outcome] += 1
    lines = []
    for layer in sorted(by_layer, key=lambda name: LAYERS.index(name) if name in LAYERS else 99):
        counted = by_layer[layer]
        said = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counted.items()))
        lines.append(f"{layer:12} {sum(counted.values()):4} tests ({said})")
    total = sum(sum(counted.values()) for counted in by_layer.values())
    lines.append(f"{'total':12} {total:4} tests")
    return lines


def examples(full: int) -> int:
    """How many examples a property test draws: ``full`` in ``make test``, a tenth of it in
    ``make test-fast`` (``TEST_EXAMPLES_DIVISOR=10``), so the fast suite still walks every
    state machine without costing a minute of it."""
    return max(1, full // int(os.environ.get("TEST_EXAMPLES_DIVISOR", "1")))
