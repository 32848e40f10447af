"""Reading a job's corpus: resolve it inside the data root, read it, check it, digest it.

The digest covers the raw bytes (and the options that change how they are read), so the
token cache can be consulted before anything is decoded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import DataSpec, ModelTrainerError, ModelTrainerErrorCode

from model_trainer.core import storage
from model_trainer.core.layout import resolve_inside, resolved

_C = ModelTrainerErrorCode


@dataclass(frozen=True)
class RawCorpus:
    """The corpus as bytes, one entry per file (``name`` relative to its root), not yet decoded."""

    files: list[tuple[str, bytes]]
    digest: str
    fmt: str
    jsonl_field: str


def utf8(name: str, data: bytes) -> str:
    """A corpus file's text; CORPUS_NOT_DECODABLE (with the byte) when it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelTrainerError(
            _C.CORPUS_NOT_DECODABLE,
            f"{name} is not UTF-8: {exc.reason} at byte {exc.start}",
            details={"file": name, "byte": exc.start},
        ) from None


def corpus_files(spec: DataSpec, data_root: Path) -> list[tuple[str, Path]]:
    """The files a path-based corpus is made of, sorted, each checked to stay inside the root.

    A directory contributes every regular, non-hidden file below it."""
    relative = spec.corpus_path or ""
    target = resolve_inside(data_root, relative)
    if target.is_file():
        return [(target.name, target)]
    if not target.is_dir():
        raise ModelTrainerError(
            _C.CORPUS_NOT_FOUND,
            f"no corpus file or directory at {relative!r}",
            details={"corpus_path": relative},
        )
    found: list[tuple[str, Path]] = []
    for path in sorted(target.rglob("*")):
        name = path.relative_to(target).as_posix()
        if any(part.startswith(".") for part in path.relative_to(target).parts):
            continue
        try:
            real = resolved(path)
        except OSError as exc:  # a symlink loop
            raise ModelTrainerError(
                _C.PATH_NOT_ALLOWED,
                f"{name} in the corpus directory cannot be resolved: {exc.__class__.__name__}",
                details={"corpus_path": relative, "file": name},
            ) from None
        if not real.is_relative_to(data_root.resolve()):
            raise ModelTrainerError(
                _C.PATH_NOT_ALLOWED,
                f"{name} in the corpus directory leads outside the data root",
                details={"corpus_path": relative, "file": name},
            )
        if real.is_file():
            found.append((name, real))
    if not found:
        raise ModelTrainerError(
            _C.CORPUS_EMPTY,
            f"corpus directory {relative!r} holds no files",
            details={"corpus_path": relative},
        )
    return found


def read_corpus(
    spec: DataSpec,
    data_root: Path,
    max_bytes: int,
    *,
    downloads: Path | None = None,
    progress: Callable[[storage.Fetching], None] | None = None,
) -> RawCorpus:
    """Read the corpus bytes; CORPUS_NOT_FOUND, CORPUS_TOO_LARGE or PATH_NOT_ALLOWED.

    An ``s3://`` corpus is fetched into ``downloads`` first (once per object version; see
    :func:`~model_trainer.core.storage.fetch_corpus`) and read from there like a local one:
    the same names, so the same digest and token-cache key as the same files on disk."""
    if storage.is_url(spec.corpus_path) and spec.corpus_path is not None:
        if downloads is None:
            raise ModelTrainerError(
                _C.PATH_NOT_ALLOWED,
                "this runner reads no object storage",
                details={"corpus_path": spec.corpus_path},
            )
        data_root, relative = storage.fetch_corpus(
            spec.corpus_path, downloads, max_bytes, progress=progress
        )
        spec = spec.model_copy(update={"corpus_path": relative})
    if spec.inline_text is not None:
        files = [("<inline>", spec.inline_text.encode())]
    else:
        paths = corpus_files(spec, data_root)
        storage.check_corpus_size(sum(path.stat().st_size for _, path in paths), max_bytes)
        files = [(name, path.read_bytes()) for name, path in paths]
    storage.check_corpus_size(sum(len(data) for _, data in files), max_bytes)
    h = hashlib.sha256(f"{spec.format}\0{spec.jsonl_field}\0".encode())
    for name, data in files:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return RawCorpus(files, h.hexdigest(), spec.format, spec.jsonl_field)


def decode_corpus(raw: RawCorpus) -> str:
    """The corpus text: files (or JSONL records) joined by newlines.

    Raises CORPUS_NOT_DECODABLE (invalid UTF-8), CORPUS_MALFORMED_RECORD (a JSONL line that is
    not an object with a string ``jsonl_field``; details give file and 1-based line) and
    CORPUS_EMPTY (only whitespace)."""
    parts: list[str] = []
    for name, data in raw.files:
        text = utf8(name, data)
        if raw.fmt == "jsonl":
            parts.extend(_records(name, text, raw.jsonl_field))
        else:
            parts.append(text.removeprefix("\ufeff"))
    pieces: list[str] = []
    for part in parts:
        if pieces and not pieces[-1].endswith("\n"):
            pieces.append("\n")
        pieces.append(part)
    corpus = "".join(pieces)
    if not corpus.strip():
        raise ModelTrainerError(_C.CORPUS_EMPTY, "the corpus holds no text")
    return corpus


def _records(name: str, text: str, field: str) -> list[str]:
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: object = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _malformed(name, number, f"not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise _malformed(name, number, "not a JSON object")
        value = record.get(field)
        if not isinstance(value, str):
            raise _malformed(name, number, f"no string field {field!r}")
        found.append(value)
    return found


def _malformed(name: str, line: int, why: str) -> ModelTrainerError:
    return ModelTrainerError(
        _C.CORPUS_MALFORMED_RECORD,
        f"{name} line {line}: {why}",
        details={"file": name, "line": line, "reason": why},
    )
