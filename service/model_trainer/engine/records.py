"""Record data: JSONL lines or Parquet rows, as text (``jsonl``) or as training examples
(``chat``, ``instruction``) with the prompt masked from the loss.

Parquet files (``*.parquet``, a file or a folder of shards) are read with pyarrow one record
batch at a time, only the columns the format names: never loaded whole. A bad record raises
CORPUS_MALFORMED_RECORD with the file, the line (JSONL, 1-based) or row (Parquet, 0-based),
and the reason.

``chat``: each record's messages are rendered by the model folder's own chat template
(transformers' ``apply_chat_template``). The tokens an assistant turn adds (its content and
the template's end-of-turn text) are what trains: the template renders the conversation up
to the turn with its generation prompt, then with the turn, and the characters between the
two are the assistant's; tokens starting inside them count in the loss.

``instruction``: a prompt and a response field; rendered as a user and an assistant turn when
the folder has a chat template, else as ``prompt + "\\n" + response`` and the end-of-text
token, the response (and that token) training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from model_trainer_contracts import DataSpec, ModelTrainerError, ModelTrainerErrorCode
from pydantic import JsonValue

from model_trainer.core.finetune import has_chat_template
from model_trainer.core.storage import check_corpus_size
from model_trainer.engine.corpus import RawCorpus, corpus_files, utf8
from model_trainer.engine.packing import Example

_C = ModelTrainerErrorCode
PARQUET = ".parquet"
_ROWS_PER_BATCH = 1024
_READ_CHUNK = 1 << 20
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class Record:
    file: str
    unit: str  # line | row
    number: int
    value: object

    def malformed(self, why: str) -> ModelTrainerError:
        return ModelTrainerError(
            _C.CORPUS_MALFORMED_RECORD,
            f"{self.file} {self.unit} {self.number}: {why}",
            details={"file": self.file, self.unit: self.number, "reason": why},
        )


def is_parquet(spec: DataSpec, data_root: Path) -> bool:
    """Whether a path corpus holds Parquet files (all of its files must then be Parquet)."""
    if spec.corpus_path is None:
        return False
    return any(name.endswith(PARQUET) for name, _ in corpus_files(spec, data_root))


def records_digest(spec: DataSpec, data_root: Path, max_bytes: int) -> str:
    """A digest of the record files and the options that read them; CORPUS_TOO_LARGE past
    ``max_bytes``. Files are hashed in chunks, not read whole."""
    h = hashlib.sha256(spec.model_dump_json(exclude={"val_fraction", "test_fraction"}).encode())
    if spec.inline_text is not None:
        h.update(spec.inline_text.encode())
        return h.hexdigest()
    files = corpus_files(spec, data_root)
    check_corpus_size(sum(path.stat().st_size for _, path in files), max_bytes)
    for name, path in files:
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def iter_records(spec: DataSpec, data_root: Path, columns: list[str]) -> Iterator[Record]:
    """Every record of the corpus in file order: JSONL lines, or Parquet rows of ``columns``
    (CORPUS_MALFORMED_RECORD when a file lacks one)."""
    if spec.inline_text is not None:
        yield from _jsonl("<inline>", spec.inline_text)
        return
    for name, path in corpus_files(spec, data_root):
        if name.endswith(PARQUET):
            yield from _parquet(name, path, columns)
            continue
        yield from _jsonl(name, utf8(name, path.read_bytes()))


def _jsonl(name: str, text: str) -> Iterator[Record]:
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        record = Record(name, "line", number, None)
        try:
            value: JsonValue = json.loads(line)
        except json.JSONDecodeError as exc:
            raise record.malformed(f"not JSON: {exc.msg}") from None
        yield Record(name, "line", number, value)


def _parquet(name: str, path: Path, columns: list[str]) -> Iterator[Record]:
    # Imported here: a text job's worker never maps pyarrow (tens of MB).
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(str(path))
        present: list[str] = list(source.schema_arrow.names)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise Record(name, "row", 0, None).malformed(f"not a Parquet file: {exc}") from None
    missing = [c for c in columns if c not in present]
    if missing:
        raise ModelTrainerError(
            _C.CORPUS_MALFORMED_RECORD,
            f"{name} has no column {missing[0]!r} (it has {present[:20]})",
            details={"file": name, "column": missing[0], "reason": "no such column"},
        )
    row = 0
    for chunk in source.iter_batches(batch_size=_ROWS_PER_BATCH, columns=columns):
        values: list[object] = chunk.to_pylist()
        for value in values:
            yield Record(name, "row", row, value)
            row += 1


def parquet_text(spec: DataSpec, data_root: Path, max_bytes: int) -> RawCorpus:
    """The text column ``jsonl_field`` of Parquet files, one value per line, as a corpus of
    format ``text`` (digested over the files)."""
    digest = records_digest(spec, data_root, max_bytes)
    field = spec.jsonl_field
    parts: list[str] = []
    for record in iter_records(spec, data_root, [field]):
        value = record.value.get(field) if isinstance(record.value, dict) else None
        if not isinstance(value, str):
            raise record.malformed(f"no string field {field!r}")
        parts.append(value if value.endswith("\n") else value + "\n")
    return RawCorpus([("<parquet>", "".join(parts).encode())], digest, "text", field)


@dataclass(frozen=True)
class HeldOutPrompt:
    """A held-out record's prompt, rendered and tokenized as training renders it (the
    conversation up to its last assistant turn, with the generation prompt), and that
    turn's content, the record's own answer."""

    text: str
    ids: list[int]
    reference: str


class Renderer:
    """Turns records into examples with the tokenizer and chat template of a model folder."""

    def __init__(self, folder: Path, spec: DataSpec) -> None:
        # Imported here: workers that train char_lstm on text never import transformers.
        from transformers import AutoTokenizer

        self.spec, self.folder = spec, folder
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.templated = has_chat_template(folder)
        eos: object = getattr(self.tok, "eos_token", None)
        self.eos = eos if isinstance(eos, str) else ""

    def columns(self) -> list[str]:
        r = self.spec.records
        if self.spec.format == "chat":
            return [r.messages_field]
        return [r.prompt_field, r.response_field]

    def example(self, record: Record) -> Example:
        if not isinstance(record.value, dict):
            raise record.malformed("not a JSON object")
        if self.spec.format == "chat":
            messages = self._messages(record, record.value)
        else:
            prompt = self._field(record, record.value, self.spec.records.prompt_field)
            response = self._field(record, record.value, self.spec.records.response_field)
            if not response.strip():
                raise record.malformed("empty response")
            if not self.templated:
                text = f"{prompt}\n{response}{self.eos}"
                return self._tokens(text, [(len(prompt) + 1, len(text))])
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
        return self._chat(record, messages)

    @staticmethod
    def _field(record: Record, value: dict[str, object], name: str) -> str:
        found = value.get(name)
        if not isinstance(found, str):
            raise record.malformed(f"no string field {name!r}")
        return found

    def _messages(self, record: Record, value: dict[str, object]) -> list[dict[str, str]]:
        name = self.spec.records.messages_field
        raw = value.get(name)
        if not isinstance(raw, list) or not raw:
            raise record.malformed(f"no {name!r} list of messages")
        messages: list[dict[str, str]] = []
        for i, message in enumerate(raw):
            role = message.get("role") if isinstance(message, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(role, str) or not isinstance(content, str):
                raise record.malformed(f"message {i} has no string role and content")
            if role == "assistant" and not content.strip():
                raise record.malformed(f"message {i} is an empty assistant turn")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            raise record.malformed("no assistant turn to train on")
        return messages

    def _render(self, record: Record, messages: list[dict[str, str]], prompt: bool) -> str:
        try:
            text: object = self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            )
        except Exception as exc:  # jinja2's TemplateError, or what the template raises
            raise record.malformed(f"the chat template cannot render it: {exc}") from None
        if not isinstance(text, str):
            raise record.malformed("the chat template did not render text")
        return text

    def _chat(self, record: Record, messages: list[dict[str, str]]) -> Example:
        full = self._render(record, messages, False)
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(record, messages[:i], True)
            through = self._render(record, messages[: i + 1], False)
            if not (full.startswith(through) and through.startswith(before)):
                raise record.malformed(
                    "the chat template does not render the conversation turn by turn"
                )
            spans.append((len(before), len(through)))
        return self._tokens(full, spans)

    def prompt(self, record: Record) -> HeldOutPrompt:
        """The record's prompt and answer (a record :meth:`example` accepted)."""
        if not isinstance(record.value, dict):
            raise record.malformed("not a JSON object")
        if self.spec.format == "chat":
            messages = self._messages(record, record.value)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            text = self._render(record, messages[:last], True)
            reference = messages[last]["content"]
        else:
            prompt = self._field(record, record.value, self.spec.records.prompt_field)
            reference = self._field(record, record.value, self.spec.records.response_field)
            if self.templated:
                text = self._render(record, [{"role": "user", "content": prompt}], True)
            else:
                text = prompt + "\n"
        ids: list[int] = self.tok(text, add_special_tokens=False)["input_ids"]
        return HeldOutPrompt(text, ids, reference)

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: the tokenizer's end-of-text token, and the ids a
        folder's ``generation_config.json`` names (chat models often end a turn with another
        token)."""
        found: list[int] = []
        eos: object = getattr(self.tok, "eos_token_id", None)
        if isinstance(eos, int):
            found.append(eos)
        try:
            config: JsonValue = json.loads(
                (self.folder / GENERATION_CONFIG).read_text(encoding="utf-8")
            )
        except (OSError, ValueError):
            return found
        named = config.get("eos_token_id") if isinstance(config, dict) else None
        for i in named if isinstance(named, list) else [named]:
            if isinstance(i, int) and i not in found:
                found.append(i)
        return found

    def _tokens(self, text: str, spans: list[tuple[int, int]]) -> Example:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        starts = np.asarray([start for start, _ in enc["offset_mapping"]], dtype=np.int64)
        if self.spec.records.train_on_prompt:
            return Example(ids, np.ones(len(ids), dtype=np.bool_))
        trainable = np.zeros(len(ids), dtype=np.bool_)
        for start, end in spans:
            trainable |= (starts >= start) & (starts < end)
        return Example(ids, trainable)


@dataclass(frozen=True)
class HeldOut:
    """Held-out prompts to answer at the end, and the token ids that end an answer."""

    prompts: list[HeldOutPrompt]
    stop_ids: list[int]


def held_out_prompts(
    spec: DataSpec, data_root: Path, folder: Path, first: int, count: int
) -> HeldOut:
    """The prompts of records ``first`` to ``first + count - 1`` (in file order)."""
    renderer = Renderer(folder, spec)
    prompts: list[HeldOutPrompt] = []
    for index, record in enumerate(iter_records(spec, data_root, renderer.columns())):
        if index >= first + count:
            break
        if index >= first:
            prompts.append(renderer.prompt(record))
    return HeldOut(prompts, renderer.stop_ids())


def read_examples(spec: DataSpec, data_root: Path, folder: Path) -> Iterator[Example]:
    """The corpus's records as examples (see the module docstring)."""
    renderer = Renderer(folder, spec)
    count = 0
    for record in iter_records(spec, data_root, renderer.columns()):
        count += 1
        yield renderer.example(record)
    if not count:
        raise ModelTrainerError(_C.CORPUS_EMPTY, "the corpus holds no records")
