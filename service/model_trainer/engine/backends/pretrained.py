"""``pretrained``: fine-tune a Hugging Face causal LM from a folder under the data root.

Any architecture transformers implements natively loads (``AutoModelForCausalLM``, fp32
master weights, SDPA where the model has it); remote code never runs
(``trust_remote_code=False``) and only safetensors weights are read
(``use_safetensors=True``): a folder of pickled weights is refused before anything is loaded
(:mod:`model_trainer.core.pretrained`). The model's own tokenizer is used, and the artifact is
a loadable folder again: ``save_pretrained`` plus the tokenizer's files as they came.

With an ``adapter`` the base is frozen and a LoRA adapter (peft) trains; the artifact is the
adapter (peft's ``save_pretrained``) and, with ``merge``, the merged model in ``merged/``.
Packed chat and instruction examples pass their position ids, which restart per example:
transformers builds the attention mask from them, so attention stays inside an example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from model_trainer_contracts import (
    AdapterSpec,
    ModelTrainerError,
    ModelTrainerErrorCode,
    PretrainedModel,
)
from pydantic import JsonValue
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from model_trainer.core.capabilities import ModelSpec
from model_trainer.core.finetune import default_targets
from model_trainer.core.pretrained import inspect_pretrained
from model_trainer.engine.backend import Backend
from model_trainer.engine.backends.hf import hf_flops_per_token, save_hf, token_embedding
from model_trainer.engine.tokenizer import TextTokenizer, load_model_tokenizer

if TYPE_CHECKING:  # peft is imported by the jobs that use it: not by a worker's preload
    from peft import PeftModel

_C = ModelTrainerErrorCode
ADAPTER_CONFIG = "adapter_config.json"
MERGED = "merged"  # the artifact's merged full weights, when the adapter asks for them


class PretrainedNet(nn.Module):
    """A transformers causal LM (or a peft model around one, ``adapter`` its spec) whose
    ``forward(x)`` returns logits; ``positions`` restart at each packed example."""

    def __init__(self, hf: PreTrainedModel | PeftModel, adapter: AdapterSpec | None = None) -> None:
        super().__init__()
        self.hf = hf
        self.adapter = adapter

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        logits: Tensor = self.hf(input_ids=x, position_ids=positions, use_cache=False).logits
        return logits

    def base(self) -> PreTrainedModel:
        """The transformers model (with the adapter's layers in it, when there is one)."""
        inner: object = self.hf
        if self.adapter is not None:
            from peft import PeftModel

            if not isinstance(self.hf, PeftModel):
                raise TypeError(f"an adapter without peft: {type(self.hf).__name__}")
            inner = self.hf.get_base_model()
        if not isinstance(inner, PreTrainedModel):
            raise TypeError(f"not a transformers model: {type(inner).__name__}")
        return inner


def load_causal_lm(folder: Path) -> PreTrainedModel:
    """The causal LM of ``folder`` in fp32: MODEL_FORMAT_UNSUPPORTED (an architecture
    transformers does not implement, or not a causal LM), MODEL_LOAD_FAILED (unreadable
    files), MODEL_INCOMPATIBLE (weights missing for the architecture the config names, or of
    another shape: loaded with ``ignore_mismatched_sizes`` so that the refusal can name them,
    where transformers' own error only points at its log)."""
    name = folder.name
    try:
        config = AutoConfig.from_pretrained(
            str(folder), trust_remote_code=False, local_files_only=True
        )
    except (ValueError, KeyError) as exc:
        raise ModelTrainerError(
            _C.MODEL_FORMAT_UNSUPPORTED,
            f"transformers does not implement the architecture of {name!r} natively: {exc}",
            details={"path": name},
        ) from None
    except OSError as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"cannot read the config of {name!r}: {exc}"
        ) from None
    config.use_cache = False
    try:
        loaded: object = AutoModelForCausalLM.from_pretrained(
            str(folder),
            config=config,
            trust_remote_code=False,
            use_safetensors=True,
            local_files_only=True,
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except ValueError as exc:
        raise ModelTrainerError(
            _C.MODEL_FORMAT_UNSUPPORTED,
            f"{name!r} is not a causal language model transformers can load: {exc}",
            details={"path": name, "model_type": str(config.model_type)},
        ) from None
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"cannot load the weights of {name!r}: {exc}"
        ) from None
    # With output_loading_info transformers returns (model, info): the match narrows the types.
    match loaded:
        case (PreTrainedModel() as model, dict() as info):
            pass
        case _:
            raise TypeError(f"loading {name!r} returned {type(loaded).__name__}")
    missing = sorted(str(k) for k in info.get("missing_keys") or [])
    mismatched = sorted(_mismatch(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ModelTrainerError(
            _C.MODEL_INCOMPATIBLE,
            f"the weights of {name!r} do not fit its config",
            details={
                "missing": list[JsonValue](missing[:20]),
                "shape": list[JsonValue](mismatched[:20]),
            },
        )
    return model


def _mismatch(entry: object) -> str:
    """A weight whose shape in the file differs from the one its config gives: transformers
    reports ``(key, file shape, model shape)``."""
    match entry:
        case (str() as key, torch.Size() as saved, torch.Size() as wanted):
            return f"{key}: {list(saved)} in the file, {list(wanted)} by the config"
        case _:
            return str(entry)


def _spec(spec: ModelSpec) -> PretrainedModel:
    if not isinstance(spec, PretrainedModel):
        raise TypeError(f"pretrained cannot build {type(spec).__name__}")
    return spec


def _net(model: nn.Module) -> PretrainedNet:
    if not isinstance(model, PretrainedNet):
        raise TypeError(f"pretrained cannot handle {type(model).__name__}")
    return model


class PretrainedBackend(Backend):
    name: ClassVar[str] = "pretrained"
    family: ClassVar[str] = "pretrained"

    def build(self, spec: ModelSpec, vocab_size: int) -> nn.Module:
        raise TypeError("a pretrained model is loaded from its folder (create), not built")

    def create(self, spec: ModelSpec, vocab_size: int, data_root: Path) -> nn.Module:
        """The folder's model, checked against the tokenizer and the window, embeddings
        frozen when asked."""
        model = _spec(spec)
        folder = inspect_pretrained(data_root, model.path)
        folder.check_window(model.block_size)
        hf = load_causal_lm(folder.path)
        embedding = token_embedding(hf)
        rows = embedding.num_embeddings
        if vocab_size > rows:
            raise ModelTrainerError(
                _C.MODEL_INCOMPATIBLE,
                f"the tokenizer has {vocab_size} tokens; the model embeds {rows}",
                details={"vocab_size": vocab_size, "embedding_rows": rows},
            )
        if model.freeze_embeddings:
            embedding.weight.requires_grad_(False)
        return PretrainedNet(hf)

    def supplied_tokenizer(self, spec: ModelSpec, data_root: Path) -> TextTokenizer | None:
        folder = inspect_pretrained(data_root, _spec(spec).path)
        return load_model_tokenizer(folder.path)

    def attach_adapter(self, model: nn.Module, adapter: AdapterSpec) -> nn.Module:
        """A LoRA adapter (peft) on the folder's model; every base weight frozen."""
        from peft import LoraConfig, PeftModel, get_peft_model

        net = _net(model)
        hf = net.hf
        if net.adapter is not None or isinstance(hf, PeftModel):
            raise TypeError("the model already has an adapter")
        model_type = str(getattr(hf.config, "model_type", ""))
        targets = adapter.target_modules or default_targets(model_type)
        config = LoraConfig(
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=None if targets is None else list(targets),
            fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
            task_type="CAUSAL_LM",
        )
        try:
            peft_model = get_peft_model(hf, config)
        except ValueError as exc:  # peft: no such module, or none it can wrap
            raise ModelTrainerError(
                _C.MODEL_INCOMPATIBLE,
                f"the adapter does not fit the model: {exc}",
                details={"target_modules": list[JsonValue](list(targets or []))},
            ) from None
        if not isinstance(peft_model, PeftModel):
            raise TypeError(f"peft returned {type(peft_model).__name__}")
        return PretrainedNet(peft_model, adapter)

    def packed_loss(self, model: nn.Module, x: Tensor, y: Tensor, positions: Tensor) -> Tensor:
        logits = _net(model)(x, positions)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def load_artifact(self, spec: ModelSpec, vocab_size: int, artifact_dir: Path) -> nn.Module:
        """The artifact's model: its full weights; for an adapter, the merged weights when
        written, else the base folder it was trained on with the adapter over it."""
        if not (artifact_dir / ADAPTER_CONFIG).is_file():
            return PretrainedNet(load_causal_lm(artifact_dir))
        if (artifact_dir / MERGED).is_dir():
            return PretrainedNet(load_causal_lm(artifact_dir / MERGED))
        from peft import PeftModel

        base = load_causal_lm(_adapter_base(artifact_dir))
        try:
            tuned = PeftModel.from_pretrained(base, str(artifact_dir))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelTrainerError(
                _C.MODEL_LOAD_FAILED, f"cannot load the adapter of {artifact_dir.name!r}: {exc}"
            ) from None
        return PretrainedNet(tuned, AdapterSpec())  # marks the peft model; never saved again

    def save_weights(self, model: nn.Module, out_dir: Path) -> None:
        """The full model; or the adapter (``adapter_model.safetensors``,
        ``adapter_config.json``) and, with ``merge``, the merged model in ``merged/``."""
        net = _net(model)
        if net.adapter is None:
            save_hf(net.base(), out_dir)
            return
        from peft import PeftModel

        if not isinstance(net.hf, PeftModel):
            raise TypeError(f"an adapter without peft: {type(net.hf).__name__}")
        net.hf.save_pretrained(str(out_dir))
        if net.adapter.merge:
            # In place: training is over, and the adapter is already written.
            merged: PreTrainedModel = net.hf.merge_and_unload()
            save_hf(merged, out_dir / MERGED)

    def load_weights(self, model: nn.Module, artifact_dir: Path) -> None:
        raise ModelTrainerError(
            _C.UNSUPPORTED_BACKEND, "a pretrained model starts from its folder, not init_from"
        )

    def flops_per_token(self, model: nn.Module, context: int) -> float:
        return hf_flops_per_token(_net(model).base(), context)


def _adapter_base(artifact_dir: Path) -> Path:
    """The base model folder an adapter names (``base_model_name_or_path``, absolute)."""
    try:
        config: JsonValue = json.loads((artifact_dir / ADAPTER_CONFIG).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelTrainerError(
            _C.MODEL_LOAD_FAILED, f"cannot read {ADAPTER_CONFIG}: {exc}"
        ) from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not Path(base).is_dir():
        raise ModelTrainerError(
            _C.MODEL_NOT_FOUND,
            f"the adapter's base model folder {base!r} is not there",
            details={"base": str(base)},
        )
    return Path(base)
