"""Fine-tuning checks made without torch: adapters, chat and instruction data.

At acceptance: an adapter or a chat/instruction format only on the ``pretrained`` backend
(UNSUPPORTED_BACKEND); QLoRA refused (UNSUPPORTED_BACKEND: its 4-bit base needs bitsandbytes
and a CUDA GPU, and this service does not build one); chat data only from a model folder whose
tokenizer files carry a chat template (CHAT_TEMPLATE_NOT_FOUND).

For the memory estimate: how many values a LoRA adapter adds, from the safetensors headers of
the base folder (each wrapped ``[out, in]`` matrix gains ``r * (in + out)``), with peft's
default target modules per architecture when the job names none.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from model_trainer_contracts import (
    AdapterSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
    SubmitJobV1,
)
from pydantic import JsonValue

from .pretrained import PretrainedFolder, inspect_pretrained, safetensors_header

_C = ModelTrainerErrorCode
RECORD_FORMATS = ("chat", "instruction")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
TOKENIZER_CONFIG = "tokenizer_config.json"
# peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the architectures we test,
# copied so that acceptance needs no torch (a test checks the copy against peft's table).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}


def check_finetune(job: SubmitJobV1, data_root: Path | None) -> None:
    """Refuse an adapter or record format the job's backend cannot use, QLoRA, and chat
    data for a model folder without a chat template."""
    fmt = job.data.format
    if job.backend != "pretrained" and (job.adapter is not None or fmt in RECORD_FORMATS):
        what = "an adapter" if job.adapter is not None else f"{fmt} data"
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            f"backend {job.backend!r} cannot train {what}: use the pretrained backend",
            details={"backend": job.backend},
        )
    if job.adapter is not None and job.adapter.kind == "qlora":
        missing = [] if importlib.util.find_spec("bitsandbytes") else ["bitsandbytes"]
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND,
            "QLoRA (a 4-bit base) needs bitsandbytes and a CUDA GPU, and this service does not "
            "build 4-bit models: use kind lora",
            details={"adapter": "qlora", "missing": list[JsonValue]([*missing, "4-bit loading"])},
        )
    if fmt == "chat" and data_root is not None and isinstance(job.model, PretrainedModel):
        folder = inspect_pretrained(data_root, job.model.path)
        if not has_chat_template(folder.path):
            raise ModelTrainerError(
                _C.CHAT_TEMPLATE_NOT_FOUND,
                f"chat data needs a chat template; the model folder {job.model.path!r} has "
                f"none (no chat_template in {TOKENIZER_CONFIG}, no {' or '.join(TEMPLATE_FILES)})",
                details={"path": job.model.path},
            )


def has_chat_template(folder: Path) -> bool:
    if any((folder / name).is_file() for name in TEMPLATE_FILES):
        return True
    try:
        config: JsonValue = json.loads((folder / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    template = config.get("chat_template") if isinstance(config, dict) else None
    return bool(template)


def default_targets(model_type: str | None) -> tuple[str, ...] | None:
    return DEFAULT_TARGETS.get(model_type or "")


def trainable_parameters(job: SubmitJobV1, data_root: Path) -> tuple[int, int] | None:
    """``(all, trainable)`` values of a pretrained job's model: every weight of its folder,
    and what trains (the adapter's values with one; else every weight). None for other
    backends."""
    if not isinstance(job.model, PretrainedModel):
        return None
    folder = inspect_pretrained(data_root, job.model.path)
    if job.adapter is None:
        return folder.parameters, folder.parameters
    lora = lora_parameters(folder, job.adapter)
    return folder.parameters + lora, lora


def lora_parameters(folder: PretrainedFolder, adapter: AdapterSpec) -> int:
    """The values a LoRA adapter adds to the folder's model: ``r * (in + out)`` per wrapped
    matrix (a weight named ``<target>.weight`` or ``<...>.<target>.weight``, as peft matches
    a list of names)."""
    targets = adapter.target_modules or list(default_targets(folder.model_type) or ())
    total = 0
    for path in folder.weights:
        for name, shape in _shapes(path):
            if len(shape) != 2 or not name.endswith(".weight"):
                continue
            module = name.removesuffix(".weight")
            if any(module == t or module.endswith("." + t) for t in targets):
                total += adapter.r * (shape[0] + shape[1])
    return total


def _shapes(path: Path) -> list[tuple[str, list[int]]]:
    """Tensor names and shapes from a safetensors header (already checked readable by
    :func:`~.pretrained.inspect_pretrained`)."""
    found: list[tuple[str, list[int]]] = []
    for name, entry in safetensors_header(path).items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list):
            found.append((name, [n for n in shape if isinstance(n, int)]))
    return found
