"""Tokenizers, all held as a ``tokenizers.Tokenizer`` so the artifact's ``tokenizer.json`` loads
in stock transformers (``AutoTokenizer.from_pretrained``).

* ``char``: one id per distinct character of the corpus, in code point order, then ``<unk>``.
  Encoding skips the Rust tokenizer and maps code points with numpy (same ids, far faster).
* ``bpe``: byte-level BPE trained on the corpus, with ``<|endoftext|>`` as its one special token.
* ``model``: the tokenizer a pretrained model folder ships (its ``tokenizer.json``); its files
  are copied into the artifact as they were.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from model_trainer.core.layout import TOKENIZER_FILE

_C = ModelTrainerErrorCode
UNK = "<unk>"
EOT = "<|endoftext|>"
CONFIG_FILE = "tokenizer_config.json"
# What transformers' AutoTokenizer reads beside tokenizer.json; copied from a model folder.
COMPANION_FILES = (
    CONFIG_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
_CHAR_SPLIT = r"[\s\S]"
_LINES_PER_BATCH = 8192
_CHARS_PER_CHUNK = 1 << 24

Ids = npt.NDArray[np.uint32]


class TextTokenizer:
    """A tokenizer: ``kind`` is ``char``, ``bpe`` or ``model``. ``files`` (name to bytes) are
    written verbatim by :meth:`save_pretrained` instead of the generated files."""

    def __init__(self, kind: str, tok: Tokenizer, files: dict[str, bytes] | None = None) -> None:
        self.kind = kind
        self._tok = tok
        self._files = dict(files or {})
        vocab: dict[str, int] = tok.get_vocab()
        self.vocab_size = len(vocab)
        self.unk_id = vocab.get(UNK, 0)
        singles = sorted((ord(c), i) for c, i in vocab.items() if len(c) == 1)
        self._points = np.array([p for p, _ in singles], dtype=np.uint32)
        self._point_ids = np.array([i for _, i in singles], dtype=np.uint32)

    def encode(self, text: str) -> Ids:
        """Token ids of ``text`` (no special tokens added)."""
        if self.kind == "char":
            return np.concatenate(
                [
                    self._encode_chars(text[i : i + _CHARS_PER_CHUNK])
                    for i in range(0, len(text), _CHARS_PER_CHUNK)
                ]
                or [np.zeros(0, dtype=np.uint32)]
            )
        lines = text.splitlines(keepends=True)
        pieces: list[Ids] = [np.zeros(0, dtype=np.uint32)]
        for start in range(0, len(lines), _LINES_PER_BATCH):
            batch = self._tok.encode_batch(
                lines[start : start + _LINES_PER_BATCH], add_special_tokens=False
            )
            for enc in batch:
                ids: list[int] = enc.ids
                pieces.append(np.array(ids, dtype=np.uint32))
        return np.concatenate(pieces)

    def _encode_chars(self, text: str) -> Ids:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        at = np.minimum(np.searchsorted(self._points, points), len(self._points) - 1)
        known = self._points[at] == points
        return np.where(known, self._point_ids[at], np.uint32(self.unk_id)).astype(np.uint32)

    def decode(self, ids: list[int]) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=False)
        return text

    def to_json(self) -> str:
        text: str = self._tok.to_str()
        return text

    def save_pretrained(self, out_dir: Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json``: what transformers'
        ``AutoTokenizer.from_pretrained`` reads (a model's own files as they came)."""
        if self._files:
            for name, data in self._files.items():
                (out_dir / name).write_bytes(data)
            return
        special = (
            {"unk_token": UNK} if self.kind == "char" else {"eos_token": EOT, "bos_token": EOT}
        )
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
        (out_dir / TOKENIZER_FILE).write_text(self.to_json(), encoding="utf-8")
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def from_json(text: str) -> TextTokenizer:
    """A tokenizer from its ``tokenizer.json`` text: ``char`` when it is one of ours (one
    word per character), else ``bpe`` (encoded by the library, whatever its model)."""
    tok = Tokenizer.from_str(text)
    parsed = json.loads(text)
    pre = parsed.get("pre_tokenizer") or {}
    char = (
        parsed["model"]["type"] == "WordLevel"
        and pre.get("type") == "Split"
        and pre.get("pattern") == {"Regex": _CHAR_SPLIT}
    )
    return TextTokenizer("char" if char else "bpe", tok)


def load_model_tokenizer(folder: Path) -> TextTokenizer:
    """The tokenizer a model folder ships (``tokenizer.json`` and its companion files), kind
    ``model``: TOKENIZER_NOT_FOUND or TOKENIZER_LOAD_FAILED."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise ModelTrainerError(
            _C.TOKENIZER_NOT_FOUND,
            f"the model folder {folder.name!r} has no {TOKENIZER_FILE}",
            details={"path": folder.name},
        )
    try:
        raw = path.read_bytes()
        tok = Tokenizer.from_str(raw.decode("utf-8"))
        files = {TOKENIZER_FILE: raw}
        for name in COMPANION_FILES:
            if (folder / name).is_file():
                files[name] = (folder / name).read_bytes()
    except Exception as exc:  # json, Rust and OS errors alike mean the files are unusable
        raise ModelTrainerError(
            _C.TOKENIZER_LOAD_FAILED,
            f"cannot load the tokenizer of the model folder {folder.name!r}: {exc}",
            details={"path": folder.name},
        ) from None
    return TextTokenizer("model", tok, files)


def train_char(text: str) -> TextTokenizer:
    """One id per distinct character of ``text``, in code point order, then ``<unk>``."""
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    vocab[UNK] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S]: every character, newlines included, becomes its own piece.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return TextTokenizer("char", tok)


def train_bpe(text: str, vocab_size: int, min_frequency: int) -> TextTokenizer:
    """Byte-level BPE trained on ``text``; TOKENIZER_TRAIN_FAILED if the library refuses."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    try:
        tok.train_from_iterator(_line_batches(text), trainer=trainer)
    except Exception as exc:  # the Rust side raises bare Exceptions
        raise ModelTrainerError(
            _C.TOKENIZER_TRAIN_FAILED, f"BPE training failed: {exc}", stage="prepare"
        ) from None
    return TextTokenizer("bpe", tok)


def _line_batches(text: str) -> Iterator[list[str]]:
    lines = text.splitlines(keepends=True)
    for start in range(0, len(lines), _LINES_PER_BATCH):
        yield lines[start : start + _LINES_PER_BATCH]


def load_from_job(job_dir: Path) -> TextTokenizer:
    """The tokenizer an earlier job saved: TOKENIZER_NOT_FOUND or TOKENIZER_LOAD_FAILED."""
    path = job_dir / TOKENIZER_FILE
    if not path.is_file():
        raise ModelTrainerError(
            _C.TOKENIZER_NOT_FOUND,
            f"job {job_dir.name!r} has no tokenizer",
            details={"job_id": job_dir.name},
        )
    try:
        return from_json(path.read_text(encoding="utf-8"))
    except Exception as exc:  # json, Rust and OS errors alike mean the file is unusable
        raise ModelTrainerError(
            _C.TOKENIZER_LOAD_FAILED,
            f"cannot load the tokenizer of job {job_dir.name!r}: {exc}",
            details={"job_id": job_dir.name},
        ) from None
