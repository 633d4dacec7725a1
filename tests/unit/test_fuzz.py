"""Fuzzing the two parsers that face the outside: the message decoder and the config loader. Whatever
arrives, the answer is a decoded message / a validated config, or ProtocolError / ConfigError: never
another exception, never a silently wrong value."""

import string
from typing import get_origin

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dsi_mpi.io.config import KEYS, ConfigError, load_config, validate
from dsi_mpi.mpi import protocol

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=400, deadline=None)
@given(st.lists(int64s, max_size=24), st.integers(min_value=0, max_value=12), st.integers(0, 9))
def test_decoder_never_misbehaves(values, tag, source):
    buf = np.array(values, dtype=np.int64)
    try:
        msg = protocol.decode(buf, tag, source)
    except protocol.ProtocolError as err:
        assert f"rank {source}" in str(err)
        return
    assert msg.kind == tag and len(msg.fields) == len(protocol.FIELDS[msg.kind])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(protocol.FIELDS)), st.lists(st.integers(0, 2**40), max_size=8), st.data())
def test_valid_messages_survive_corruption_detection(kind, payload, data):
    fields = {name: data.draw(st.integers(0, 2**40)) for name in protocol.FIELDS[kind]}
    if kind == protocol.TASK:
        payload = payload or [1]
        fields["n_out"] = data.draw(st.integers(1, len(payload)))
        fields["n_extras"] = data.draw(st.integers(0, len(payload) - fields["n_out"]))
        fields["stream"] = int(fields["plain"] > 0 and fields["stream"] % 2)
    if kind == protocol.STREAMED:  # one token
        payload = payload[:1] or [1]
    if kind in (protocol.RESULT, protocol.ABORTED, protocol.ACTIVATION):  # no stage records here
        fields["n_stages"] = 0
    if kind == protocol.RESULT:
        payload = payload or [1]
    if kind == protocol.ABORTED:
        payload = []
    if kind in protocol.JSON_KINDS:  # n_bytes fits the words it comes in
        fields["n_bytes"] = 8 * len(payload) - data.draw(st.integers(0, 7 if payload else 0))
    if kind == protocol.ACTIVATION:
        payload = payload or [1]
        fields.update(
            n_extras=0, n_hidden=0, n_tokens=len(payload), n_out=data.draw(st.integers(1, max(len(payload), 1)))
        )
    buf = protocol.encode(kind, payload, **fields)
    assert protocol.decode(buf, kind, 1).fields == fields
    cut = data.draw(st.integers(0, len(buf) - 1))
    try:
        protocol.decode(buf[:cut], kind, 1)
        raise AssertionError("a truncated message was accepted")
    except protocol.ProtocolError:
        pass


toml_scalars = st.one_of(
    st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(string.ascii_letters + "/._-", max_size=12),
    st.lists(st.sampled_from(["nonsi", "si", "dsi", "hf_assisted", "x"]), max_size=4),
)
sections = st.sampled_from(sorted({k.section for k in KEYS}) + ["bogus"])
names = st.sampled_from(sorted({k.name for k in KEYS}) + ["bogus"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(sections, st.dictionaries(names, toml_scalars, max_size=4), max_size=4))
def test_config_validation_never_misbehaves(raw):
    try:
        cfg = validate(raw)
    except ConfigError as err:
        assert str(err)
        return
    for key in KEYS:
        value = cfg.values[key.section][key.name]
        assert isinstance(value, get_origin(key.type) or key.type), (key, value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_config_text_never_misbehaves(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError:
        pass
