"""Malformed commands for the soak's fuzz section: random bytes and mutated valid commands;
and for its poison section, :class:`HostileCommands`: valid-looking ones with hostile values.

Every payload :meth:`CommandFuzzer.malformed` returns is one the service must dead-letter:
the contracts' own decoder refuses it, or its record key is not its ``job_id``. A mutation
that happens to leave a valid, correctly keyed command is drawn again, so the count of
payloads sent is the count of dead letters expected.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from model_trainer_client.kafka import partition_for_key
from model_trainer_contracts import (
    CancelJobV1,
    ModelTrainerError,
    SubmitJobV1,
    decode_command,
    encode,
)

Payload = tuple[bytes, bytes | None]  # (value, record key)
Doc = dict[str, object]

# Where a value's type is flipped, a field dropped, or a value put out of range.
FIELDS: list[tuple[str, ...]] = [
    ("type",),
    ("job_id",),
    ("user_id",),
    ("backend",),
    ("model",),
    ("model", "hidden_size"),
    ("model", "block_size"),
    ("data",),
    ("data", "corpus_path"),
    ("data", "val_fraction"),
    ("training",),
    ("training", "max_steps"),
    ("training", "batch_size"),
    ("training", "learning_rate"),
    ("training", "betas"),
    ("progress", "every_steps"),
    ("labels",),
    ("priority",),
]
REQUIRED: list[tuple[str, ...]] = [
    ("type",),
    ("job_id",),
    ("user_id",),
    ("backend",),
    ("data",),
    ("data", "corpus_path"),
]
OUT_OF_RANGE: list[tuple[tuple[str, ...], object]] = [
    (("user_id",), -1),
    (("job_id",), "../etc/passwd"),
    (("job_id",), ""),
    (("job_id",), "x" * 200),
    (("training", "batch_size"), 0),
    (("training", "learning_rate"), -1.0),
    (("training", "max_steps"), 0),
    (("training", "max_steps"), 10**12),
    (("model", "hidden_size"), 10**9),
    (("data", "val_fraction"), 0.95),
    (("priority",), 1000),
    (("training", "betas"), [0.9]),
    (("labels",), {"": "empty key"}),
    (("backend",), "gpt3"),
    (("training", "schedule"), "exponential"),
]
# Where a huge string goes: every one of these refuses it (inline_text would accept it).
HUGE_AT: list[tuple[str, ...]] = [
    ("job_id",),
    ("backend",),
    ("type",),
    ("pad",),
    ("labels", "note"),
    ("data", "corpus_path"),
    ("data", "jsonl_field"),
    ("training", "schedule"),
    ("model", "extra"),
]
TAGS: list[tuple[str, ...]] = [("type",)]
TYPOS: dict[str, str] = {
    "job_id": "jobId",
    "user_id": "user",
    "max_steps": "max_step",
    "batch_size": "batchsize",
    "corpus_path": "corpus",
    "hidden_size": "hiden_size",
    "training": "train",
    "model": "models",
    "data": "dataset",
}
WRONG_TAGS = [
    "trainer.job.submit.v2",
    "trainer.job.cancel.v0",
    "submit",
    "",
    "TRAINER.JOB.SUBMIT.V1",
]
OTHER_TYPES: list[object] = ["a string", -5, 2.5, [], {}, None, True, [1, "two"], {"x": 1}]


def is_malformed(payload: Payload, max_bytes: int) -> bool:
    """Whether the service must dead-letter this record."""
    value, key = payload
    try:
        command = decode_command(value, max_bytes=max_bytes)
    except ModelTrainerError:
        return True
    return key != command.job_id.encode()


def _get(doc: Doc, path: tuple[str, ...]) -> object:
    node: object = doc
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _parent(doc: Doc, path: tuple[str, ...]) -> Doc:
    """The dict holding ``path``'s last part, created (or replaced) on the way."""
    node = doc
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    return node


def _set(doc: Doc, path: tuple[str, ...], value: object) -> None:
    _parent(doc, path)[path[-1]] = value


class CommandFuzzer:
    """Draws malformed commands from a seeded generator; counts the kinds it drew."""

    def __init__(
        self,
        rng: random.Random,
        template: SubmitJobV1,
        max_bytes: int,
        *,
        huge_tags: bool = True,
    ) -> None:
        self._rng = rng
        # The union tags: a refusal of an unknown tag quotes it (see the soak's README row).
        self._huge_at = HUGE_AT if huge_tags else [p for p in HUGE_AT if p not in TAGS]
        self._template = template
        self._max_bytes = max_bytes
        self.kinds: Counter[str] = Counter()
        self._mutations: list[tuple[str, float, Callable[[int], Payload]]] = [
            ("random_bytes", 15, self._random_bytes),
            ("not_an_object", 4, self._not_an_object),
            ("flipped_type", 15, self._flipped_type),
            ("dropped_field", 10, self._dropped_field),
            ("huge_string", 1.5, self._huge_string),
            ("wrong_field_name", 12, self._wrong_field_name),
            ("wrong_record_key", 10, self._wrong_record_key),
            ("truncated", 10, self._truncated),
            ("out_of_range", 10, self._out_of_range),
            ("bad_utf8", 5, self._bad_utf8),
            ("deep_nesting", 2, self._deep_nesting),
            ("wrong_type_tag", 3, self._wrong_type_tag),
            ("bad_cancel", 3, self._bad_cancel),
        ]

    def malformed(self, n: int) -> Payload:
        """The ``n``-th malformed command (job ids ``fz-<n>``, unique per payload)."""
        names = [m[0] for m in self._mutations]
        weights = [m[1] for m in self._mutations]
        for _ in range(50):
            index = self._rng.choices(range(len(names)), weights=weights)[0]
            payload = self._mutations[index][2](n)
            if is_malformed(payload, self._max_bytes):
                self.kinds[names[index]] += 1
                return payload
        self.kinds["random_bytes"] += 1
        return b"\x00not json", f"fz-{n}".encode()

    # ------------------------------------------------------------------ helpers

    def _doc(self, n: int) -> Doc:
        doc: Doc = self._template.model_dump(mode="json")
        doc["job_id"] = f"fz-{n}"
        return doc

    def _key(self, n: int) -> bytes | None:
        """Mostly the job_id (so a salvaged id gets a rejection event too), sometimes not."""
        roll = self._rng.random()
        if roll < 0.8:
            return f"fz-{n}".encode()
        if roll < 0.9:
            return None
        return self._rng.randbytes(self._rng.randint(1, 16))

    def _dumps(self, doc: object) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ mutations

    def _random_bytes(self, n: int) -> Payload:
        return self._rng.randbytes(self._rng.randint(0, 4000)), self._key(n)

    def _not_an_object(self, n: int) -> Payload:
        value = self._rng.choice([[], [self._doc(n)], 42, "submit", None, True, 3.5])
        return self._dumps(value), self._key(n)

    def _flipped_type(self, n: int) -> Payload:
        doc = self._doc(n)
        path = self._rng.choice(FIELDS)
        current = _get(doc, path)
        choices = [v for v in OTHER_TYPES if type(v) is not type(current)]
        _set(doc, path, self._rng.choice(choices))
        return self._dumps(doc), self._key(n)

    def _dropped_field(self, n: int) -> Payload:
        doc = self._doc(n)
        path = self._rng.choice(REQUIRED)
        _parent(doc, path).pop(path[-1], None)
        return self._dumps(doc), self._key(n)

    def _huge_string(self, n: int) -> Payload:
        doc = self._doc(n)
        size = self._rng.randint(50_000, 600_000)
        chunk = "".join(self._rng.choices("abcdefghijklmnopqrstuvwxyz0123456789 ", k=1024))
        _set(doc, self._rng.choice(self._huge_at), (chunk * (size // 1024 + 1))[:size])
        return self._dumps(doc), self._key(n)

    def _wrong_field_name(self, n: int) -> Payload:
        doc = self._doc(n)
        if self._rng.random() < 0.5:
            for name, typo in self._rng.sample(sorted(TYPOS.items()), k=len(TYPOS)):
                for holder in (doc, doc.get("training"), doc.get("data"), doc.get("model")):
                    if isinstance(holder, dict) and name in holder:
                        holder[typo] = holder.pop(name)
                        return self._dumps(doc), self._key(n)
        where = self._rng.choice([(), ("training",), ("data",), ("model",), ("progress",)])
        _set(doc, (*where, f"unknown_{self._rng.randint(0, 999)}"), self._rng.choice(OTHER_TYPES))
        return self._dumps(doc), self._key(n)

    def _wrong_record_key(self, n: int) -> Payload:
        """A valid command whose record key is not its job_id."""
        command: SubmitJobV1 | CancelJobV1
        if self._rng.random() < 0.7:
            command = SubmitJobV1.model_validate(self._doc(n))
        else:
            command = CancelJobV1(job_id=f"fz-{n}", reason="fuzz")
        key = self._rng.choice([None, b"", f"fz-{n + 1}".encode(), f"FZ-{n}".encode()])
        return encode(command), key

    def _truncated(self, n: int) -> Payload:
        raw = self._dumps(self._doc(n))
        return raw[: self._rng.randint(1, len(raw) - 1)], self._key(n)

    def _out_of_range(self, n: int) -> Payload:
        doc = self._doc(n)
        path, value = self._rng.choice(OUT_OF_RANGE)
        _set(doc, path, value)
        raw = self._dumps(doc)
        if self._rng.random() < 0.1:  # a token strict JSON refuses
            raw = raw.replace(b'"learning_rate":0.001', b'"learning_rate":NaN')
        return raw, self._key(n)

    def _bad_utf8(self, n: int) -> Payload:
        raw = self._dumps(self._doc(n))
        at = self._rng.randint(0, len(raw))
        bad = self._rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28"])
        return raw[:at] + bad + raw[at:], self._key(n)

    def _deep_nesting(self, n: int) -> Payload:
        depth = self._rng.randint(100, 50_000)
        head = self._dumps(self._doc(n))[:-1]
        return head + b',"deep":' + b"[" * depth + b"]" * depth + b"}", self._key(n)

    def _wrong_type_tag(self, n: int) -> Payload:
        doc = self._doc(n)
        doc["type"] = self._rng.choice(WRONG_TAGS)
        return self._dumps(doc), self._key(n)

    def _bad_cancel(self, n: int) -> Payload:
        doc: Doc = {"type": "trainer.job.cancel.v1", "job_id": f"fz-{n}", "reason": "fuzz"}
        path, value = self._rng.choice(
            [
                (("reason",), "r" * 600),
                (("job_id",), ".hidden"),
                (("job_id",), None),
                (("extra",), 1),
                (("reason",), 12),
            ]
        )
        _set(doc, path, value)
        return self._dumps(doc), self._key(n)


# ---------------------------------------------------------------------------- hostile

Routed = tuple[bytes, bytes | None, int | None]  # (value, record key, partition: None = key's)

# Names under the data root that :func:`make_hostile_tree` creates.
SELF_LOOP = "loop-self"  # -> itself
PAIR_LOOP = ("loop-a", "loop-b")  # -> each other
DIR_CYCLE = "cycle"  # a folder holding back -> ..
OUTSIDE = "outside"  # -> /etc
DEV_ZERO = "zero"  # -> /dev/zero
EMPTY_DIR = "empty"
LOCKED_DIR = "locked"  # mode 000 (no refusal where the service runs as root)
UNICODE_PATHS = [
    "données/корпус.txt",
    "\u202etxt.suproc",  # right-to-left override
    "e\u0301.txt",  # NFD é
    "\u00e9.txt",  # NFC é
    "\U0001f600/\U0001f4a9.txt",
    "zero\u200bwidth.txt",
    "\ud800.txt",  # lone surrogates: not encodable as a file name
    "\udcff",
    "\ufeffcorpus.txt",
    "con",
    "corpus.txt\n",
    " corpus.txt",
]
ABSOLUTE_PATHS = ["/etc/passwd", "/", "//etc//passwd", "/dev/zero", "/proc/self/environ", "/tmp"]
DOTDOT_PATHS = [
    "..",
    "../..",
    "../../../../../../etc/passwd",
    "a/../../corpus.txt",
    "corpus.txt/..",
    "./../data/corpus.txt",
    "cycle/back/cycle/back/..",
    "....//....//etc",
]


def make_hostile_tree(data_root: Path) -> None:
    """The symlink loops, cycles and odd folders the hostile commands point at."""
    (data_root / SELF_LOOP).symlink_to(SELF_LOOP)
    (data_root / PAIR_LOOP[0]).symlink_to(PAIR_LOOP[1])
    (data_root / PAIR_LOOP[1]).symlink_to(PAIR_LOOP[0])
    (data_root / DIR_CYCLE).mkdir()
    (data_root / DIR_CYCLE / "back").symlink_to("..")
    (data_root / OUTSIDE).symlink_to("/etc")
    (data_root / DEV_ZERO).symlink_to("/dev/zero")
    (data_root / EMPTY_DIR).mkdir()
    (data_root / LOCKED_DIR).mkdir()
    (data_root / LOCKED_DIR / "corpus.txt").write_text("locked away")
    (data_root / LOCKED_DIR).chmod(0)


class HostileCommands:
    """Commands the contracts accept (or refuse only for a size they bound) with hostile
    values: paths that are too long, hold a NUL, loop, leave the data root or do not encode;
    10,000 labels; record keys up to 900 KB; unicode; records on the wrong partition; cancels
    of unknown jobs; duplicates. Job ids ``px-<n>``; a submit that would be accepted trains
    for the template's few steps. Counts the kinds it drew."""

    def __init__(self, rng: random.Random, template: SubmitJobV1, partitions: int) -> None:
        self._rng = rng
        self._template = template
        self._partitions = partitions
        self._sent: list[Routed] = []
        self.kinds: Counter[str] = Counter()
        self._kinds: list[tuple[str, float, Callable[[int], Routed]]] = [
            ("long_component", 12, self._long_component),
            ("nul_in_path", 8, self._nul_in_path),
            ("symlink_loop", 10, self._symlink_loop),
            ("absolute_path", 6, self._absolute_path),
            ("dotdot", 6, self._dotdot),
            ("odd_folder", 4, self._odd_folder),
            ("unicode", 10, self._unicode),
            ("many_labels", 4, self._many_labels),
            ("huge_key", 1, self._huge_key),
            ("wrong_partition", 8, self._wrong_partition),
            ("unknown_reference", 6, self._unknown_reference),
            ("cancel_unknown", 10, self._cancel_unknown),
            ("duplicate", 10, self._duplicate),
        ]

    def command(self, n: int) -> Routed:
        """The ``n``-th hostile command."""
        names = [k[0] for k in self._kinds]
        index = self._rng.choices(range(len(names)), weights=[k[1] for k in self._kinds])[0]
        name = names[index]
        if name == "duplicate" and not self._sent:
            name, index = "cancel_unknown", names.index("cancel_unknown")
        routed = self._kinds[index][2](n)
        self.kinds[name] += 1
        self._sent.append(routed)
        return routed

    # ------------------------------------------------------------------ helpers

    def _doc(self, n: int) -> Doc:
        doc: Doc = self._template.model_dump(mode="json")
        doc["job_id"] = f"px-{n}"
        return doc

    def _submit(self, doc: Doc) -> Routed:
        """Keyed by its job_id, on the key's partition."""
        return json.dumps(doc).encode(), str(doc["job_id"]).encode(), None

    def _path(self, n: int, path: str) -> Routed:
        """``path`` as the corpus, or now and then as a pretrained model's folder."""
        doc = self._doc(n)
        if self._rng.random() < 0.2:
            doc["backend"] = "pretrained"
            doc["model"] = {"backend": "pretrained", "path": path}
            doc.pop("tokenizer", None)
        else:
            _set(doc, ("data", "corpus_path"), path)
            if self._rng.random() < 0.2:
                _set(doc, ("data", "format"), "jsonl")
        return self._submit(doc)

    # ------------------------------------------------------------------ kinds

    def _long_component(self, n: int) -> Routed:
        long = self._rng.choice("ab_") * self._rng.choice([256, 300, 1000])
        where = self._rng.choice([f"{long}", f"d/{long}", f"{long}/corpus.txt", f"{long}.txt"])
        return self._path(n, where[:1024])

    def _nul_in_path(self, n: int) -> Routed:
        return self._path(n, self._rng.choice(["\x00", "corpus.txt\x00", "cor\x00pus.txt"]))

    def _symlink_loop(self, n: int) -> Routed:
        loop = self._rng.choice([SELF_LOOP, *PAIR_LOOP])
        return self._path(n, self._rng.choice([loop, f"{loop}/corpus.txt", f"{loop}/x/y"]))

    def _absolute_path(self, n: int) -> Routed:
        return self._path(n, self._rng.choice(ABSOLUTE_PATHS))

    def _dotdot(self, n: int) -> Routed:
        return self._path(n, self._rng.choice(DOTDOT_PATHS))

    def _odd_folder(self, n: int) -> Routed:
        odd = [DIR_CYCLE, f"{DIR_CYCLE}/back", OUTSIDE, DEV_ZERO, EMPTY_DIR, LOCKED_DIR]
        return self._path(n, self._rng.choice(odd))

    def _unicode(self, n: int) -> Routed:
        doc = self._doc(n)
        path = self._rng.choice(UNICODE_PATHS)
        _set(doc, ("data", "corpus_path"), path)
        doc["labels"] = {path[:64] or "k": "\u202e\U0001f600\x00" * 10}
        # ensure_ascii: lone surrogates go out as \ud800 escapes, as other clients send them.
        return (
            json.dumps(doc, ensure_ascii=self._rng.random() < 0.5).encode(errors="surrogatepass"),
            f"px-{n}".encode(),
            None,
        )

    def _many_labels(self, n: int) -> Routed:
        doc = self._doc(n)
        count = self._rng.choice([33, 1000, 10_000])
        longest = 256 if count < 1000 else 64  # 10,000 of 256 would pass the record limit
        doc["labels"] = {f"l{i}": "v" * self._rng.randint(0, longest) for i in range(count)}
        return self._submit(doc)

    def _huge_key(self, n: int) -> Routed:
        """A valid command whose record key (up to 900 KB) cannot be its job_id."""
        size = self._rng.randint(1_000, 900_000)
        value = json.dumps(self._doc(n)).encode()
        if self._rng.random() < 0.3:
            value = encode(CancelJobV1(job_id=f"px-{n}", reason="hostile"))
        return value, self._rng.randbytes(size), None

    def _wrong_partition(self, n: int) -> Routed:
        """Keyed right but produced to another partition (another client's partitioner)."""
        value, key, _ = self._path(n, "corpus.txt" if self._rng.random() < 0.2 else "no-such")
        assert key is not None
        home = partition_for_key(key, self._partitions)
        shift = self._rng.randint(1, self._partitions - 1)
        return value, key, (home + shift) % self._partitions

    def _unknown_reference(self, n: int) -> Routed:
        doc = self._doc(n)
        ref = self._rng.choice([f"px-{n + 1}", "px-0", "no-such-job", "a" * 128])
        if self._rng.random() < 0.5:
            doc["backend"] = "gpt2"
            doc["model"] = {"backend": "gpt2"}
            doc["init_from"] = ref
        else:
            doc["tokenizer"] = {"kind": "job", "job_id": ref}
        return self._submit(doc)

    def _cancel_unknown(self, n: int) -> Routed:
        reason = self._rng.choice(["", "\x00", "\u202e" * 100, "r" * 512])
        value = encode(CancelJobV1(job_id=f"pxc-{n}", reason=reason))
        key = f"pxc-{n}".encode()
        if self._rng.random() < 0.3:
            home = partition_for_key(key, self._partitions)
            return value, key, (home + 1) % self._partitions
        return value, key, None

    def _duplicate(self, n: int) -> Routed:
        return self._rng.choice(self._sent)
