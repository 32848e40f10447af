"""The deep tests' table (tests/deep.py) names real tests, and each story stays in the gate."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.deep import DEEP, is_deep

ROOT = Path(__file__).resolve().parent.parent


def _tests_of(path: str) -> list[str]:
    """The test functions of a file, and the test classes it names by assignment."""
    names: list[str] = []
    for node in ast.parse((ROOT / path).read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [target.id for target in node.targets if isinstance(target, ast.Name)]
    return [name for name in names if name.startswith("test_")]


def _exists(nodeid: str) -> bool:
    path, _, name = nodeid.partition("::")
    if not (ROOT / path).is_file():
        return False
    return not name or name.split("[", 1)[0] in _tests_of(path)


def test_every_deep_test_and_every_gate_test_it_names_exists() -> None:
    missing = [test for test in DEEP if not _exists(test)]
    missing += [gate for tests in DEEP.values() for gate in tests if not _exists(gate)]
    assert missing == []


def test_every_deep_story_is_told_in_the_gate_by_a_test_that_is_not_deep() -> None:
    untold = [test for test, gate in DEEP.items() if not gate]
    deep_stand_ins = [g for gate in DEEP.values() for g in gate if is_deep(g)]
    assert untold == []
    assert deep_stand_ins == []
