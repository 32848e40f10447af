"""Answers to held-out prompts at the end of a chat or instruction job (``generate``),
published in the completed event: greedy, with transformers' ``generate`` (its key-value
cache) on the trained network, the adapter in place. Bounded: at most ``max_new_tokens``
per answer, an answer ending at a stop token, and every text cut to the event's bound
(a prompt keeps its end, the rest their start)."""

from __future__ import annotations

import torch
from model_trainer_contracts import GenerateSpec, Generation
from model_trainer_contracts.events import MAX_GENERATION_CHARS
from torch import nn
from transformers import GenerationMixin

from model_trainer.engine.backends.pretrained import PretrainedNet
from model_trainer.engine.placement import Placement
from model_trainer.engine.records import HeldOut
from model_trainer.engine.tokenizer import TextTokenizer


@torch.no_grad()
def answer_held_out(
    model: nn.Module,
    held_out: HeldOut,
    spec: GenerateSpec,
    tokenizer: TextTokenizer,
    placement: Placement,
    context: int,
) -> list[Generation]:
    """One greedy answer per held-out prompt; the prompt keeps its last
    ``context - max_new_tokens`` tokens (at least one)."""
    if not isinstance(model, PretrainedNet):  # only the pretrained backend trains records
        raise TypeError(f"cannot generate with {type(model).__name__}")
    hf = model.base()  # peft wraps layers in place: the adapter is in the base's modules
    if not isinstance(hf, GenerationMixin):
        raise TypeError(f"{type(hf).__name__} cannot generate")
    stops = held_out.stop_ids
    keep = max(1, context - spec.max_new_tokens)
    was_training = model.training
    model.eval()
    found: list[Generation] = []
    try:
        for prompt in held_out.prompts:
            ids = placement.to_device(torch.tensor([prompt.ids[-keep:]], dtype=torch.long))
            with placement.autocast():
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=spec.max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    eos_token_id=stops or None,
                    pad_token_id=stops[0] if stops else 0,
                )
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"generate returned {type(out).__name__}")
            new = [int(i) for i in out[0, ids.shape[1] :].tolist()]
            cut = next((at for at, i in enumerate(new) if i in stops), len(new))
            found.append(
                Generation(
                    prompt=prompt.text[-MAX_GENERATION_CHARS:],
                    completion=tokenizer.decode(new[:cut])[:MAX_GENERATION_CHARS],
                    reference=prompt.reference[:MAX_GENERATION_CHARS],
                )
            )
    finally:
        model.train(was_training)
    return found
