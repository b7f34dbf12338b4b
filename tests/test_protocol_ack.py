"""``ack_version``: the server's shortcut for acks agrees with ``decode`` wherever it answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flagwire.core.errors import ProtocolError
from flagwire.core.protocol import Ack, ack_version, decode, encode


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_every_encoded_ack_is_read(version: int) -> None:
    assert ack_version(encode(Ack(version))) == version


@given(st.binary(max_size=40) | st.integers().map(lambda n: b'{"type":"ack","version":%d}' % n))
def test_where_it_answers_the_decoder_agrees(frame: bytes) -> None:
    found = ack_version(b'{"type":"ack","version":' + frame + b"}")
    if found is None:
        return
    try:
        message = decode(b'{"type":"ack","version":' + frame + b"}")
    except ProtocolError:
        raise AssertionError(f"{frame!r}: shortcut {found}, decoder refuses") from None
    assert message == Ack(found)


def test_other_spellings_are_left_to_the_decoder() -> None:
    for frame in (
        b'{"type":"ack","version":01}',
        b'{"type":"ack","version":}',
        b'{"type":"ack", "version":1}',
        b'{"version":1,"type":"ack"}',
        b'{"type":"ack","version":1234567890123456789}',
        b'{"type":"resync"}',
    ):
        assert ack_version(frame) is None, frame
