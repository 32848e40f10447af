"""Commands: what publishers put on the commands topic. Strict: unknown fields are refused.

A few fields also answer to the name other trainers give them (Hugging Face's
``gradient_accumulation_steps`` for ``grad_accum_steps``, ...): an alias is accepted on input,
the canonical name is what every message and artifact writes back.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue

# Starts with a letter or digit: ids name folders, so ".", ".." and hidden names are refused.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
# An artifact in object storage, as a completed event's artifact_path names it (no
# credentials: a bucket name has no "@" or ":").
ARTIFACT_URL_PATTERN = r"^s3://[a-z0-9][a-z0-9._-]{1,221}/\S+$"
ArtifactUrl = Annotated[str, StringConstraints(pattern=ARTIFACT_URL_PATTERN, max_length=1024)]
MAX_INLINE_TEXT_CHARS = 1_000_000
MAX_LABELS = 32
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
LabelValue = Annotated[str, StringConstraints(max_length=256)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
BackendName = Literal["char_lstm", "gpt2", "llama", "pretrained"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
Compile = Literal["auto", "on", "off"] | bool
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def aliases_of(model: type[BaseModel]) -> dict[str, str]:
    """The other names ``model``'s fields accept on input, each mapped to its canonical name."""
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        found |= {c: name for c in choices if isinstance(c, str) and c != name}
    return found


def _object(value: JsonValue) -> JsonDict:
    # pydantic writes a model's properties, and each field's, as objects: this only narrows.
    return value if isinstance(value, dict) else {}


def _schema_aliases(schema: JsonDict, model: type[BaseModel]) -> None:
    """Add each alias to a model's JSON Schema as a property of its own, marked
    ``x-alias-of``, and forbid giving it together with its canonical name.

    Validation mode (what publishers may send): pydantic names each property by the first
    of its ``AliasChoices``, the canonical name, and leaves the other choices out.
    """
    properties = _object(schema.get("properties"))
    exclusive: list[JsonValue] = []
    for alias, name in aliases_of(model).items():
        canonical = _object(properties.get(name))
        same = {k: copy.deepcopy(v) for k, v in canonical.items() if k not in ("default", "title")}
        properties[alias] = {
            **same,
            "description": f"Alias of `{name}`; give one or the other.",
            "x-alias-of": name,
        }
        exclusive.append({"not": {"required": [name, alias]}})
    if exclusive:
        schema["allOf"] = exclusive


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        populate_by_name=True,
        json_schema_extra=_schema_aliases,
    )


class CharLstmModel(_Strict):
    """A character-level LSTM language model (torch ``nn.LSTM``)."""

    backend: Literal["char_lstm"] = "char_lstm"
    embedding_dim: int = Field(64, ge=1, le=4096)
    hidden_size: int = Field(128, ge=1, le=8192)
    num_layers: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    block_size: int = Field(
        64,
        ge=2,
        le=4096,
        validation_alias=AliasChoices("block_size", "seq_len"),
        description="Context length: tokens per training sequence.",
    )


class Gpt2Model(_Strict):
    """A GPT-2 decoder (transformers ``GPT2LMHeadModel``) trained from scratch."""

    backend: Literal["gpt2"] = "gpt2"
    n_layer: int = Field(4, ge=1, le=48)
    n_head: int = Field(4, ge=1, le=64)
    n_embd: int = Field(128, ge=8, le=8192)
    block_size: int = Field(64, ge=2, le=8192, description="Context length (n_positions).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Self:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class LlamaModel(_Strict):
    """A Llama decoder (transformers ``LlamaForCausalLM``) trained from scratch: RMSNorm,
    SwiGLU, rotary positions, optional grouped-query attention."""

    backend: Literal["llama"] = "llama"
    num_hidden_layers: int = Field(4, ge=1, le=128)
    hidden_size: int = Field(128, ge=8, le=16_384)
    num_attention_heads: int = Field(4, ge=1, le=256)
    num_key_value_heads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Key/value heads (grouped-query attention); None: one per attention head.",
    )
    intermediate_size: int | None = Field(
        None,
        ge=1,
        le=131_072,
        description="SwiGLU width; None: 8/3 x hidden_size rounded up to a multiple of 64.",
    )
    rope_theta: float = Field(10_000.0, gt=0.0, le=1e9, description="Rotary base.")
    block_size: int = Field(64, ge=2, le=32_768, description="Tokens per training window.")
    tie_word_embeddings: bool = Field(True, description="The output head shares the embedding.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Attention dropout.")

    @model_validator(mode="after")
    def _heads_divide(self) -> Self:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        kv = self.num_key_value_heads
        if kv is not None and self.num_attention_heads % kv:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({kv})"
            )
        return self


class PretrainedModel(_Strict):
    """Fine-tune a Hugging Face causal LM from a folder under the data root: ``config.json``,
    safetensors weights and its tokenizer (``tokenizer.json``). Any architecture transformers
    implements natively; never remote code, never pickled weights."""

    backend: Literal["pretrained"] = "pretrained"
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="The model folder, relative to the service's data root, or an s3:// URL "
        "(a folder of objects).",
    )
    block_size: int = Field(
        256,
        ge=2,
        le=131_072,
        description="Tokens per training window; at most the model's position limit.",
    )
    freeze_embeddings: bool = Field(
        False, description="Keep the input embeddings (and an output head tied to them) fixed."
    )


ModelSettings = Annotated[
    CharLstmModel | Gpt2Model | LlamaModel | PretrainedModel, Field(discriminator="backend")
]


class CharTokenizer(_Strict):
    kind: Literal["char"] = "char"


class BpeTokenizer(_Strict):
    """Byte-level BPE trained on the job's own corpus."""

    kind: Literal["bpe"] = "bpe"
    vocab_size: int = Field(1024, ge=260, le=65_536)
    min_frequency: int = Field(2, ge=1, le=1_000)


class JobTokenizer(_Strict):
    """Reuse the tokenizer that an earlier, completed job trained."""

    kind: Literal["job"] = "job"
    job_id: JobId


class ModelTokenizer(_Strict):
    """The tokenizer that ships with the pretrained model folder (backend ``pretrained``)."""

    kind: Literal["model"] = "model"


TokenizerSpec = Annotated[
    CharTokenizer | BpeTokenizer | JobTokenizer | ModelTokenizer, Field(discriminator="kind")
]


class RecordSpec(_Strict):
    """How chat and instruction records become training examples (``format`` chat or
    instruction; backend ``pretrained``)."""

    messages_field: str = Field(
        "messages", min_length=1, max_length=128, description="chat: the list of messages."
    )
    prompt_field: str = Field(
        "prompt", min_length=1, max_length=128, description="instruction: the prompt."
    )
    response_field: str = Field(
        "response", min_length=1, max_length=128, description="instruction: the response."
    )
    train_on_prompt: bool = Field(
        False,
        description="Also train on prompt, system and template tokens; by default only the "
        "assistant's (response's) tokens count in the loss.",
    )
    packing: bool = Field(
        True,
        description="Pack several examples into each block_size window (attention and "
        "positions restart at every example); false: one example per window, padded.",
    )


class DataSpec(_Strict):
    """Where the text comes from and how it is split; exactly one of path or inline text."""

    corpus_path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="A file or directory, relative to the service's data root.",
    )
    inline_text: str | None = Field(
        None, min_length=1, max_length=MAX_INLINE_TEXT_CHARS, description="The corpus itself."
    )
    format: Literal["text", "jsonl", "chat", "instruction"] = Field(
        "text",
        description="text: plain files; jsonl: a text field per record; chat: a messages list "
        "per record, rendered with the model folder's chat template; instruction: a prompt and "
        "a response field per record. Records come from JSONL files, or Parquet files "
        "(*.parquet, read by column) in a corpus path.",
    )
    jsonl_field: str = Field(
        "text",
        min_length=1,
        max_length=128,
        description="The text field of each JSONL record (jsonl; the column of a Parquet file).",
    )
    records: RecordSpec = Field(
        default_factory=lambda: RecordSpec(), description="chat and instruction records."
    )
    val_fraction: float = Field(0.1, gt=0.0, le=0.5, description="Held out for evaluation.")
    test_fraction: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="Held out for the final test, whose loss is the completed event's "
        "test_loss; 0 for no test split (test_loss is then null).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.corpus_path is None) == (self.inline_text is None):
            raise ValueError("give exactly one of corpus_path and inline_text")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% to train on")
        return self


class AdapterSpec(_Strict):
    """Train a low-rank adapter (LoRA, with the ``peft`` library) instead of every weight;
    backend ``pretrained``. ``qlora`` (a 4-bit base) needs bitsandbytes and a CUDA GPU."""

    kind: Literal["lora", "qlora"] = "lora"
    r: int = Field(8, ge=1, le=1024, description="The adapter's rank.")
    alpha: int = Field(16, ge=1, le=65_536, description="Scale: alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = (
        Field(
            None,
            min_length=1,
            max_length=64,
            description="Module names the adapter wraps; None: peft's default for the "
            "architecture (e.g. q_proj and v_proj for Llama and Qwen2, c_attn for GPT-2).",
        )
    )
    merge: bool = Field(
        False,
        description="Also write the merged full weights (merged/ in the artifact), loadable "
        "by stock transformers.",
    )


MAX_GENERATE_PROMPTS = 16
MAX_GENERATE_TOKENS = 256


class GenerateSpec(_Strict):
    """At the end of a chat or instruction job, answer a few held-out prompts (the test
    split's records, else the validation split's) greedily with the trained model; the
    answers are published in the completed event (``generations``)."""

    prompts: int = Field(4, ge=1, le=MAX_GENERATE_PROMPTS, description="How many prompts.")
    max_new_tokens: int = Field(
        64,
        ge=1,
        le=MAX_GENERATE_TOKENS,
        description="Tokens per answer at most; an answer also ends at the end-of-text token.",
    )


class TrainingSpec(_Strict):
    """How long and how to optimise. Give ``max_steps`` or ``epochs`` (default 200 steps)."""

    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    epochs: float | None = Field(None, gt=0.0, le=10_000.0)
    batch_size: int = Field(16, ge=1, le=4096)
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("grad_accum_steps", "gradient_accumulation_steps"),
        description="Micro-batches per optimizer step.",
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine",
        validation_alias=AliasChoices("schedule", "lr_scheduler_type"),
        description="Decay after warmup, down to min_lr.",
    )
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="Steps of linear warmup.")
    warmup_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Warmup as a fraction of the total steps, rounded up; instead of "
        "warmup_steps, not with it.",
    )
    min_lr: float = Field(0.0, ge=0.0, le=10.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    betas: tuple[
        Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]
    ] = (
        0.9,
        0.999,
    )
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD only.")
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    grad_clip: float | None = Field(
        1.0,
        gt=0.0,
        le=1_000.0,
        validation_alias=AliasChoices("grad_clip", "max_grad_norm"),
        description="Clip the gradient's global norm to this; null for no clipping.",
    )
    seed: int = Field(1337, ge=0, le=2**32 - 1)
    device: Device = "auto"
    precision: Precision = "auto"
    eval_every: int = Field(
        100,
        ge=1,
        le=10_000_000,
        validation_alias=AliasChoices("eval_every", "eval_steps"),
        description="Evaluate every N steps.",
    )
    eval_batches: int = Field(20, ge=1, le=10_000, description="Batches per evaluation.")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=10_000, description="Stop after N evaluations without improvement."
    )
    checkpoint_every: int | None = Field(
        None, ge=1, le=10_000_000, description="Checkpoint every N steps (None: service default)."
    )
    compile: Compile = Field(
        "auto",
        description="torch.compile the model: auto (on for CUDA, for backends that support it), "
        "on, off; true and false mean on and off.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give max_steps or epochs, not both")
        if self.min_lr > self.learning_rate:
            raise ValueError("min_lr must not exceed learning_rate")
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        return self


class ProgressSpec(_Strict):
    """Publish progress every N steps, and also at least every S seconds when set."""

    every_steps: int = Field(10, ge=1, le=1_000_000)
    every_seconds: float | None = Field(None, gt=0.0, le=3_600.0)


Strategy = Literal["auto", "ddp", "fsdp"]
MAX_NODES = 64


class ResourcesSpec(_Strict):
    """How many processes train the job together (``torch.distributed``, gloo on CPU), and
    how: ``ddp`` replicates the model on each and averages gradients, ``fsdp`` shards its
    weights, gradients and optimizer state over them (FSDP2), ``auto`` picks ``ddp`` unless
    only sharding fits a worker's memory. The global batch (``training.batch_size``) is split
    evenly over the processes, so it must divide by their number."""

    processes: int = Field(
        1, ge=1, le=64, description="Processes (worker slots) the job takes on each node."
    )
    strategy: Strategy = Field("auto", description="ddp, fsdp, or auto (by memory).")
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Machines the job spans, each running `processes` processes (world size: "
        "nodes x processes). Over 1 runs only as a Kubeflow Trainer TrainJob "
        "(`model-trainer trainjob`); the service refuses it.",
    )

    @property
    def world(self) -> int:
        """Processes over all nodes."""
        return self.nodes * self.processes


class SubmitJobV1(_Strict):
    """Train one model. ``job_id`` is the idempotency key: resubmitting the same spec is a no-op."""

    type: Literal["trainer.job.submit.v1"] = "trainer.job.submit.v1"
    job_id: JobId = Field(description="Caller-chosen id; also the Kafka message key.")
    user_id: int = Field(ge=0, le=2**63 - 1, description="Who asked; copied into every event.")
    backend: BackendName = Field(description="Which model family trains.")
    model: ModelSettings = Field(
        description="Shape of the model; may be omitted for the backend's defaults."
    )
    tokenizer: TokenizerSpec = Field(default_factory=CharTokenizer, description="Default: char.")
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    init_from: JobId | ArtifactUrl | None = Field(
        None,
        description="Fine-tune from this job's artifact, or from the artifact at an s3:// URL "
        "(a completed event's artifact_path).",
    )
    adapter: AdapterSpec | None = Field(
        None, description="Train a LoRA adapter instead of every weight (pretrained backend)."
    )
    generate: GenerateSpec | None = Field(
        None, description="Answer a few held-out prompts at the end (chat and instruction data)."
    )
    progress: ProgressSpec = Field(default_factory=ProgressSpec)
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Processes and strategy (default: one)."
    )
    timeout_s: float | None = Field(
        None, gt=0.0, le=7 * 24 * 3600.0, description="Fail with TRAINING_TIMEOUT after this."
    )
    stall_timeout_s: float | None = Field(
        None,
        gt=0.0,
        le=7 * 24 * 3600.0,
        description="A run that reports nothing for this long is killed and retried, then "
        "fails with TRAINING_STALLED (default: the service's stall_timeout_s).",
    )
    labels: Labels = Field(
        default_factory=dict, description="Free-form tags, copied into every event of the job."
    )
    priority: int = Field(
        0,
        ge=-100,
        le=100,
        description="Higher runs first among the same user's queued jobs; users take turns.",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_follows_backend(cls, data: object) -> object:
        """Let publishers omit ``model`` or its ``backend``: both follow the top-level backend."""
        if isinstance(data, dict) and isinstance(data.get("backend"), str):
            model = data.get("model", {})
            if isinstance(model, dict) and "backend" not in model:
                return {**data, "model": {**model, "backend": data["backend"]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _pretrained_brings_its_tokenizer(cls, data: object) -> object:
        """A pretrained model uses its own tokenizer: ``tokenizer`` may be omitted."""
        if (
            isinstance(data, dict)
            and data.get("backend") == "pretrained"
            and "tokenizer" not in data
        ):
            return {**data, "tokenizer": {"kind": "model"}}
        return data

    @model_validator(mode="after")
    def _model_matches_backend(self) -> Self:
        if self.model.backend != self.backend:
            raise ValueError(
                f"model settings are for {self.model.backend!r} but backend is {self.backend!r}"
            )
        processes = self.resources.world
        if self.training.batch_size % processes:
            raise ValueError(
                f"batch_size {self.training.batch_size} does not split over {processes} processes"
            )
        return self

    @model_validator(mode="after")
    def _generate_from_records(self) -> Self:
        # Held-out prompts are records' prompts: text has none.
        if self.generate is not None and self.data.format not in ("chat", "instruction"):
            raise ValueError("generate needs chat or instruction data (its held-out prompts)")
        return self


class CancelJobV1(_Strict):
    """Stop a queued or running job; it ends with TRAINING_CANCELLED."""

    type: Literal["trainer.job.cancel.v1"] = "trainer.job.cancel.v1"
    job_id: JobId = Field(description="The job to stop; also the Kafka message key.")
    reason: str = Field("", max_length=512, description="Copied into the failed event.")


Command = Annotated[SubmitJobV1 | CancelJobV1, Field(discriminator="type")]
