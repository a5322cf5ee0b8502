"""The gossip wire codec: round trips, limits, and fuzzing of the receive paths."""

from __future__ import annotations

import random

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from ringfs.gossip import GossipConfig, Keyring, Swim
from ringfs.gossip import messages as wire
from ringfs.gossip.messages import Limits

LIMITS = Limits()


def make(keyring: Keyring | None = None) -> Swim:
    s = Swim(GossipConfig.lan(), "me", "10.0.0.1:7000", random.Random(3), 0.0, keyring=keyring)
    s.join([], 0.0)
    return s


def test_every_message_round_trips() -> None:
    parts = [
        wire.encode_ping(1, "a"),
        wire.encode_ping_req(2, "b", "h:1", True),
        wire.encode_ack(3),
        wire.encode_nack(4),
        wire.encode_suspect(5, "c", "d"),
        wire.encode_alive(6, "e", "host:9", {"zone": "z", "cap": 2, "w": 0.5}),
        wire.encode_dead(7, "f", "g"),
        wire.encode_left(8, "h"),
    ]
    msgs, bad = wire.decode_packet(wire.build_packet(parts), LIMITS)
    assert bad == 0
    assert msgs == [
        wire.Ping(1, "a"),
        wire.PingReq(2, "b", "h:1", True),
        wire.Ack(3),
        wire.Nack(4),
        wire.Suspect(5, "c", "d"),
        wire.Alive(6, "e", "host:9", {"zone": "z", "cap": 2, "w": 0.5}),
        wire.Dead(7, "f", "g"),
        wire.Left(8, "h"),
    ]


def test_bad_messages_are_skipped_not_fatal() -> None:
    parts = [
        msgpack.packb([0, -1, "a"]),  # negative seq
        msgpack.packb([5, 1, "x" * 500, "h:1", {}]),  # name too long
        msgpack.packb([5, 1, "x", "no-port", {}]),  # bad address
        msgpack.packb([5, 1, "x", "h:1", {"k": [1]}]),  # bad meta value
        msgpack.packb([99, "future"]),  # unknown type: skipped silently
        wire.encode_ack(9),
    ]
    msgs, bad = wire.decode_packet(wire.build_packet(parts), LIMITS)
    assert msgs == [wire.Ack(9)] and bad == 4


def test_push_pull_round_trip_and_entry_validation() -> None:
    states = [wire.StateEntry("a", "h:1", 3, 1, {"z": 1})]
    data = wire.encode_push_pull(7, "me", "h:2", True, False, states)
    pp = wire.decode_push_pull(data, LIMITS)
    assert (pp.seq, pp.name, pp.address, pp.join, pp.reply) == (7, "me", "h:2", True, False)
    assert [wire.parse_state_entry(e, LIMITS) for e in pp.states] == states


def test_oversized_metadata_is_refused() -> None:
    meta = {f"k{i}": "v" * 40 for i in range(20)}
    part = wire.encode_alive(1, "x", "h:1", meta)
    msgs, bad = wire.decode_packet(wire.build_packet([part]), LIMITS)
    assert msgs == [] and bad == 1


@given(st.binary(max_size=2000))
def test_arbitrary_datagrams_never_raise(data: bytes) -> None:
    s = make()
    s.receive_packet(data, "10.0.0.2:7000", 1.0)
    s.receive_stream(data, "10.0.0.2:7000", 1.0)
    s.check_invariants()


scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
field = (
    scalar | st.lists(scalar, max_size=4) | st.dictionaries(st.text(max_size=8), scalar, max_size=4)
)
# A message: a plausible type number followed by arbitrary fields.
raw_message = st.tuples(st.integers(0, 9), st.lists(field, max_size=6)).map(lambda t: [t[0], *t[1]])


@given(st.lists(raw_message, max_size=8))
def test_structured_garbage_never_raises(raw_messages: list[list[object]]) -> None:
    s = make()
    data = msgpack.packb(raw_messages)
    s.receive_packet(data, "10.0.0.2:7000", 1.0)
    s.receive_stream(
        msgpack.packb([8, 1, "peer", "10.0.0.2:7000", False, False, raw_messages]),
        "10.0.0.2:7000",
        1.0,
    )
    s.handle_timer(100.0)
    s.check_invariants()


@given(st.binary(max_size=300))
def test_garbage_under_encryption_is_counted_as_bad_auth(data: bytes) -> None:
    s = make(Keyring([b"k" * 32]))
    s.receive_packet(data, "10.0.0.2:7000", 1.0)
    assert s.stats.dropped_bad_auth == 1
