import numpy as np
import pytest

from dsi_mpi.mpi import protocol
from dsi_mpi.mpi.protocol import ProtocolError, decode, encode


def test_round_trip_every_kind():
    fields = {
        protocol.TASK: dict(task_id=3, epoch=2, base=10, n_out=2, key=4, n_extras=0, plain=0, stream=0),
        protocol.RESULT: dict(
            task_id=3, epoch=2, cache_len=13, computed=3, reused=10, start_us=5, end_us=99, n_stages=0
        ),
        protocol.ABORTED: dict(task_id=3, epoch=2, cache_len=10, start_us=7, end_us=7, n_stages=0),
        protocol.CANCEL: dict(epoch=4),
        protocol.BASELINE: dict(algorithm=1, max_new_tokens=8, stop_at_eos=1, lookahead=5, key=0, ngram=3),
        protocol.TOKENS: dict(first_index=0, done=1),
        protocol.STOP: {},
        protocol.ACTIVATION: dict(
            zip(protocol.FIELDS[protocol.ACTIVATION], (3, 2, 1, 2, 0, 0, 2, 4, 0, 0, 1), strict=True)
        ),
        protocol.SETUP: dict(n_bytes=20),
        protocol.REQUEST: dict(n_bytes=24),
        protocol.ASSIGN: dict(n_bytes=17),
        protocol.NOTICE: dict(code=2, n_bytes=19),
        protocol.ACK: {},
        protocol.STREAMED: dict(task_id=3, epoch=2, position=17, end_us=123),
    }
    for kind, f in fields.items():
        payload = (
            [5, 6, 7] if kind in (protocol.TASK, protocol.RESULT, protocol.ACTIVATION, *protocol.JSON_KINDS) else []
        )
        payload = [9] if kind == protocol.STREAMED else payload
        msg = decode(encode(kind, payload, **f), kind, 1)
        assert msg.kind == kind and msg.fields == f and msg.payload.tolist() == payload


def test_missing_field_refused_at_encode():
    with pytest.raises(ValueError):
        encode(protocol.CANCEL)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda b: b.__setitem__(0, 1), "bad magic"),
        (lambda b: b.__setitem__(1, 99), "unknown kind"),
        (lambda b: b.__setitem__(3, 9), "header says"),
        (lambda b: b.__setitem__(5, -1), "negative"),
    ],
)
def test_malformed_messages_are_refused(mutate, words):
    buf = encode(protocol.TASK, [1, 2, 3], task_id=1, epoch=0, base=0, n_out=2, key=0, n_extras=0, plain=0, stream=0)
    mutate(buf)
    with pytest.raises(ProtocolError, match=words):
        decode(buf, protocol.TASK, 2)


def test_tag_must_match_kind_and_sender_is_named():
    buf = encode(protocol.CANCEL, epoch=1)
    with pytest.raises(ProtocolError, match="rank 3"):
        decode(buf, protocol.TASK, 3)


def test_task_cannot_ask_more_outputs_than_tokens():
    buf = encode(protocol.TASK, [1, 2], task_id=1, epoch=0, base=0, n_out=3, key=0, n_extras=0, plain=0, stream=0)
    with pytest.raises(ProtocolError, match="outputs"):
        decode(buf, protocol.TASK, 1)


def test_truncated_buffer():
    with pytest.raises(ProtocolError, match="shorter"):
        decode(np.zeros(2, dtype=np.int64), protocol.TASK, 1)


def test_stage_records_must_fit():
    """A pipelined reply carries one 4-integer record per stage after the verdict; ABORTED only those."""
    f = dict(task_id=1, epoch=0, cache_len=3, start_us=0, end_us=1, n_stages=2)
    assert decode(encode(protocol.ABORTED, [0] * 8, **f), protocol.ABORTED, 2).n_stages == 2
    with pytest.raises(ProtocolError, match="stage records"):
        decode(encode(protocol.ABORTED, [0] * 7, **f), protocol.ABORTED, 2)
    with pytest.raises(ProtocolError, match="no tokens"):
        decode(encode(protocol.RESULT, [0] * 8, computed=1, reused=0, **f), protocol.RESULT, 2)
    act = dict(task_id=1, epoch=0, base=0, n_out=1, key=0, n_extras=0, n_tokens=2, cache_len=0, n_stages=1)
    with pytest.raises(ProtocolError, match="do not fit"):
        decode(encode(protocol.ACTIVATION, [0] * 7, dropped=0, n_hidden=2, **act), protocol.ACTIVATION, 2)


def test_the_schedulers_messages_carry_json_exactly():
    """Records travel to the scheduler as JSON (never pickled): every float as it was, NaN included."""
    from dsi_mpi.io.records import RunRecord

    record = RunRecord("dsi", 3, "p3", tokens=[5, 6], commit_times=[0.1, 1 / 3])
    record.tasks.append((0, 1, 0, 8, 2, 0, 3, 0, 0.25, float("nan"), 2.0, 2.5, 1e-9, 1, 2))
    value = {"done": [3, [record.to_message()]], "metadata": {"clock_offsets_us": {1: -5}}}
    words, n_bytes = protocol.pack_json(value)
    msg = decode(encode(protocol.REQUEST, words, n_bytes=n_bytes), protocol.REQUEST, 1)
    back = protocol.unpack_json(msg)
    again = RunRecord.from_message(back["done"][1][0])
    assert again.commit_times == record.commit_times and again.tasks[0][:9] == record.tasks[0][:9]
    assert np.isnan(again.tasks[0][9]) and again.task_table().tobytes() != b""
    assert back["metadata"] == {"clock_offsets_us": {"1": -5}}
    with pytest.raises(ProtocolError, match="says 30 bytes"):
        decode(encode(protocol.SETUP, words, n_bytes=30), protocol.SETUP, 1)
    bad = decode(encode(protocol.SETUP, [0x7B7B7B7B], n_bytes=4), protocol.SETUP, 1)
    with pytest.raises(ProtocolError, match="not JSON"):
        protocol.unpack_json(bad)


def test_a_streamed_message_carries_one_token_and_a_stream_has_tokens_to_decode():
    f = dict(task_id=1, epoch=0, position=9, end_us=5)
    with pytest.raises(ProtocolError, match="not one"):
        decode(encode(protocol.STREAMED, [4, 5], **f), protocol.STREAMED, 2)
    task = dict(task_id=1, epoch=0, base=0, n_out=1, key=0, n_extras=0, plain=0, stream=1)
    with pytest.raises(ProtocolError, match="no tokens"):
        decode(encode(protocol.TASK, [4], **task), protocol.TASK, 0)
