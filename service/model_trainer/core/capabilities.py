"""What each backend can do, and the arithmetic of its model shapes, without building one.

An explicit table over the closed ``BackendName`` set: the service checks jobs against it at
acceptance (no torch), and each engine backend reads its own row. :func:`footprint` is the one
function per backend that :mod:`.memory` needs to estimate a job's peak memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_trainer_contracts import CharLstmModel, Gpt2Model, LlamaModel, PretrainedModel

ModelSpec = CharLstmModel | Gpt2Model | LlamaModel | PretrainedModel


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports. ``max_parameters`` bounds the non-embedding parameter count
    (for ``pretrained``, every parameter of the folder's weights). ``can_compile``: whether
    ``torch.compile`` may be applied (``training.compile``). ``strategies``: how a job of
    several processes may train it (``ddp``, ``fsdp``); empty: one process only."""

    tokenizers: frozenset[str]
    devices: frozenset[str]
    precisions: frozenset[str]
    max_parameters: int
    max_context: int
    can_resume: bool
    can_finetune: bool
    can_compile: bool = False
    strategies: frozenset[str] = frozenset()


_ALL_PRECISIONS = frozenset({"fp32", "fp16", "bf16"})
_BOTH_DEVICES = frozenset({"cpu", "cuda"})
# The backends whose 1-vs-2-process equivalence is tested (tests/engine/test_engine_distributed.py).
_DISTRIBUTED = frozenset({"ddp", "fsdp"})

CAPABILITIES: dict[str, Capabilities] = {
    "char_lstm": Capabilities(
        tokenizers=frozenset({"char", "job"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=200_000_000,
        max_context=4096,
        can_resume=True,
        can_finetune=True,
    ),
    "gpt2": Capabilities(
        tokenizers=frozenset({"char", "bpe", "job"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=1_000_000_000,
        max_context=8192,
        can_resume=True,
        can_finetune=True,
        can_compile=True,
        strategies=_DISTRIBUTED,
    ),
    "llama": Capabilities(
        tokenizers=frozenset({"char", "bpe", "job"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=2_000_000_000,
        max_context=32_768,
        can_resume=True,
        can_finetune=True,
        can_compile=True,
        strategies=_DISTRIBUTED,
    ),
    # Fine-tunes the folder it names: that folder is its init, so no init_from.
    "pretrained": Capabilities(
        tokenizers=frozenset({"model"}),
        devices=_BOTH_DEVICES,
        precisions=_ALL_PRECISIONS,
        max_parameters=2_000_000_000,
        max_context=131_072,
        can_resume=True,
        can_finetune=False,
        can_compile=True,
    ),
}


def context_length(spec: ModelSpec) -> int:
    """Tokens per training window."""
    if isinstance(spec, CharLstmModel):
        return spec.block_size
    return spec.block_size


def llama_intermediate_size(spec: LlamaModel) -> int:
    """The SwiGLU width: as given, else 8/3 x hidden_size rounded up to a multiple of 64 (the
    parameter count of a 4x GELU MLP, in matrix sizes the kernels like)."""
    if spec.intermediate_size is not None:
        return spec.intermediate_size
    return -(-8 * spec.hidden_size // (3 * 64)) * 64


def llama_kv_heads(spec: LlamaModel) -> int:
    return spec.num_key_value_heads or spec.num_attention_heads


def core_parameters(spec: ModelSpec) -> int:
    """Parameters that do not scale with the vocabulary (0 for ``pretrained``: its size is
    read from the folder, see :mod:`model_trainer.core.pretrained`)."""
    if isinstance(spec, CharLstmModel):
        total = 0
        for layer in range(spec.num_layers):
            inputs = spec.embedding_dim if layer == 0 else spec.hidden_size
            total += 4 * spec.hidden_size * (inputs + spec.hidden_size + 2)
        return total
    if isinstance(spec, LlamaModel):
        d = spec.hidden_size
        kv_width = llama_kv_heads(spec) * (d // spec.num_attention_heads)
        attention = 2 * d * d + 2 * d * kv_width
        mlp = 3 * d * llama_intermediate_size(spec)
        return spec.num_hidden_layers * (attention + mlp + 2 * d) + d
    if isinstance(spec, PretrainedModel):
        return 0
    per_layer = 12 * spec.n_embd * spec.n_embd + 13 * spec.n_embd
    return spec.n_layer * per_layer + spec.block_size * spec.n_embd + 2 * spec.n_embd


@dataclass(frozen=True)
class Footprint:
    """What a model of one shape holds while it trains, from its shape alone.

    ``parameters`` counts every trainable value once (embeddings and heads included; tied
    weights once). ``activation_bytes`` is what one sequence of the batch adds to a training
    step: what autograd keeps for the backward pass, and the backward pass's own temporaries,
    logits excluded (:mod:`.memory` adds those for every backend alike).
    ``workspace_bytes`` is what a step's kernels allocate whatever the batch. ``half``: the
    figures under fp16/bf16 autocast.
    """

    parameters: int
    activation_bytes: int
    workspace_bytes: int = 0


def footprint(spec: ModelSpec, vocab_size: int, *, half: bool) -> Footprint:
    """The :class:`Footprint` of ``spec`` over a vocabulary of ``vocab_size``; one function
    per backend (the last call takes what the others left: mypy names a spec added to
    ``ModelSpec`` without a function of its own there)."""
    if isinstance(spec, CharLstmModel):
        return _char_lstm_footprint(spec, vocab_size, half=half)
    if isinstance(spec, Gpt2Model):
        return _gpt2_footprint(spec, vocab_size, half=half)
    if isinstance(spec, PretrainedModel):
        # Its shape is in its folder, not in the spec: the memory estimate takes the
        # parameters from the folder's weights and leaves activations out (the worker's
        # memory limit still applies, and an overrun fails with TRAINING_OOM).
        return Footprint(0, 0)
    return _llama_footprint(spec, vocab_size, half=half)


def _char_lstm_footprint(spec: CharLstmModel, vocab: int, *, half: bool) -> Footprint:
    """Embedding, ``num_layers`` LSTM layers, a linear head.

    torch's LSTM keeps 17 floats of ``hidden_size`` per token and layer for its backward pass
    in fp32 (gates, cell states, outputs; 19 with dropout between layers), about half that
    under autocast; the embedding's output and the head's input add a vector each. Its CPU
    kernel also works on a reordered copy of the layer weights and their gradient.
    Counted with ``saved_tensors_hooks`` on torch 2.15, and checked against peak memory.
    """
    h, e = spec.hidden_size, spec.embedding_dim
    per_layer = (10 if half else 17) * h
    if spec.dropout > 0 and spec.num_layers > 1:
        per_layer += 2 * h
    per_token = 4 * (spec.num_layers * per_layer + e + h + 4)
    core = core_parameters(spec)
    params = core + vocab * e + h * vocab + vocab
    return Footprint(params, per_token * spec.block_size, workspace_bytes=2 * 4 * core)


def _gpt2_footprint(spec: Gpt2Model, vocab: int, *, half: bool) -> Footprint:
    """transformers' GPT-2 with SDPA attention; the head is tied to the token embedding.

    Per token and layer, fp32 autograd keeps 28 vectors of ``n_embd`` (layer norms, the QKV
    projection, attention output, the MLP's 4x expansion and the tanh GELU's intermediates)
    and a log-sum-exp per head; fp16/bf16 autocast about 62 bytes per ``n_embd``. Dropout
    adds its masks, and makes SDPA materialise attention weights: 12 bytes per head and pair
    of positions, the one term quadratic in the context. The backward pass of an MLP holds
    16 more vectors per token while it runs. Counted with ``saved_tensors_hooks`` on torch
    2.15 and transformers 5, and checked against peak memory.
    """
    h, t = spec.n_embd, spec.block_size
    dropout = spec.dropout > 0
    per_layer = (70 if dropout else 62) * h if half else (120 if dropout else 112) * h
    per_layer += 4 * spec.n_head
    per_sequence = t * (spec.n_layer * per_layer + 16 * h + 4 * 16 * h)
    if dropout:
        per_sequence += spec.n_layer * 12 * spec.n_head * t * t
    params = core_parameters(spec) + vocab * h
    return Footprint(params, per_sequence)


def _llama_footprint(spec: LlamaModel, vocab: int, *, half: bool) -> Footprint:
    """transformers' Llama with SDPA attention. Modelled on GPT-2's counts (not measured
    separately): per token and layer about 14 vectors of ``hidden_size`` around attention and
    the RMSNorms, and 4 of the SwiGLU width (gate, up, their product and its input), in fp32;
    about 55% of that under autocast; dropout makes attention weights materialise."""
    h, t, inner = spec.hidden_size, spec.block_size, llama_intermediate_size(spec)
    per_layer = 4 * (14 * h + 4 * inner)
    if half:
        per_layer = per_layer * 55 // 100
    per_sequence = t * (spec.num_hidden_layers * per_layer + 16 * h + 4 * 4 * inner)
    if spec.dropout > 0:
        per_sequence += spec.num_hidden_layers * 12 * spec.num_attention_heads * t * t
    head = 0 if spec.tie_word_embeddings else vocab * h
    return Footprint(core_parameters(spec) + vocab * h + head, per_sequence)


def flops_per_token(parameters: int, layers: int, heads: int, head_dim: int, context: int) -> float:
    """Training FLOPs per token, nanoGPT's convention (PaLM appendix B): 6N for the matrix
    multiplications forward and backward, plus 12·L·H·Q·T for attention. ``parameters`` (N)
    counts the weights used in matrix multiplications: not position tables, and not an input
    embedding that is not tied to the output head."""
    return 6.0 * parameters + 12.0 * layers * heads * head_dim * context
