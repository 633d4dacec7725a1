"""The message protocol: the coordinator (rank 0) and the verifiers (ranks 1..N-1), and the scheduler.

Every message is one flat numpy int64 array sent with the uppercase (buffer) mpi4py calls, with the
MPI tag equal to its kind:

    [MAGIC, kind, n_fields, n_payload, field_0 .. field_{n_fields-1}, payload_0 .. payload_{n_payload-1}]

| kind      | direction | fields                                                | payload                  |
| --------- | --------- | ----------------------------------------------------- | ------------------------ |
| TASK      | 0 -> v    | task_id, epoch, base, n_out, key, n_extras, plain, stream | tokens after `base`, extras |
| RESULT    | v -> 0    | task_id, epoch, cache_len, computed, reused, start_us, end_us, n_stages | the rule's verdict, stage records |
| ABORTED   | v -> 0    | task_id, epoch, cache_len, start_us, end_us, n_stages | stage records            |
| CANCEL    | 0 -> v    | epoch (abandon every task of an older epoch)          | task ids also to abandon |
| BASELINE  | 0 -> v    | algorithm code, max_new_tokens, stop_at_eos, lookahead, key, ngram (0: HF default) | prompt tokens |
| TOKENS    | v -> 0    | first_index, done (0/1)                               | generated tokens         |
| STOP      | 0 -> v    | (none)                                                | (none)                   |
| STREAMED  | v -> 0    | task_id, epoch, position, end_us                      | one token                |
| ACTIVATION | stage -> next stage | task_id, epoch, base, n_out, key, n_extras, n_tokens, cache_len, n_stages, dropped, n_hidden | tokens, extras, stage records, hidden states |
| SETUP     | scheduler -> coordinator | n_bytes                               | JSON: eos ids, warm-up prompts |
| REQUEST   | coordinator -> scheduler | n_bytes                               | JSON: the finished prompt's records, metadata |
| ASSIGN    | scheduler -> coordinator | n_bytes                               | JSON: the next prompt, or null: none left |
| NOTICE    | failing rank -> scheduler | code (exit status), n_bytes          | JSON: where, what failed |
| ACK       | scheduler -> failing rank | (none)                               | (none)                   |

A TASK tells the verifier to keep the first `base` tokens of its KV cache, run the target on the payload's
tokens and judge the last n_out - 1 of them (the drafts) by the acceptance rule (dsi_mpi/decoding/acceptance.py):
greedy verdicts are the target's token at each of the last `n_out` positions; sampling verdicts are the
number of drafts that stand and the target's distribution where they stop. `key` keys the random
streams (the prompt); `n_extras` trailing payload integers are the rule's extras (sampling: q(x) of each
draft, as float64 bits). `plain` > 0 (a block of no drafts, adaptive speculation at k = 0): the verifier
decodes `plain` tokens itself, as plain decoding would, and the verdict is those tokens; with `stream` = 1
(the non-SI thread's run, dsi_mpi/decoding/nonsi_thread.py) it also sends each token as a STREAMED message the
moment it is decoded (`position`: where it goes; `end_us`: when), and only a CANCEL naming the task stops it,
never a newer epoch. Each task gets exactly one reply (STREAMED messages come before it),
RESULT or ABORTED, so the coordinator always knows what every verifier's cache holds. start_us/end_us
bracket the verifier's forward on its own clock (dsi_mpi.mpi.clock; start_us = end_us: never started).
Pipelined verifier groups (dsi_mpi/decoding/pipeline.py): rank 0 sends a TASK to the group's first
stage; each stage passes the task on as one ACTIVATION (its hidden states as float32 bits, `n_hidden`
int64 words) and only the last stage replies. A stage record is 4 integers [rank, status, start_us,
end_us] (status: STAGE_COMPUTED, STAGE_ABORTED mid-forward, STAGE_DROPPED unseen), one per stage so far;
`cache_len` is the least any stage so far keeps; `dropped` = 1: an earlier stage abandoned the task, pass
the news on (no hidden states). Plain verifiers reply with n_stages = 0.
The last five are the scheduler's (runtime.instances >= 2, dsi_mpi/app/scheduler.py), on their own
communicators: their payload is UTF-8 JSON packed into int64 words (`pack_json`; `n_bytes` is its length),
read back by `unpack_json`, never by unpickling.
An epoch rises at every rejection: anything of an older epoch is stale and is dropped on sight.
Decoding checks the magic, the kind against the tag, the counts against the received size and the
field ranges, and raises ProtocolError naming the sender on any mismatch: nothing malformed is applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

MAGIC = 0x05D51
HEADER = 4


class Kind(IntEnum):
    """Message kinds (also the MPI tag); the table above says what each carries."""

    TASK = 1
    RESULT = 2
    ABORTED = 3
    CANCEL = 4
    BASELINE = 5
    TOKENS = 6
    STOP = 7
    ACTIVATION = 8
    SETUP = 9
    REQUEST = 10
    ASSIGN = 11
    NOTICE = 12
    ACK = 13
    STREAMED = 14


# The kinds at module level too (`protocol.TASK` is `Kind.TASK`, as `signal.SIGINT` is `Signals.SIGINT`).
TASK, RESULT, ABORTED, CANCEL, BASELINE, TOKENS, STOP, ACTIVATION, SETUP, REQUEST, ASSIGN, NOTICE, ACK, STREAMED = Kind
KIND_NAMES = {kind: kind.name for kind in Kind}
FIELDS = {
    TASK: ("task_id", "epoch", "base", "n_out", "key", "n_extras", "plain", "stream"),
    RESULT: ("task_id", "epoch", "cache_len", "computed", "reused", "start_us", "end_us", "n_stages"),
    ABORTED: ("task_id", "epoch", "cache_len", "start_us", "end_us", "n_stages"),
    CANCEL: ("epoch",),
    BASELINE: ("algorithm", "max_new_tokens", "stop_at_eos", "lookahead", "key", "ngram"),
    TOKENS: ("first_index", "done"),
    STOP: (),
    ACTIVATION: (
        "task_id",
        "epoch",
        "base",
        "n_out",
        "key",
        "n_extras",
        "n_tokens",
        "cache_len",
        "n_stages",
        "dropped",
        "n_hidden",
    ),
    SETUP: ("n_bytes",),
    REQUEST: ("n_bytes",),
    ASSIGN: ("n_bytes",),
    NOTICE: ("code", "n_bytes"),
    ACK: (),
    STREAMED: ("task_id", "epoch", "position", "end_us"),
}
JSON_KINDS = (SETUP, REQUEST, ASSIGN, NOTICE)
STAGE_RECORD = 4  # [rank, status, start_us, end_us]
STAGE_COMPUTED, STAGE_ABORTED, STAGE_DROPPED = 0, 1, 2
BASELINE_ALGORITHMS = {"nonsi": 1, "hf_assisted": 2, "hf_prompt_lookup": 3}


class ProtocolError(RuntimeError):
    """A malformed or unexpected message; never applied."""


@dataclass(frozen=True)
class Message:
    """A decoded message: `kind`, `payload`, and each of its kind's fields as an attribute (`msg.task_id`)."""

    kind: Kind
    fields: dict
    payload: np.ndarray

    def __post_init__(self):
        # The fields are plain instance attributes, not a __getattr__ fallback: a fallback runs only after the
        # normal lookup has failed and costs 10x a plain attribute (1.2 us each), and a task's reply is read
        # field by field on both ranks between two forwards.
        self.__dict__.update(self.fields)


def encode(kind: Kind, payload=(), **fields) -> np.ndarray:
    """Build the int64 buffer for one message; every field of the kind must be given."""
    names = FIELDS[kind]
    if set(fields) != set(names):
        raise ValueError(f"{KIND_NAMES[kind]} needs fields {names}, got {sorted(fields)}")
    payload = np.asarray(payload, dtype=np.int64).ravel()
    buf = np.empty(HEADER + len(names) + len(payload), dtype=np.int64)
    buf[:HEADER] = (MAGIC, kind, len(names), len(payload))
    buf[HEADER : HEADER + len(names)] = [int(fields[n]) for n in names]
    buf[HEADER + len(names) :] = payload
    return buf


def decode(buf: np.ndarray, tag: int, source: int) -> Message:
    """Check and unpack a received buffer; raise ProtocolError naming the sender if anything is off."""
    where = f"message from rank {source} with tag {tag}"
    kind, fields, payload = _header(buf, tag, where)
    for name, value in fields.items():
        if value < 0:
            raise ProtocolError(f"{where}: {KIND_NAMES[kind]} field {name} is negative ({value})")
    problem = _check_payload(kind, fields, len(payload))
    if problem:
        raise ProtocolError(f"{where}: {problem}")
    return Message(Kind(kind), fields, payload)


def _header(buf: np.ndarray, tag: int, where: str) -> tuple[int, dict, np.ndarray]:
    """The kind, the fields and the payload, once the header's magic, kind and counts are right."""
    if len(buf) < HEADER:
        raise ProtocolError(f"{where}: {len(buf)} integers, shorter than the {HEADER}-integer header")
    magic, kind, n_fields, n_payload = (int(x) for x in buf[:HEADER])
    if magic != MAGIC:
        raise ProtocolError(f"{where}: bad magic {magic:#x} (not a dsi-mpi message or a version mismatch)")
    if kind not in FIELDS:
        raise ProtocolError(f"{where}: unknown kind {kind}")
    if kind != tag:
        raise ProtocolError(f"{where}: kind {KIND_NAMES[kind]} does not match the tag")
    names = FIELDS[kind]
    if n_fields != len(names) or n_payload < 0 or HEADER + n_fields + n_payload != len(buf):
        raise ProtocolError(
            f"{where}: {KIND_NAMES[kind]} header says {n_fields} fields + {n_payload} "
            f"payload but {len(buf)} integers arrived"
        )
    fields = {n: int(v) for n, v in zip(names, buf[HEADER : HEADER + n_fields])}
    return kind, fields, buf[HEADER + n_fields :]


def _check_payload(kind: int, f: dict, n_payload: int) -> str | None:
    """What is wrong with a payload of this size for these fields, if anything."""
    records = STAGE_RECORD * f.get("n_stages", 0)
    if kind == TASK and (f["n_out"] < 1 or f["n_out"] + f["n_extras"] > n_payload):
        return f"TASK asks for {f['n_out']} outputs and {f['n_extras']} extras from a payload of {n_payload}"
    if kind == RESULT and n_payload < 1 + records:
        return "RESULT carries no tokens"
    if kind == STREAMED and n_payload != 1:
        return f"STREAMED carries {n_payload} tokens, not one"
    if kind == TASK and f["stream"] and not f["plain"]:
        return "TASK streams a run of no tokens (stream = 1 needs plain > 0)"
    if kind == ABORTED and n_payload != records:
        return f"ABORTED carries {n_payload} integers for {f['n_stages']} stage records"
    if kind == ACTIVATION:
        parts = f["n_tokens"] + f["n_extras"] + records + f["n_hidden"]
        if parts != n_payload or f["n_out"] < 1 or not f["dropped"] and f["n_out"] > f["n_tokens"]:
            return f"ACTIVATION parts ({parts} integers, n_out {f['n_out']}) do not fit"
    if kind in JSON_KINDS and n_payload != -(-f["n_bytes"] // 8):
        return f"{KIND_NAMES[kind]} says {f['n_bytes']} bytes but carries {n_payload} integers"
    return None


def pack_json(value: Any) -> tuple[np.ndarray, int]:
    """A JSON value as (int64 words, its length in bytes): the payload and n_bytes of the scheduler's kinds.
    NaN travels as JSON's NaN; numpy numbers as Python's."""
    data = json.dumps(value, default=_plain).encode()
    return np.frombuffer(data + b"\0" * (-len(data) % 8), dtype=np.int64), len(data)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def unpack_json(msg: Message) -> Any:
    """The JSON value of a scheduler message (ProtocolError if it is not JSON)."""
    data = np.ascontiguousarray(msg.payload, dtype=np.int64).tobytes()[: msg.n_bytes]
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"{KIND_NAMES[msg.kind]} message is not JSON: {err}") from None
