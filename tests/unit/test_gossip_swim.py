"""Behaviour of the Swim state machine: probing, Lifeguard, dissemination,
push-pull, join, leave, restart and limits. Direct tests drive one instance by
hand; cluster tests use the simulated world (small N, invariants checked)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from ringfs.errors import LocalProtocolError
from ringfs.gossip import GossipConfig, Keyring, MemberInfo, SendPacket, SendStream, Swim
from ringfs.gossip import messages as wire
from simulations.gossip_sim import GossipWorld

LAN = GossipConfig.lan()
ME = "10.0.0.1:7000"


def addr(i: int) -> str:
    return f"10.0.1.{i}:7000"


def make(n_others: int = 9, cfg: GossipConfig = LAN, seed: int = 1, **kw: object) -> Swim:
    s = Swim(cfg, "me", ME, random.Random(seed), 0.0, **kw)  # type: ignore[arg-type]
    s.bootstrap([MemberInfo(f"m{i}", addr(i), 0, "alive", {}) for i in range(n_others)], 0.0)
    while s.next_event():
        pass
    return s


def packets(s: Swim) -> list[tuple[str, list[wire.Message]]]:
    out = []
    for o in s.drain_outbox():
        if not isinstance(o, SendPacket):
            continue  # periodic push-pull streams are not looked at here
        assert len(o.data) <= LAN.mtu_bytes
        msgs, bad = wire.decode_packet(o.data, wire.Limits())
        assert bad == 0
        out.append((o.dest, msgs))
    return out


def run_to(s: Swim, t: float) -> None:
    """Fire every timer up to t, in order, like a driver would."""
    while (d := s.next_deadline()) is not None and d <= t:
        s.handle_timer(d)
    s.check_invariants()


def next_probe(s: Swim, after: float) -> tuple[float, str, wire.Ping]:
    """Advance until a ping goes out; returns (time, dest, ping)."""
    t = after
    while True:
        d = s.next_deadline()
        assert d is not None
        t = d
        s.handle_timer(t)
        for dest, msgs in packets(s):
            for m in msgs:
                if isinstance(m, wire.Ping):
                    return t, dest, m


def ack(s: Swim, seq: int, src: str, now: float) -> None:
    s.receive_packet(wire.build_packet([wire.encode_ack(seq)]), src, now)


# -- probing -----------------------------------------------------------------------


def test_round_robin_probes_everyone_once_per_round_and_reshuffles() -> None:
    s = make(9)
    t = 0.0
    rounds = []
    for _ in range(3):
        order = []
        for _ in range(9):
            t, dest, ping = next_probe(s, t)
            order.append(ping.target)
            ack(s, ping.seq, dest, t + 0.001)
        rounds.append(order)
    for order in rounds:
        assert sorted(order) == [f"m{i}" for i in range(9)]
    assert rounds[0] != rounds[1] or rounds[1] != rounds[2]


def test_new_member_is_probed_within_the_current_round() -> None:
    s = make(9)
    t, dest, ping = next_probe(s, 0.0)
    ack(s, ping.seq, dest, t)
    s.receive_packet(wire.build_packet([wire.encode_alive(0, "new", addr(50), {})]), addr(1), t)
    seen = set()
    for _ in range(9):  # 8 left in this round + the newcomer
        t, dest, ping = next_probe(s, t)
        seen.add(ping.target)
        ack(s, ping.seq, dest, t)
    assert "new" in seen


def test_failed_probe_goes_indirect_then_suspects_and_penalises_missing_nacks() -> None:
    s = make(9)
    t, dest, ping = next_probe(s, 0.0)
    run_to(s, t + LAN.probe_timeout_s)
    reqs = [(d, m) for d, ms in packets(s) for m in ms if isinstance(m, wire.PingReq)]
    assert len(reqs) == LAN.indirect_checks
    assert all(m.target == ping.target and m.want_nack and m.seq == ping.seq for _, m in reqs)
    assert len({d for d, _ in reqs}) == 3 and dest not in {d for d, _ in reqs}
    # One helper nacks, two stay silent: awareness rises by the two missing nacks.
    s.receive_packet(wire.build_packet([wire.encode_nack(ping.seq)]), reqs[0][0], t + 0.4)
    run_to(s, t + LAN.probe_timeout_s + LAN.indirect_probe_timeout_s)
    assert s.state_of(ping.target) == "suspect"
    assert s.awareness == 2
    assert s.stats.probe_failures == 1 and s.stats.suspicions == 1


def test_awareness_scales_the_probe_interval_and_recovers_on_acks() -> None:
    s = make(9)
    t, dest, ping = next_probe(s, 0.0)
    run_to(s, t + 0.61)  # fails without nacks: awareness 3
    assert s.awareness == 3
    t2, dest, ping = next_probe(s, t + 0.61)
    assert t2 - t == pytest.approx(LAN.probe_interval_s)  # this interval was set before
    ack(s, ping.seq, dest, t2 + 0.01)
    assert s.awareness == 2
    t3, _, _ = next_probe(s, t2)
    assert t3 - t2 == pytest.approx(4 * LAN.probe_interval_s)  # scaled by score+1 = 4


def test_plain_swim_has_no_nacks_and_no_awareness() -> None:
    cfg = replace(LAN, lifeguard_awareness=False)
    s = make(9, cfg)
    t, _, _ = next_probe(s, 0.0)
    run_to(s, t + LAN.probe_timeout_s)
    reqs = [m for _, ms in packets(s) for m in ms if isinstance(m, wire.PingReq)]
    assert reqs and not any(m.want_nack for m in reqs)
    run_to(s, t + 1.0)
    assert s.awareness == 0


def test_indirect_ack_is_relayed_and_missing_ack_is_nacked() -> None:
    s = make(9)
    req = wire.encode_ping_req(77, "m3", addr(3), True)
    s.receive_packet(wire.build_packet([req]), addr(5), 1.0)
    ((dest, msgs),) = packets(s)
    ping = next(m for m in msgs if isinstance(m, wire.Ping))
    assert dest == addr(3) and ping.target == "m3"
    ack(s, ping.seq, addr(3), 1.01)
    ((dest, msgs),) = packets(s)
    assert dest == addr(5) and wire.Ack(77) in msgs
    # Second ping-req: no ack from the target, so a nack after 80% of the timeout.
    s.receive_packet(
        wire.build_packet([wire.encode_ping_req(78, "m3", addr(3), True)]), addr(5), 2.0
    )
    packets(s)
    run_to(s, 2.0 + LAN.indirect_probe_timeout_s * LAN.nack_timeout_fraction)
    sent = packets(s)
    assert (addr(5), [wire.Nack(78)]) in [
        (d, [m for m in ms if isinstance(m, wire.Nack)]) for d, ms in sent
    ]
    assert s.stats.nacks_sent == 1


def test_ping_for_another_name_is_not_acked() -> None:
    s = make(3)
    s.receive_packet(wire.build_packet([wire.encode_ping(5, "someone-else")]), addr(1), 1.0)
    assert packets(s) == [] and s.stats.misdirected_pings == 1
    s.receive_packet(wire.build_packet([wire.encode_ping(5, "me")]), addr(1), 1.0)
    ((dest, msgs),) = packets(s)
    assert dest == addr(1) and msgs[0] == wire.Ack(5)


@pytest.mark.parametrize("buddy", [True, False])
def test_buddy_system_tells_a_suspect_first(buddy: bool) -> None:
    s = make(1, replace(LAN, lifeguard_buddy=buddy))
    s.receive_packet(wire.build_packet([wire.encode_suspect(0, "m0", "other")]), addr(9), 0.0)
    # Use up the piggyback budget so that only the buddy rule could carry it.
    for _ in range(20):
        s.receive_packet(wire.build_packet([wire.encode_ping(1, "me")]), addr(0), 0.0)
    assert s.broadcasts_pending == 0
    packets(s)
    while True:
        s.handle_timer(s.next_deadline() or 0.0)
        probe = [ms for _, ms in packets(s) if any(isinstance(m, wire.Ping) for m in ms)]
        if probe:
            break
    first = probe[0][0]
    if buddy:
        assert first == wire.Suspect(0, "m0", "me")
    else:
        assert isinstance(first, wire.Ping)


# -- suspicion timeouts -----------------------------------------------------------


def suspect_at(s: Swim, name: str, accuser: str, now: float, inc: int = 0) -> None:
    s.receive_packet(wire.build_packet([wire.encode_suspect(inc, name, accuser)]), addr(9), now)


def test_unconfirmed_suspicion_lasts_max_and_confirmations_shrink_it() -> None:
    s = make(9)  # N = 10: min = 4 s, max = 24 s, k = 2
    suspect_at(s, "m1", "a", 10.0)
    run_to(s, 10.0 + 23.9)
    assert s.state_of("m1") == "suspect"
    run_to(s, 10.0 + 24.0)
    assert s.state_of("m1") == "dead"

    s = make(9)
    suspect_at(s, "m1", "a", 10.0)
    suspect_at(s, "m1", "b", 11.0)
    suspect_at(s, "m1", "c", 12.0)  # k = 2 confirmations: min = 4 s from the start
    run_to(s, 13.99)
    assert s.state_of("m1") == "suspect"
    run_to(s, 14.0)
    assert s.state_of("m1") == "dead"
    assert s.stats.declared_dead == 1


def test_fixed_timeout_without_lifeguard_suspicion() -> None:
    s = make(9, replace(LAN, lifeguard_suspicion=False))
    suspect_at(s, "m1", "a", 0.0)
    run_to(s, 3.99)
    assert s.state_of("m1") == "suspect"
    run_to(s, 4.0)
    assert s.state_of("m1") == "dead"


def test_refutation_cancels_the_suspicion() -> None:
    s = make(9)
    suspect_at(s, "m1", "a", 0.0)
    s.receive_packet(wire.build_packet([wire.encode_alive(1, "m1", addr(1), {})]), addr(1), 1.0)
    assert s.state_of("m1") == "alive"
    # The old timer (24 s) is gone; our own unanswered probes may suspect m1 again,
    # but that new suspicion cannot have expired yet.
    run_to(s, 24.5)
    assert s.state_of("m1") != "dead"


# -- dissemination ----------------------------------------------------------------


def test_updates_piggyback_on_acks_and_respect_the_retransmit_limit() -> None:
    s = make(9)  # N = 10: limit = 4 * ceil(log10(11)) = 8
    s.receive_packet(wire.build_packet([wire.encode_dead(0, "m7", "x")]), addr(1), 0.0)
    # News of a death is pushed at once to gossip_nodes live members...
    pushed = packets(s)
    assert len(pushed) == LAN.gossip_nodes and "10.0.1.7:7000" not in {d for d, _ in pushed}
    carried = sum(1 for _, msgs in pushed for m in msgs if isinstance(m, wire.Dead))
    assert carried == LAN.gossip_nodes
    # ...then rides on whatever we send until the limit.
    for i in range(20):
        s.receive_packet(wire.build_packet([wire.encode_ping(i, "me")]), addr(1), 0.0)
        ((_, msgs),) = packets(s)
        assert msgs[0] == wire.Ack(i)
        carried += sum(1 for m in msgs if isinstance(m, wire.Dead))
    assert carried == LAN.retransmit_limit(10) == 8


def test_a_death_we_declare_is_pushed_at_once() -> None:
    s = make(9)
    s.receive_packet(wire.build_packet([wire.encode_suspect(0, "m3", "x")]), addr(1), 0.0)
    t = 0.0
    while s.state_of("m3") == "suspect":
        packets(s)
        d = s.next_deadline()
        assert d is not None and d < 100.0
        t = d
        s.handle_timer(t)
    # In the very step that declared it, before any gossip tick: gossip_nodes pushes.
    with_dead = [dest for dest, msgs in packets(s) if any(isinstance(m, wire.Dead) for m in msgs)]
    assert len(with_dead) >= LAN.gossip_nodes and addr(3) not in with_dead
    s.check_invariants()


def test_no_datagram_exceeds_the_mtu_even_encrypted() -> None:
    cfg = replace(LAN, mtu_bytes=600)
    s = make(3, cfg, keyring=Keyring([b"k" * 32], nonce_source=random.Random(1).randbytes))
    kr = Keyring([b"k" * 32])
    for i in range(200):
        meta = {"zone": "z" * 20, "capacity": i}
        part = wire.encode_alive(0, f"new{i:03d}-" + "x" * 30, addr(100 + i % 100), meta)
        s.receive_packet(kr.encrypt(wire.build_packet([part])), addr(1), 0.0)
    sizes = []
    for i in range(50):
        s.receive_packet(kr.encrypt(wire.build_packet([wire.encode_ping(i, "me")])), addr(1), 0.0)
        sizes += [len(o.data) for o in s.drain_outbox()]
    # Updates are about 90 bytes: packets are filled close to the MTU, never above.
    assert 600 - 100 < max(sizes) <= 600


def test_gossip_tick_is_skipped_when_nothing_is_queued() -> None:
    s = make(9)
    s.join([], 0.0)  # queues our own alive
    run_to(s, 0.25)
    assert any(len(ms) >= 1 for _, ms in packets(s))
    while s.broadcasts_pending:
        run_to(s, (s.next_deadline() or 0) + 0.001)
        packets(s)
    before = s.stats.gossip_ticks_skipped
    t = s.next_deadline() or 0
    run_to(s, t + 0.3)
    assert s.stats.gossip_ticks_skipped > before
    # Only probe traffic remains (pings and, as nobody answers, ping-reqs).
    sent = packets(s)
    assert sent
    assert all(any(isinstance(m, wire.Ping | wire.PingReq) for m in ms) for _, ms in sent)


def test_gossip_reaches_recently_dead_members() -> None:
    s = make(1)
    s.receive_packet(wire.build_packet([wire.encode_dead(0, "m0", "x")]), addr(5), 0.0)
    run_to(s, 0.5)
    assert any(d == addr(0) for d, _ in packets(s))


# -- limits and misuse --------------------------------------------------------------


def test_member_limit_is_enforced_and_counted() -> None:
    s = make(3, replace(LAN, max_members=5))
    for i in range(5):
        part = wire.encode_alive(0, f"x{i}", addr(20 + i), {})
        s.receive_packet(wire.build_packet([part]), addr(1), 0.0)
    assert len(s.members()) == 5 and s.stats.dropped_member_limit == 4


def test_local_misuse_raises() -> None:
    with pytest.raises(LocalProtocolError):
        Swim(LAN, "", ME, random.Random(1), 0.0)
    with pytest.raises(LocalProtocolError):
        Swim(LAN, "me", "no-port", random.Random(1), 0.0)
    with pytest.raises(LocalProtocolError):
        Swim(LAN, "me", ME, random.Random(1), 0.0, meta={"k": "v" * 1000})
    s = make(1)
    with pytest.raises(LocalProtocolError):
        s.join(["not an address"], 0.0)
    s.leave(1.0)
    with pytest.raises(LocalProtocolError):
        s.join([addr(0)], 2.0)
    with pytest.raises(LocalProtocolError):
        s.update_meta({"a": 1}, 2.0)


def test_push_pull_cap_and_timeout() -> None:
    cfg = replace(LAN, max_concurrent_push_pull=4)
    s = Swim(cfg, "me", ME, random.Random(1), 0.0)
    s.join([addr(i) for i in range(10)], 0.0)
    streams = [o for o in s.drain_outbox() if isinstance(o, SendStream)]
    assert len(streams) == 4 and s.stats.push_pulls_skipped == 6
    s.stream_failed(addr(0), 1.0)
    assert s.stats.push_pulls_failed == 1
    run_to(s, cfg.push_pull_timeout_s + 0.1)
    assert s.stats.push_pulls_timed_out == 3
    assert not s.joined


# -- clusters in the simulated world --------------------------------------------------


def test_join_through_one_seed_and_wrong_key_cannot_join() -> None:
    w = GossipWorld(12, LAN, seed=4, encrypt=True, bootstrap=False, check_invariants=True)
    seed = w.members["n00000"].address
    for m in w.members.values():
        m.swim.join([] if m.address == seed else [seed], w.loop.now)
        m.flush()
    intruder = w.add_member(99, key=b"w" * 32)
    intruder.swim.join([seed], w.loop.now)
    intruder.flush()
    w.run_for(15.0)
    for m in w.members.values():
        if m is intruder:
            continue
        alive = {i.name for i in m.swim.members() if i.state == "alive"}
        assert alive == set(w.members) - {intruder.name}
    assert not intruder.swim.joined
    assert w.members["n00000"].swim.stats.dropped_bad_auth >= 1


def test_leave_is_distinct_from_dead_and_reaped_later() -> None:
    cfg = replace(LAN, dead_reap_s=20.0, gossip_to_the_dead_s=10.0)
    w = GossipWorld(10, cfg, seed=5, check_invariants=True)
    events: list[tuple[str, str, str]] = []
    w.listeners.append(lambda who, ev: events.append((who.name, ev.kind, ev.member.name)))
    leaver = w.members["n00003"]
    leaver.swim.leave(w.loop.now)
    leaver.flush()
    w.run_for(3.0)
    assert leaver.swim.broadcasts_pending == 0
    w.kill(leaver.name)
    w.run_for(5.0)
    others = [m for m in w.members.values() if m.up]
    assert all(m.swim.state_of(leaver.name) == "left" for m in others)
    assert not any(k == "dead" for _, k, n in events if n == leaver.name)
    w.run_for(20.0)
    assert all(m.swim.member(leaver.name) is None for m in others)
    assert sum(1 for _, k, n in events if k == "reaped" and n == leaver.name) == len(others)


def test_restart_under_the_same_name_rejoins_with_higher_incarnation() -> None:
    w = GossipWorld(10, LAN, seed=6, check_invariants=True)
    w.run_for(2.0)
    victim = w.members["n00004"]
    w.kill(victim.name)
    w.run_for(40.0)
    others = [m for m in w.members.values() if m.up]
    assert all(m.swim.state_of(victim.name) == "dead" for m in others)
    dead_inc = others[0].swim.member(victim.name).incarnation  # type: ignore[union-attr]
    reborn = w.add_member(4)  # same name and address, incarnation 0
    reborn.swim.join([others[0].address], w.loop.now)
    reborn.flush()
    w.run_for(10.0)
    assert reborn.swim.incarnation > dead_inc
    for m in others:
        info = m.swim.member(victim.name)
        assert info is not None and info.state == "alive"
        assert info.incarnation == reborn.swim.incarnation
    assert not w.false_deaths


def test_killed_member_is_detected_and_declared_dead_everywhere() -> None:
    w = GossipWorld(30, LAN, seed=7, loss=0.01, check_invariants=True)
    w.run_for(3.0)
    rec = w.kill("n00011")
    w.run_for(30.0)
    assert rec.first_suspect is not None and rec.all_dead is not None
    assert rec.all_dead - rec.killed_at < 20.0
    assert not w.false_deaths


def test_same_seed_same_trace() -> None:
    def trace(seed: int) -> tuple[object, ...]:
        w = GossipWorld(15, LAN, seed=seed, loss=0.05, encrypt=True)
        w.kill("n00002")
        w.run_for(20.0)
        m = w.members["n00000"].swim
        return (w.traffic()["bytes"], w.net.packets_dropped, m.stats.as_dict(), m.incarnation)

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)
