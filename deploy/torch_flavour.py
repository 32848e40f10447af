"""What the container image installs for each torch flavour (``deploy/Dockerfile``).

uv.lock pins PyPI's torch, whose Linux wheel depends on the CUDA runtime: the ``nvidia-*`` and
``cuda-*`` wheels and ``triton``, about 4 GB installed. That is right for development machines
and for the image's ``cuda`` flavour. The ``cpu`` flavour syncs the lock without torch and
that GPU runtime, then installs the CPU build of the *same* torch version from the
``pytorch-cpu`` index that pyproject.toml declares (explicit, so nothing is locked from it and
``uv lock`` never needs to reach it). The build asks this script, standard library only,
since it runs before the environment exists:

    python3 deploy/torch_flavour.py exclude cpu    # packages `uv sync` must not install
    python3 deploy/torch_flavour.py index-url      # the pytorch-cpu index's URL
    python3 deploy/torch_flavour.py requirement    # torch==<locked version>+cpu
    /app/.venv/bin/python deploy/torch_flavour.py check cpu   # the installed torch is that build
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = ("cpu", "cuda")
CPU_INDEX = "pytorch-cpu"
PROJECT = "model-trainer"
# Where torch's GPU runtime starts: its dependencies with these names, and whatever only
# they need, are left out of the cpu flavour.
_GPU_PREFIXES = ("nvidia-", "cuda-")
_GPU_NAMES = frozenset({"triton"})


def _is_gpu_runtime(name: str) -> bool:
    return name in _GPU_NAMES or name.startswith(_GPU_PREFIXES)


@dataclass(frozen=True)
class _Package:
    dependencies: tuple[tuple[str, tuple[str, ...]], ...]
    optional: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]] = field(default_factory=dict)


def _edges(entries: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(name, extras) of each entry of a lock ``dependencies`` list."""
    edges: list[tuple[str, tuple[str, ...]]] = []
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                extras = entry.get("extra", [])
                names = tuple(str(e) for e in extras) if isinstance(extras, list) else ()
                edges.append((str(entry["name"]), names))
    return tuple(edges)


def _packages(lock: Mapping[str, object]) -> dict[str, _Package]:
    """Every locked package by name (versions merged: reachability is all that matters)."""
    merged: dict[str, tuple[list[tuple[str, tuple[str, ...]]], dict[str, list[object]]]] = {}
    entries = lock.get("package", [])
    assert isinstance(entries, list), "uv.lock has no [[package]] table"
    for entry in entries:
        assert isinstance(entry, dict)
        deps, optional = merged.setdefault(str(entry["name"]), ([], {}))
        deps.extend(_edges(entry.get("dependencies")))
        extras = entry.get("optional-dependencies", {})
        if isinstance(extras, dict):
            for extra, listed in extras.items():
                optional.setdefault(str(extra), []).append(listed)
    return {
        name: _Package(
            tuple(deps),
            {
                extra: tuple(edge for listed in lists for edge in _edges(listed))
                for extra, lists in optional.items()
            },
        )
        for name, (deps, optional) in merged.items()
    }


def _reachable(
    packages: Mapping[str, _Package], roots: Iterable[str], skip: frozenset[tuple[str, str]]
) -> set[str]:
    """Names reachable from ``roots`` through runtime dependencies (and requested extras),
    not following the ``(from, to)`` edges in ``skip``. Markers are ignored: over-reaching
    only keeps a package installed, never drops one that is needed."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(root, ()) for root in roots]
    while todo:
        node = todo.pop()
        name, extras = node
        if node in seen or name not in packages:
            continue
        seen.add(node)
        package = packages[name]
        edges = list(package.dependencies)
        for extra in extras:
            edges.extend(package.optional.get(extra, ()))
        todo.extend(edge for edge in edges if (name, edge[0]) not in skip)
    return {name for name, _ in seen}


def excluded(lock: Mapping[str, object], flavour: str) -> list[str]:
    """Locked packages the image must not install for ``flavour``: for ``cpu``, torch (its
    CPU build replaces it) and the GPU runtime only PyPI's torch needs; for ``cuda``, none."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown torch flavour {flavour!r}; choose one of {FLAVOURS}")
    if flavour == "cuda":
        return []
    packages = _packages(lock)
    assert "torch" in packages, "uv.lock does not lock torch"
    gpu_edges = frozenset(
        ("torch", name) for name, _ in packages["torch"].dependencies if _is_gpu_runtime(name)
    )
    everything = _reachable(packages, [PROJECT], frozenset())
    without_gpu = _reachable(packages, [PROJECT], gpu_edges)
    return sorted({"torch"} | (everything - without_gpu))


def locked_version(lock: Mapping[str, object], name: str) -> str:
    """The one version of ``name`` that uv.lock pins."""
    entries = lock.get("package", [])
    assert isinstance(entries, list)
    versions = {
        str(entry["version"])
        for entry in entries
        if isinstance(entry, dict) and entry.get("name") == name
    }
    if len(versions) != 1:
        raise ValueError(f"uv.lock pins {name} at {sorted(versions) or 'no version'}")
    return versions.pop()


def index_url(pyproject: Mapping[str, object], name: str = CPU_INDEX) -> str:
    """The URL of the ``[[tool.uv.index]]`` called ``name``."""
    tool = pyproject.get("tool", {})
    uv = tool.get("uv", {}) if isinstance(tool, dict) else {}
    indexes = uv.get("index", []) if isinstance(uv, dict) else []
    for index in indexes if isinstance(indexes, list) else []:
        if isinstance(index, dict) and index.get("name") == name:
            return str(index["url"])
    raise ValueError(f"pyproject.toml declares no [[tool.uv.index]] named {name!r}")


def check(flavour: str) -> str | None:
    """Why the importable torch is not the ``flavour`` build, or None when it is."""
    import torch  # the environment's, when run by its interpreter

    if flavour not in FLAVOURS:
        return f"unknown torch flavour {flavour!r}; choose one of {FLAVOURS}"
    cuda = torch.version.cuda
    if (cuda is None) != (flavour == "cpu"):
        return f"torch {torch.__version__} (CUDA {cuda}) is not the {flavour} build"
    return None


def _load(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        return tomllib.load(f)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT, help="where pyproject.toml is")
    sub = parser.add_subparsers(dest="command", required=True)
    exclude = sub.add_parser("exclude", help="locked packages not to install, one a line")
    exclude.add_argument("flavour", choices=FLAVOURS)
    sub.add_parser("index-url", help=f"URL of the {CPU_INDEX} index")
    sub.add_parser("requirement", help="the CPU build of the locked torch")
    checked = sub.add_parser("check", help="fail unless the importable torch is that build")
    checked.add_argument("flavour", choices=FLAVOURS)
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.command == "exclude":
        for name in excluded(_load(root / "uv.lock"), args.flavour):
            print(name)
    elif args.command == "check":
        problem = check(args.flavour)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
    elif args.command == "index-url":
        print(index_url(_load(root / "pyproject.toml")))
    else:
        print(f"torch=={locked_version(_load(root / 'uv.lock'), 'torch')}+cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
