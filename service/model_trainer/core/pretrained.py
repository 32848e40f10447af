"""A pretrained model folder under the data root, checked without torch or transformers.

The service refuses a folder it could never load before queueing the job, and the engine
runs the same checks again right before it loads: the folder stays inside the data root and
holds ``config.json``, safetensors weights (pickled weights alone are refused:
MODEL_FORMAT_UNSUPPORTED) and the model's ``tokenizer.json``. Parameter counts come from the
safetensors headers, which are JSON: nothing is loaded.

The folder is also a boundary: transformers joins the names an index's ``weight_map`` (or
the config's ``transformers_weights``) gives onto the folder without normalising them, so a
folder could otherwise make a worker read, and train on, any file the worker can read (another
user's artifact). Every file a load opens (each entry of the folder, which covers the config,
the tokenizer's files and symlinks, and each weights file the index names) must resolve inside
the folder: else PATH_NOT_ALLOWED, before a byte of it is read. The weights counted are the
ones transformers will load, in its order of preference, not every ``*.safetensors`` present.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from .layout import TOKENIZER_FILE, resolve_inside, resolved
from .remote_folders import local_folder
from .storage import is_url

_C = ModelTrainerErrorCode
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
INDEX_SUFFIX = ".safetensors.index.json"
# The config key that makes transformers load a named weights file (or index) instead.
EXPLICIT_WEIGHTS_KEY = "transformers_weights"
# Formats torch.load would unpickle: code could run on load, so they are never read.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass(frozen=True)
class PretrainedFolder:
    """A model folder that passed the checks."""

    path: Path
    config: dict[str, JsonValue]
    weights: tuple[Path, ...]
    parameters: int

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None

    @property
    def max_positions(self) -> int | None:
        """The longest window the model's positions allow, when its config says."""
        for key in _POSITION_KEYS:
            value = self.config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def check_window(self, block_size: int) -> None:
        """INVALID_MODEL_SIZE when ``block_size`` is longer than the model's positions: the
        service refuses the job before queueing it, the engine again before it loads."""
        limit = self.max_positions
        if limit is not None and block_size > limit:
            raise ModelTrainerError(
                _C.INVALID_MODEL_SIZE,
                f"block_size {block_size} exceeds the model's {limit} positions",
                details={"block_size": block_size, "max_positions": limit},
            )


def inspect_pretrained(data_root: Path, relative: str) -> PretrainedFolder:
    """Check the folder ``relative`` under ``data_root``, or at an ``s3://`` URL (its local
    copy, :mod:`.remote_folders`): PATH_NOT_ALLOWED (the folder leaves the data root, or a
    file a load would open leaves the folder), MODEL_NOT_FOUND, MODEL_FORMAT_UNSUPPORTED
    (pickled weights only), MODEL_LOAD_FAILED (an unreadable config or safetensors header) or
    TOKENIZER_NOT_FOUND; STORAGE_ACCESS_DENIED or STORAGE_UNAVAILABLE for a URL."""
    if is_url(relative):
        folder = local_folder(
            relative, field="path", missing=_C.MODEL_NOT_FOUND, placeholders=PICKLE_SUFFIXES
        )
    else:
        folder = resolve_inside(data_root, relative, field="path")
    details: dict[str, JsonValue] = {"path": relative}
    if not folder.is_dir():
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND, f"no model folder at {relative!r}", details=details
        )
    files = sorted(folder.iterdir())
    for path in files:
        _check_inside(folder, path.name, relative)
    config = _read_config(folder / CONFIG_FILE, relative)
    weights = _weight_files(folder, config, relative)
    if not weights:
        pickled = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise ModelTrainerError(
                _C.MODEL_FORMAT_UNSUPPORTED,
                f"the model folder {relative!r} holds pickled weights only "
                f"({', '.join(pickled[:5])}); convert them to safetensors",
                details={**details, "files": list[JsonValue](pickled[:20])},
            )
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND,
            f"the model folder {relative!r} holds neither {WEIGHTS_FILE} nor {INDEX_FILE}",
            details=details,
        )
    if not (folder / TOKENIZER_FILE).is_file():
        raise ModelTrainerError(
            _C.TOKENIZER_NOT_FOUND,
            f"the model folder {relative!r} has no {TOKENIZER_FILE}",
            details=details,
        )
    parameters = sum(safetensors_parameters(path) for path in weights)
    return PretrainedFolder(folder, config, weights, parameters)


def confined_folder(root: Path, name: str, *, field: str) -> Path:
    """``root / name`` resolved, inside ``root``, every entry of it resolving inside it:
    PATH_NOT_ALLOWED else. An earlier job's artifact is checked so before an ``init_from``
    or a ``kind: job`` tokenizer reads it; a missing folder is left to the caller. An
    ``s3://`` URL (an artifact in object storage) is its local copy, checked the same way."""
    if is_url(name):
        folder = local_folder(
            name, field=field, missing=_C.MODEL_NOT_FOUND, placeholders=PICKLE_SUFFIXES
        )
    else:
        folder = resolve_inside(root, name, field=field)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            _check_inside(folder, path.name, name)
    return folder


def _check_inside(folder: Path, name: str, relative: str) -> Path:
    """``folder / name`` with symlinks resolved; PATH_NOT_ALLOWED when it is absolute or
    leads out of ``folder`` or cannot be resolved (``folder`` is already resolved)."""
    try:
        target = resolved(folder / name)
    except OSError as exc:  # a symlink loop
        raise ModelTrainerError(
            _C.PATH_NOT_ALLOWED,
            f"{name!r} in the model folder {relative!r} cannot be resolved: {type(exc).__name__}",
            details={"path": relative, "file": name},
        ) from None
    if Path(name).is_absolute() or not target.is_relative_to(folder) or target == folder:
        raise ModelTrainerError(
            _C.PATH_NOT_ALLOWED,
            f"{name!r} in the model folder {relative!r} leads outside the folder",
            details={"path": relative, "file": name},
        )
    return target


def _weight_files(folder: Path, config: dict[str, JsonValue], relative: str) -> tuple[Path, ...]:
    """The safetensors files transformers will open, each checked inside ``folder``; empty
    when the folder has none of the names it looks for."""
    explicit = config.get(EXPLICIT_WEIGHTS_KEY)
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.endswith((".safetensors", INDEX_SUFFIX)):
            raise ModelTrainerError(
                _C.MODEL_FORMAT_UNSUPPORTED,
                f"{EXPLICIT_WEIGHTS_KEY} in the config of {relative!r} names no safetensors file",
                details={"path": relative},
            )
        named = _check_inside(folder, explicit, relative)
        if not named.is_file():
            raise ModelTrainerError(
                _C.MODEL_NOT_FOUND,
                f"the model folder {relative!r} has no {explicit!r}",
                details={"path": relative, "file": explicit},
            )
        return _shards(folder, named, relative) if explicit.endswith(INDEX_SUFFIX) else (named,)
    if (folder / WEIGHTS_FILE).is_file():
        return (folder / WEIGHTS_FILE,)
    if (folder / INDEX_FILE).is_file():
        return _shards(folder, folder / INDEX_FILE, relative)
    return ()


def _shards(folder: Path, index: Path, relative: str) -> tuple[Path, ...]:
    """The files a safetensors index's ``weight_map`` names, each once, checked inside
    ``folder`` before any is opened."""
    try:
        parsed: JsonValue = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"cannot read {index.name} of {relative!r}: {exc}"
        ) from None
    weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"{index.name} of {relative!r} has no weight_map"
        )
    names: list[str] = []
    for value in weight_map.values():
        if not isinstance(value, str):
            raise ModelTrainerError(
                _C.MODEL_LOAD_FAILED, f"{index.name} of {relative!r} maps a tensor to no file"
            )
        if value not in names:
            names.append(value)
    shards = tuple(_check_inside(folder, name, relative) for name in names)
    for name, shard in zip(names, shards, strict=True):
        if not shard.is_file():
            raise ModelTrainerError(
                _C.MODEL_NOT_FOUND,
                f"the shard {name!r} of {relative!r} is missing",
                details={"path": relative, "file": name},
            )
    return shards


def _read_config(path: Path, relative: str) -> dict[str, JsonValue]:
    if not path.is_file():
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND,
            f"the model folder {relative!r} has no {CONFIG_FILE}",
            details={"path": relative},
        )
    try:
        parsed: JsonValue = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"cannot read {CONFIG_FILE} of {relative!r}: {exc}"
        ) from None
    if not isinstance(parsed, dict):
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"{CONFIG_FILE} of {relative!r} is not a JSON object"
        )
    return parsed


def safetensors_parameters(path: Path) -> int:
    """The number of values in a safetensors file, from its JSON header alone."""
    total = 0
    for name, entry in safetensors_header(path).items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
            raise ModelTrainerError(
                _C.MODEL_LOAD_FAILED, f"{path.name}: tensor {name!r} has no shape"
            )
        total += math.prod(n for n in shape if isinstance(n, int))
    return total


def safetensors_header(path: Path) -> dict[str, JsonValue]:
    """The JSON header of a safetensors file: MODEL_LOAD_FAILED when it has none."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than its header length")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER_BYTES:
                raise ValueError("header too large")
            header: JsonValue = json.loads(f.read(size))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"{path.name} is not a readable safetensors file: {exc}"
        ) from None
    if not isinstance(header, dict):
        raise ModelTrainerError(_C.MODEL_LOAD_FAILED, f"{path.name}: malformed header")
    return header
