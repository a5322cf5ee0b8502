"""Every (member state x incoming message x incarnation order) transition of Swim,
about another member and about ourselves, against the precedence table in
ringfs/gossip/swim.py and docs/gossip.md."""

from __future__ import annotations

import random

import pytest

from ringfs.gossip import GossipConfig, MemberInfo, Swim
from ringfs.gossip import messages as wire

SRC = "10.0.0.99:7000"
INC = 5  # the incarnation our record holds
STATES = ("alive", "suspect", "dead", "left")
MESSAGES = ("alive", "suspect", "dead", "left")
ORDERS = {"lower": INC - 1, "equal": INC, "higher": INC + 1}

# (state, message, order) -> (new state, new incarnation, event kind or None);
# combinations missing here leave the record unchanged and emit nothing.
EXPECTED: dict[tuple[str, str, str], tuple[str, int, str | None]] = {
    ("alive", "alive", "higher"): ("alive", INC + 1, None),
    ("suspect", "alive", "higher"): ("alive", INC + 1, "alive"),
    ("dead", "alive", "higher"): ("alive", INC + 1, "join"),
    ("left", "alive", "higher"): ("alive", INC + 1, "join"),
    ("alive", "suspect", "equal"): ("suspect", INC, "suspect"),
    ("alive", "suspect", "higher"): ("suspect", INC + 1, "suspect"),
    ("suspect", "suspect", "equal"): ("suspect", INC, None),
    ("suspect", "suspect", "higher"): ("suspect", INC + 1, None),
    ("alive", "dead", "equal"): ("dead", INC, "dead"),
    ("alive", "dead", "higher"): ("dead", INC + 1, "dead"),
    ("suspect", "dead", "equal"): ("dead", INC, "dead"),
    ("suspect", "dead", "higher"): ("dead", INC + 1, "dead"),
    ("alive", "left", "equal"): ("left", INC, "left"),
    ("alive", "left", "higher"): ("left", INC + 1, "left"),
    ("suspect", "left", "equal"): ("left", INC, "left"),
    ("suspect", "left", "higher"): ("left", INC + 1, "left"),
    ("dead", "left", "equal"): ("left", INC, "left"),
    ("dead", "left", "higher"): ("left", INC + 1, "left"),
}


def encode(kind: str, inc: int, name: str, address: str = "10.0.0.2:7000") -> bytes:
    if kind == "alive":
        part = wire.encode_alive(inc, name, address, {})
    elif kind == "suspect":
        part = wire.encode_suspect(inc, name, "accuser")
    elif kind == "dead":
        part = wire.encode_dead(inc, name, "accuser")
    else:
        part = wire.encode_left(inc, name)
    return wire.build_packet([part])


def make(incarnation: int = 0) -> Swim:
    return Swim(
        GossipConfig.lan(),
        "me",
        "10.0.0.1:7000",
        random.Random(1),
        0.0,
        incarnation=incarnation,
    )


def drain_events(s: Swim) -> list[str]:
    kinds = []
    while (ev := s.next_event()) is not None:
        kinds.append(ev.kind)
    return kinds


def with_member_in(state: str) -> Swim:
    s = make()
    s.bootstrap([MemberInfo("x", "10.0.0.2:7000", INC, "alive", {})], 0.0)
    # Two more members so the cluster is not trivially small.
    s.bootstrap([MemberInfo(f"y{i}", f"10.0.1.{i}:7000", 0, "alive", {}) for i in range(3)], 0.0)
    if state != "alive":
        s.receive_packet(encode(state, INC, "x"), SRC, 1.0)
    assert s.state_of("x") == state
    drain_events(s)
    return s


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize("state", STATES)
def test_transition_about_other(state: str, message: str, order: str) -> None:
    s = with_member_in(state)
    s.receive_packet(encode(message, ORDERS[order], "x"), SRC, 2.0)
    new_state, new_inc, event = EXPECTED.get((state, message, order), (state, INC, None))
    info = s.member("x")
    assert info is not None
    assert (info.state, info.incarnation) == (new_state, new_inc)
    assert drain_events(s) == ([event] if event else [])
    s.check_invariants()
    assert s.stats.dropped_malformed == 0 and s.stats.malformed_messages == 0


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("message", MESSAGES)
def test_transition_about_self(message: str, order: str) -> None:
    s = make(incarnation=INC)
    j = ORDERS[order]
    # An alive message about us at our own incarnation and address is no news; a
    # different address at the same incarnation is a conflicting view and refuted.
    s.receive_packet(encode(message, j, "me", address="10.0.0.1:7000"), SRC, 1.0)
    refutes = j > INC if message == "alive" else j >= INC
    assert s.incarnation == (max(INC, j) + 1 if refutes else INC)
    assert s.state_of("me") == "alive"
    assert s.stats.refutations == (1 if refutes else 0)
    if refutes:
        # The refutation is queued and goes out with the next datagram.
        assert s.broadcasts_pending == 1
    s.check_invariants()


def test_alive_conflicting_address_at_equal_incarnation_is_refuted() -> None:
    s = make(incarnation=INC)
    s.receive_packet(encode("alive", INC, "me", address="10.9.9.9:7000"), SRC, 1.0)
    assert s.incarnation == INC + 1


@pytest.mark.parametrize("message", ("suspect", "dead", "left"))
def test_leaving_member_does_not_refute(message: str) -> None:
    s = make(incarnation=INC)
    s.leave(1.0)
    s.receive_packet(encode(message, INC + 3, "me"), SRC, 2.0)
    assert s.incarnation == INC and s.state_of("me") == "left"


def test_alive_with_new_metadata_is_an_update() -> None:
    s = with_member_in("alive")
    part = wire.encode_alive(INC + 1, "x", "10.0.0.2:7000", {"zone": "b"})
    s.receive_packet(wire.build_packet([part]), SRC, 2.0)
    assert drain_events(s) == ["update"]
    info = s.member("x")
    assert info is not None and info.meta == {"zone": "b"}


@pytest.mark.parametrize("message", ("suspect", "dead", "left"))
def test_unknown_member_only_joins_through_alive(message: str) -> None:
    s = make()
    s.receive_packet(encode(message, 3, "ghost"), SRC, 1.0)
    assert s.member("ghost") is None
    s.receive_packet(encode("alive", 3, "ghost"), SRC, 1.0)
    assert s.state_of("ghost") == "alive" and drain_events(s) == ["join"]
