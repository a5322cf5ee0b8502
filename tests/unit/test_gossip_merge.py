"""Merging a push-pull state, and restoring a saved view: members we never knew
that the sender holds suspect or dead are recorded in that state (with the
address and metadata the entry carries), so that a member joining or restarting
while another is down still places it on its ring."""

from __future__ import annotations

import random
from dataclasses import replace

from ringfs.gossip import GossipConfig, MemberInfo, SendStream, Swim
from ringfs.gossip import messages as wire
from ringfs.gossip.member import ALIVE, DEAD, LEFT, SUSPECT
from simulations.gossip_sim import GossipWorld

LAN = GossipConfig.lan()
ME = "10.0.0.1:7000"
PEER = "10.0.0.2:7000"
X = "10.0.0.9:7000"


def make(cfg: GossipConfig = LAN) -> Swim:
    s = Swim(cfg, "me", ME, random.Random(1), 0.0)
    s.bootstrap([MemberInfo("peer", PEER, 0, "alive", {})], 0.0)
    events(s)
    return s


def events(s: Swim) -> list[tuple[str, str, str]]:
    out = []
    while (ev := s.next_event()) is not None:
        out.append((ev.kind, ev.member.name, ev.member.state))
    return out


def push(s: Swim, entries: list[wire.StateEntry], now: float) -> None:
    """A push-pull from `peer` holding `entries` (besides itself, alive)."""
    states = [wire.StateEntry("peer", PEER, 0, ALIVE, {}), *entries]
    s.receive_stream(wire.encode_push_pull(1, "peer", PEER, False, False, states), PEER, now)
    s.check_invariants()


def test_an_unknown_dead_member_is_recorded_dead_with_address_and_meta() -> None:
    s = make()
    push(s, [wire.StateEntry("x", X, 3, DEAD, {"zone": "b", "capacity": 2})], 1.0)
    info = s.member("x")
    assert info is not None
    assert (info.state, info.incarnation, info.address) == ("dead", 3, X)
    assert dict(info.meta) == {"zone": "b", "capacity": 2}
    assert events(s) == [("dead", "x", "dead")]
    assert s.num_live == 2  # ourselves and peer: a dead member is not live
    # Nothing about it is re-broadcast (it is old news), and it is never probed.
    assert s.broadcasts_pending == 0
    t = 1.0
    while t < 20.0:
        t += 0.5
        s.handle_timer(t)
        for out in s.drain_outbox():
            if isinstance(out, SendStream):
                continue
            msgs, _ = wire.decode_packet(out.data, wire.Limits())
            assert not any(isinstance(m, wire.Ping) and m.target == "x" for m in msgs)
    s.check_invariants()


def test_an_unknown_suspect_member_is_suspected_and_dies_unrefuted() -> None:
    s = make()
    push(s, [wire.StateEntry("x", X, 2, SUSPECT, {})], 1.0)
    assert s.state_of("x") == "suspect"
    assert events(s) == [("suspect", "x", "suspect")]
    assert s.num_live == 3
    deadline = s.next_deadline()
    assert deadline is not None
    t = 1.0
    while s.state_of("x") == "suspect" and t < 60.0:
        t += 0.5
        s.handle_timer(t)
        s.drain_outbox()
    assert s.state_of("x") == "dead"
    assert [e for e in events(s) if e[1] == "x"] == [("dead", "x", "dead")]
    s.check_invariants()


def test_a_learned_dead_member_rejoins_with_a_higher_incarnation() -> None:
    s = make()
    push(s, [wire.StateEntry("x", X, 3, DEAD, {})], 1.0)
    events(s)
    push(s, [wire.StateEntry("x", X, 3, ALIVE, {})], 2.0)
    assert s.state_of("x") == "dead"  # equal incarnation: dead beats alive
    push(s, [wire.StateEntry("x", X, 4, ALIVE, {})], 3.0)
    assert s.state_of("x") == "alive"
    assert events(s) == [("join", "x", "alive")]


def test_a_known_member_dead_in_the_remote_state_is_only_suspected() -> None:
    s = make()
    push(s, [wire.StateEntry("x", X, 0, ALIVE, {})], 1.0)
    events(s)
    push(s, [wire.StateEntry("x", X, 0, DEAD, {})], 2.0)
    assert s.state_of("x") == "suspect"
    assert events(s) == [("suspect", "x", "suspect")]


def test_unknown_left_members_and_gossip_about_unknown_members_are_ignored() -> None:
    s = make()
    push(s, [wire.StateEntry("x", X, 1, LEFT, {})], 1.0)
    for part in (wire.encode_dead(1, "y", "peer"), wire.encode_suspect(1, "z", "peer")):
        s.receive_packet(wire.build_packet([part]), PEER, 1.0)
    assert s.member("x") is None and s.member("y") is None and s.member("z") is None
    assert events(s) == []


def test_a_reaped_member_is_not_brought_back_by_a_stale_state() -> None:
    cfg = replace(LAN, dead_reap_s=10.0)
    s = make(cfg)
    push(s, [wire.StateEntry("x", X, 3, DEAD, {})], 1.0)
    s.handle_timer(11.5)
    assert s.member("x") is None
    assert events(s) == [("dead", "x", "dead"), ("reaped", "x", "dead")]
    # A member that reaps later still holds it: its state must not resurrect it here,
    # or two members would hand the death back and forth for ever.
    push(s, [wire.StateEntry("x", X, 3, DEAD, {})], 12.0)
    push(s, [wire.StateEntry("x", X, 2, SUSPECT, {})], 12.0)
    assert s.member("x") is None
    # A later death (it came back and failed again) is news.
    push(s, [wire.StateEntry("x", X, 5, DEAD, {})], 13.0)
    assert s.state_of("x") == "dead"
    # And an alive member is always taken back.
    s.handle_timer(30.0)
    push(s, [wire.StateEntry("x", X, 0, ALIVE, {})], 31.0)
    assert s.state_of("x") == "alive"


def test_learned_failed_members_respect_max_members() -> None:
    s = make(replace(LAN, max_members=4))
    push(s, [wire.StateEntry(f"x{i}", f"10.0.0.{10 + i}:7000", 0, DEAD, {})
             for i in range(3)], 1.0)
    assert len(s.members()) == 4
    assert s.stats.dropped_member_limit == 1


def test_restore_installs_a_saved_view_without_claiming_to_have_joined() -> None:
    s = Swim(LAN, "me", ME, random.Random(1), 0.0)
    s.restore([
        MemberInfo("a", "10.0.0.3:7000", 4, "alive", {"zone": "a"}),
        MemberInfo("b", "10.0.0.4:7000", 2, "suspect", {}),
        MemberInfo("c", "10.0.0.5:7000", 7, "dead", {}),
        MemberInfo("d", "10.0.0.6:7000", 1, "left", {}),
        MemberInfo("me", ME, 9, "dead", {}),
        MemberInfo("e", "not an address", 0, "alive", {}),
    ], 0.0)
    assert {i.name: (i.state, i.incarnation) for i in s.members()} == {
        "me": ("alive", 0), "a": ("alive", 4), "b": ("alive", 2), "c": ("dead", 7)}
    assert s.member("a").meta == {"zone": "a"}  # type: ignore[union-attr]
    assert sorted(events(s)) == [("dead", "c", "dead"), ("join", "a", "alive"),
                                 ("join", "b", "alive")]
    assert s.stats.malformed_messages == 1
    assert not s.joined
    s.check_invariants()


def test_a_member_joining_while_another_is_dead_learns_it_dead() -> None:
    w = GossipWorld(8, LAN, seed=3, check_invariants=True)
    w.run_for(2.0)
    w.kill("n00005")
    w.run_for(40.0)
    assert all(m.swim.state_of("n00005") == "dead" for m in w.members.values() if m.up)
    newcomer = w.add_member(20)
    newcomer.swim.join([w.members["n00000"].address], w.loop.now)
    newcomer.flush()
    w.run_for(3.0)
    info = newcomer.swim.member("n00005")
    assert info is not None and info.state == "dead"
    assert info.address == w.members["n00005"].address
    assert not w.false_deaths
