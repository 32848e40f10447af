"""A pretrained model folder under the data root, checked without torch or transformers.

The service refuses a folder it could never load before queueing the job, and the engine
runs the same checks before loading: the folder stays inside the data root and holds
``config.json``, safetensors weights (pickled weights alone are refused:
MODEL_FORMAT_UNSUPPORTED) and the model's ``tokenizer.json``. Parameter counts come from the
safetensors headers, which are JSON: nothing is loaded.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from .layout import TOKENIZER_FILE, resolve_inside

_C = ModelTrainerErrorCode
CONFIG_FILE = "config.json"
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


def inspect_pretrained(data_root: Path, relative: str) -> PretrainedFolder:
    """Check the folder ``relative`` under ``data_root``: PATH_NOT_ALLOWED, MODEL_NOT_FOUND,
    MODEL_FORMAT_UNSUPPORTED (pickled weights only), MODEL_LOAD_FAILED (an unreadable config
    or safetensors header) or TOKENIZER_NOT_FOUND."""
    folder = resolve_inside(data_root, relative, field="path")
    details: dict[str, JsonValue] = {"path": relative}
    if not folder.is_dir():
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND, f"no model folder at {relative!r}", details=details
        )
    root = data_root.resolve()
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for path in files:
        if not path.resolve().is_relative_to(root):
            raise ModelTrainerError(
                _C.PATH_NOT_ALLOWED,
                f"{path.name} in the model folder leads outside the data root",
                details={**details, "file": path.name},
            )
    config = _read_config(folder / CONFIG_FILE, relative)
    weights = tuple(p for p in files if p.suffix == ".safetensors" and p.is_file())
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
            f"the model folder {relative!r} holds no *.safetensors weights",
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
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
            raise ModelTrainerError(
                _C.MODEL_LOAD_FAILED, f"{path.name}: tensor {name!r} has no shape"
            )
        total += math.prod(n for n in shape if isinstance(n, int))
    return total
