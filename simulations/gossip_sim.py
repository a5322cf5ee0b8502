"""A simulated cluster running only the gossip layer, for measurements and tests.

Every `Swim` is driven exactly as the runtime drives it: packets and stream
messages from the simulated network go to `receive_packet` / `receive_stream`, the
outbox is sent after every call, and one loop timer is kept armed at
`next_deadline()`. Everything random derives from one seed: the world splits child
rngs off it with `getrandbits`, so a run is a pure function of its parameters.

The world also knows the truth (who was killed, who is healthy) and measures the
protocol against it: time to first suspicion, time until every live member marks a
killed member dead, false suspicions and false deaths, dissemination time of an
update, and traffic per member per probe interval.

Slow members (Lifeguard's scenario) are modelled here by delaying every datagram
and stream message delivered to them by a random 0.5-2.5 s; SimNetwork has no
per-endpoint processing delay yet.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ringfs.gossip import GossipConfig, Keyring, MemberEvent, MemberInfo, SendPacket, Swim
from simulations.loop import EventLoop, Handle
from simulations.network import LinkConfig, SimNetwork


@dataclass
class KillRecord:
    """What happened after one member was killed."""

    name: str
    killed_at: float
    first_suspect: float | None = None
    all_dead: float | None = None
    pending: set[str] = field(default_factory=set)
    """Live members that have not yet marked it dead (or left / reaped)."""


class SimMember:
    """One member: a Swim instance plugged into the simulated network."""

    def __init__(self, world: GossipWorld, swim: Swim, slow: bool) -> None:
        self.world = world
        self.swim = swim
        self.name = swim.name
        self.address = swim.address
        self.slow = slow
        self.up = True
        self._handle: Handle | None = None
        self._armed: float | None = None

    # -- network callbacks ------------------------------------------------------------
    def on_packet(self, data: bytes, src: str) -> None:
        if self.slow:
            self.world.loop.call_later(self.world.slow_delay(), self._packet, data, src)
        else:
            self._packet(data, src)

    def on_stream(self, data: bytes, src: str) -> None:
        if self.slow:
            self.world.loop.call_later(self.world.slow_delay(), self._stream, data, src)
        else:
            self._stream(data, src)

    def on_stream_failed(self, dest: str) -> None:
        if self.up:
            self.swim.stream_failed(dest, self.world.loop.now)
            self.flush()

    def _packet(self, data: bytes, src: str) -> None:
        if self.up:
            self.swim.receive_packet(data, src, self.world.loop.now)
            self.flush()

    def _stream(self, data: bytes, src: str) -> None:
        if self.up:
            self.swim.receive_stream(data, src, self.world.loop.now)
            self.flush()

    def _on_timer(self) -> None:
        self._handle = None
        self._armed = None
        if self.up:
            self.swim.handle_timer(self.world.loop.now)
            self.flush()

    # -- driving ------------------------------------------------------------------------
    def flush(self) -> None:
        """Send the outbox, report events and re-arm the timer, as a runtime would."""
        world = self.world
        swim = self.swim
        net = world.net
        for out in swim.drain_outbox():
            if type(out) is SendPacket:
                net.send_packet(self.address, out.dest, out.data)
            else:
                net.send_stream(self.address, out.dest, out.data)
        ev = swim.next_event()
        while ev is not None:
            world.observe(self, ev)
            ev = swim.next_event()
        if world.check_invariants:
            swim.check_invariants()
        dl = swim.next_deadline()
        if dl != self._armed:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = None if dl is None else world.loop.call_at(dl, self._on_timer)
            self._armed = dl

    def stop(self) -> None:
        self.up = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed = None


class GossipWorld:
    """N gossip members on a simulated network, with the truth kept beside them."""

    def __init__(
        self,
        n: int,
        config: GossipConfig,
        seed: int,
        *,
        loss: float = 0.0,
        latency_s: float = 0.0005,
        jitter_s: float = 0.0005,
        encrypt: bool = False,
        slow_fraction: float = 0.0,
        slow_delay_s: tuple[float, float] = (0.5, 2.5),
        bootstrap: bool = True,
        check_invariants: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.loop = EventLoop()
        self.net = SimNetwork(
            self.loop,
            random.Random(self.rng.getrandbits(64)),
            LinkConfig(latency_s=latency_s, jitter_s=jitter_s, loss=loss),
        )
        self._slow_rng = random.Random(self.rng.getrandbits(64))
        self.slow_delay_s = slow_delay_s
        self.check_invariants = check_invariants
        key = self.rng.randbytes(32) if encrypt else None
        self.key = key
        self.members: dict[str, SimMember] = {}
        self.by_address: dict[str, SimMember] = {}
        self.kills: dict[str, KillRecord] = {}
        self.false_suspect_marks = 0
        self.false_dead_marks = 0
        self.false_deaths: set[tuple[str, int]] = set()
        """(member, incarnation) pairs of healthy members that someone declared dead."""
        self.false_suspicions: set[tuple[str, int]] = set()
        self.listeners: list[Callable[[SimMember, MemberEvent], None]] = []
        n_slow = round(n * slow_fraction)
        slow = set(self.rng.sample(range(n), n_slow)) if n_slow else set()
        for i in range(n):
            self.add_member(i, slow=i in slow)
        if bootstrap:
            infos = [
                MemberInfo(m.name, m.address, 0, "alive", m.swim.meta)
                for m in self.members.values()
            ]
            for m in self.members.values():
                m.swim.bootstrap(infos, self.loop.now)
                while m.swim.next_event() is not None:
                    pass
                m.flush()

    # -- construction -------------------------------------------------------------------
    def make_keyring(self, key: bytes, rng: random.Random) -> Keyring:
        return Keyring([key], nonce_source=rng.randbytes)

    def add_member(
        self, i: int, *, slow: bool = False, incarnation: int = 0, key: bytes | None = None
    ) -> SimMember:
        """Create (or re-create, after a kill) member i; it is not joined yet."""
        name = f"n{i:05d}"
        address = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}:7000"
        rng = random.Random(self.rng.getrandbits(64))
        key = key if key is not None else self.key
        keyring = self.make_keyring(key, rng) if key is not None else None
        swim = Swim(
            self.config,
            name,
            address,
            rng,
            self.loop.now,
            incarnation=incarnation,
            meta={"zone": f"z{i % 3}", "capacity": 1},
            keyring=keyring,
        )
        m = SimMember(self, swim, slow)
        self.members[name] = m
        self.by_address[address] = m
        self.net.register(address, m.on_packet, m.on_stream, m.on_stream_failed)
        self.net.set_up(address, True)
        m.flush()
        return m

    def slow_delay(self) -> float:
        lo, hi = self.slow_delay_s
        return lo + self._slow_rng.random() * (hi - lo)

    # -- faults ---------------------------------------------------------------------------
    def kill(self, name: str) -> KillRecord:
        """Crash a member silently and start measuring its detection."""
        m = self.members[name]
        m.stop()
        self.net.set_up(m.address, False)
        for rec in self.kills.values():
            rec.pending.discard(name)
        rec = KillRecord(name, self.loop.now)
        rec.pending = {x.name for x in self.members.values() if x.up}
        self.kills[name] = rec
        return rec

    def live(self) -> list[SimMember]:
        return [m for m in self.members.values() if m.up]

    # -- measurement ----------------------------------------------------------------------
    def observe(self, who: SimMember, ev: MemberEvent) -> None:
        now = self.loop.now
        subject = ev.member.name
        target = self.members.get(subject)
        healthy = target is not None and target.up
        rec = self.kills.get(subject)
        if ev.kind == "suspect":
            if healthy:
                self.false_suspect_marks += 1
                self.false_suspicions.add((subject, ev.member.incarnation))
            elif rec is not None and rec.first_suspect is None:
                rec.first_suspect = now
        elif ev.kind in ("dead", "left", "reaped"):
            if ev.kind == "dead" and healthy:
                self.false_dead_marks += 1
                self.false_deaths.add((subject, ev.member.incarnation))
            if rec is not None and not healthy and who.name in rec.pending:
                rec.pending.discard(who.name)
                if not rec.pending and rec.all_dead is None:
                    rec.all_dead = now
        for fn in self.listeners:
            fn(who, ev)

    def run_for(self, seconds: float) -> None:
        self.loop.run_until(self.loop.now + seconds)

    def traffic(self) -> dict[str, int]:
        return {
            "packets": self.net.packets_sent,
            "streams": self.net.streams_sent,
            "bytes": self.net.bytes_sent,
            "max_packet_bytes": self.net.max_packet_bytes,
        }

    def check_all(self) -> None:
        for m in self.members.values():
            if m.up:
                m.swim.check_invariants()


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run a gossip-only simulated cluster.")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--intervals", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--encrypt", action="store_true")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    cfg = GossipConfig.lan()
    t0 = time.perf_counter()
    world = GossipWorld(args.nodes, cfg, args.seed, loss=args.loss, encrypt=args.encrypt)

    def run() -> None:
        world.run_for(args.intervals * cfg.probe_interval_s)

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        run()
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"seed": args.seed, "nodes": args.nodes, "wall_s": round(wall, 2)}
    out.update(world.traffic())
    out["false_deaths"] = len(world.false_deaths)
    print(out)


if __name__ == "__main__":
    _main()
