"""SWIM membership with the Lifeguard refinements, as a sans-IO state machine.

Theory of operation
-------------------
Every member keeps a list of the others. Once per probe interval it probes the next
member of a shuffled round-robin order (reshuffled every round, newcomers inserted at
random positions, so every member is probed within a bounded time): it sends a
PING and waits `probe_timeout_s` for the ACK. If none comes it asks
`indirect_checks` other members to PING the target on its behalf (PING_REQ); they
relay the ACK, or send a NACK when the target does not answer them either. If no
ACK has arrived `indirect_probe_timeout_s` later, the target becomes *suspect*.

Suspicion is refutable. Each member owns an *incarnation* number that only it
raises; a suspicion names the incarnation it is about. A member that hears it is
suspected (or declared dead or left) at its current incarnation raises its
incarnation past the accuser's and broadcasts ALIVE, which overrides the suspicion.
A suspicion that is not refuted in time turns into DEAD. LEFT is a graceful
departure announced by the member itself.

Updates (ALIVE, SUSPECT, DEAD, LEFT) spread infection-style: they are queued and
piggybacked on every datagram we send (pings, acks, ping-reqs, nacks), each at most
retransmit_mult * ceil(log10(N+1)) times, and a gossip tick pushes them to a few
random members (recently dead ones included) when anything is queued; news of a
death is pushed to a few live members at once instead of waiting for the tick.
Periodic push-pull exchanges the full state over a stream and repairs what gossip
missed; joining is a push-pull with the seeds.

Lifeguard adds three things, each switchable in `GossipConfig`:
  * local health awareness scales our probe interval and timeouts when we are the
    slow one (missed nacks, failed probes, having to refute);
  * the suspicion timeout starts at beta * min and shrinks towards min as
    independent members confirm the suspicion (`suspicion.py`);
  * the buddy system: a probe to a member we suspect carries the suspicion first,
    so the member refutes immediately.

Precedence of an incoming message about another member at incarnation j, given
our record of it in state S at incarnation i ("-" = ignored):

    incoming   | S = alive        | S = suspect         | S = dead       | S = left
    -----------+------------------+---------------------+----------------+--------------
    alive(j)   | j > i: update    | j > i: alive        | j > i: join    | j > i: join
    suspect(j) | j >= i: suspect  | j >= i: confirm     | -              | -
    dead(j)    | j >= i: dead     | j >= i: dead        | -              | -
    left(j)    | j >= i: left     | j >= i: left        | j >= i: left   | -

    unknown member: alive -> join (if under max_members); suspect or dead in a
    push-pull state -> added in that state (unless we reaped it at that incarnation
    or later); anything else ignored.

So at equal incarnation suspect beats alive, dead and left beat both, and left
beats dead (it is the more precise news); only the member itself, by raising its
incarnation, can get out of suspect, dead or left. About ourselves:

    alive(j)   j > ours, or j == ours with another address/meta: refute
    suspect/dead/left(j)   j >= ours: refute (unless we are leaving); else ignore

where refuting sets our incarnation to max(ours, j) + 1 and broadcasts ALIVE. A
DEAD entry in a push-pull state about a member we know is merged as a suspicion
(the sender's view may be stale; the member gets the chance to refute), as
memberlist does. About a member we never knew it is recorded as dead, with the
address and metadata the entry carries: a member that is down still owns its
place on the ring, and a member that joins or restarts while another is down
must not build a ring without it. Gossip messages about unknown members are
still ignored (they carry no address or metadata).

This module performs no I/O, never reads the clock and draws all randomness from
the `random.Random` it is given. The driver calls `receive_packet`,
`receive_stream`, `stream_failed` and `handle_timer` with the current time, then
sends what `drain_outbox()` returns, hands `next_event()` to the layer above and
arms a timer for `next_deadline()`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ringfs.errors import LocalProtocolError
from ringfs.gossip import messages as wire
from ringfs.gossip.awareness import Awareness
from ringfs.gossip.broadcast import BroadcastQueue
from ringfs.gossip.config import GossipConfig
from ringfs.gossip.keyring import OVERHEAD_BYTES, DecryptError, Keyring
from ringfs.gossip.member import (
    ALIVE,
    DEAD,
    LEFT,
    STATE_NAMES,
    SUSPECT,
    EventKind,
    Member,
    MemberEvent,
    MemberInfo,
    MetaValue,
)
from ringfs.gossip.messages import (
    Ack,
    Alive,
    Dead,
    Left,
    Limits,
    Malformed,
    Nack,
    Ping,
    PingReq,
    PushPull,
    StateEntry,
    Suspect,
)
from ringfs.gossip.suspicion import Suspicion
from ringfs.timers import Timer, Timers

MAX_DATAGRAM_BYTES = 65_507
"""Largest UDP payload; anything bigger cannot be a datagram and is dropped."""
MAX_SEEDS = 64
"""Most seeds `join` contacts; more is a configuration mistake."""
MAX_PENDING_RELAYS = 1024
"""Most ping-reqs we relay at once; more are dropped, so a flood of ping-reqs
cannot make us flood a target."""


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send `data` as one UDP datagram to `dest` ("host:port")."""

    dest: str
    data: bytes


@dataclass(frozen=True, slots=True)
class SendStream:
    """Send `data` as one message over a reliable stream (TCP) to `dest`; if it cannot
    be delivered, call `Swim.stream_failed(dest, now)`."""

    dest: str
    data: bytes


Outgoing = SendPacket | SendStream


@dataclass
class GossipStats:
    """Counters since start; exported by `ringfs status` and the benchmarks."""

    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    streams_sent: int = 0
    streams_received: int = 0
    stream_bytes_sent: int = 0
    stream_bytes_received: int = 0
    max_packet_bytes: int = 0
    dropped_bad_auth: int = 0
    """Datagrams and streams that no installed key authenticated."""
    dropped_malformed: int = 0
    """Datagrams and streams that did not decode at all."""
    malformed_messages: int = 0
    """Single messages or push-pull entries skipped inside otherwise good input."""
    dropped_oversize: int = 0
    dropped_member_limit: int = 0
    """Alive messages about new members dropped because max_members was reached."""
    dropped_relay_limit: int = 0
    misdirected_pings: int = 0
    """Pings for another name (a member restarted under a new name at this address)."""
    unexpected_acks: int = 0
    probes: int = 0
    probe_successes: int = 0
    indirect_probes: int = 0
    probe_failures: int = 0
    nacks_sent: int = 0
    nacks_received: int = 0
    suspicions: int = 0
    """Suspicions we started (members we moved from alive to suspect)."""
    declared_dead: int = 0
    """Suspicions of ours that timed out into dead."""
    refutations: int = 0
    push_pulls_started: int = 0
    push_pulls_completed: int = 0
    push_pulls_failed: int = 0
    push_pulls_timed_out: int = 0
    push_pulls_skipped: int = 0
    push_pulls_served: int = 0
    gossip_ticks_skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Probe:
    """Our own probe of `target`, waiting for an ack."""

    __slots__ = ("expected_nacks", "nacks", "start", "target", "timer")

    def __init__(self, target: str, start: float) -> None:
        self.target = target
        self.start = start
        self.nacks = 0
        self.expected_nacks = 0
        self.timer: Timer | None = None


class _Relay:
    """A ping we send for someone else's ping-req; its ack goes to `requester`."""

    __slots__ = ("nacked", "orig_seq", "requester", "timer", "want_nack")

    def __init__(self, requester: str, orig_seq: int, want_nack: bool) -> None:
        self.requester = requester
        self.orig_seq = orig_seq
        self.want_nack = want_nack
        self.nacked = False
        self.timer: Timer | None = None


class _Exchange:
    """A push-pull we started, waiting for its reply."""

    __slots__ = ("dest", "join", "timer")

    def __init__(self, dest: str, join: bool) -> None:
        self.dest = dest
        self.join = join
        self.timer: Timer | None = None


def _check_meta_local(meta: Mapping[str, MetaValue] | None, limits: Limits) -> dict[str, MetaValue]:
    m = dict(meta or {})
    try:
        return wire.check_meta(m, limits)
    except Malformed as exc:
        raise LocalProtocolError(f"invalid metadata: {exc}") from None


class Swim:
    """One member's SWIM/Lifeguard state machine. See the module docstring."""

    def __init__(
        self,
        config: GossipConfig,
        name: str,
        address: str,
        rng: random.Random,
        now: float,
        *,
        incarnation: int = 0,
        meta: Mapping[str, MetaValue] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        cfg = config
        self._cfg = cfg
        self._limits = Limits(
            max_name_bytes=cfg.max_name_bytes,
            max_meta_bytes=cfg.max_meta_bytes,
            max_packet_messages=cfg.max_packet_messages,
            max_members=cfg.max_members,
            max_stream_bytes=cfg.max_stream_bytes,
        )
        if not isinstance(name, str) or not name or len(name.encode()) > cfg.max_name_bytes:
            raise LocalProtocolError("name must be 1..max_name_bytes bytes of UTF-8")
        if not wire.valid_address(address):
            raise LocalProtocolError(f"address must be 'host:port', got {address!r}")
        if not 0 <= incarnation <= wire.MAX_UINT63:
            raise LocalProtocolError("incarnation out of range")
        self.name = name
        self.address = address
        self._rng = rng
        self._keyring = keyring
        self._packet_overhead = wire.PACKET_HEADER_BYTES + (OVERHEAD_BYTES if keyring else 0)
        self._awareness = Awareness(cfg.awareness_max_multiplier)
        self._broadcasts = BroadcastQueue(cfg.max_queued_broadcasts)
        self._self = Member(
            name, address, incarnation, ALIVE, _check_meta_local(meta, self._limits), now
        )
        self._members: dict[str, Member] = {name: self._self}
        self.view_version = 0
        """Bumped whenever a member is added or removed or its incarnation or state
        changes: observers re-read `incarnations()` only when it moved."""
        # Members reaped, with the incarnation they died at, oldest first (at most
        # max_members): a full state that still holds one dead does not bring it back.
        self._reaped: dict[str, int] = {}
        self._live = 1  # members in state alive or suspect, ourselves included
        # Names of the other members, in a list for O(1) random picks.
        self._others: list[str] = []
        self._other_pos: dict[str, int] = {}
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seq = rng.getrandbits(32)
        self._pending: dict[int, _Probe | _Relay] = {}
        self._relays = 0
        self._exchanges: dict[int, _Exchange] = {}
        self._suspicion_timers: dict[str, Timer] = {}
        self._timers = Timers()
        self._outbox: list[Outgoing] = []
        self._events: deque[MemberEvent] = deque()
        self._leaving = False
        self._joined = False
        self._limit_cache: tuple[int, int] = (-1, 0)
        self.stats = GossipStats()
        self._dispatch: dict[type, Callable[[Any, str, float], None]] = {
            Ping: self.on_ping,
            PingReq: self.on_ping_req,
            Ack: self.on_ack,
            Nack: self.on_nack,
            Suspect: self.on_suspect,
            Alive: self.on_alive,
            Dead: self.on_dead,
            Left: self.on_left,
        }
        # Start the periodic work at random phases so that members started together
        # do not probe and gossip in lockstep.
        self._schedule(now + rng.random() * cfg.probe_interval_s, self.on_probe_timeout)
        self._schedule(now + rng.random() * cfg.gossip_interval_s, self.on_gossip_timeout)
        self._push_pull_timer = self._schedule(
            now + rng.random() * cfg.push_pull_period_s(1), self.on_push_pull_timeout
        )

    # == the driver's interface =======================================================

    def join(self, seeds: Sequence[str], now: float) -> None:
        """Announce ourselves and exchange full state with each seed ("host:port").
        An empty list starts a new cluster. Seeds that cannot be reached are
        reported through `stream_failed` and counted; `joined` turns True with the
        first reply."""
        if self._leaving:
            raise LocalProtocolError("cannot join after leave()")
        if len(seeds) > MAX_SEEDS:
            raise LocalProtocolError(f"at most {MAX_SEEDS} seeds")
        for seed in seeds:
            if not wire.valid_address(seed):
                raise LocalProtocolError(f"seed must be 'host:port', got {seed!r}")
        self._broadcast_self_alive()
        for seed in dict.fromkeys(seeds):
            if seed == self.address:
                continue
            if len(self._exchanges) >= self._cfg.max_concurrent_push_pull:
                self.stats.push_pulls_skipped += 1
                continue
            self._start_push_pull(seed, True, now)

    def leave(self, now: float) -> None:
        """Leave gracefully: broadcast LEFT (now, to a few members, and by gossip)
        and stop probing. Keep driving the machine until `broadcasts_pending` is 0
        or a deadline of your choice, then stop."""
        if self._leaving:
            return
        self._leaving = True
        me = self._self
        self._set_state(me, LEFT, now)
        self._queue(self.name, wire.encode_left(me.incarnation, self.name))
        for seq, p in list(self._pending.items()):
            if isinstance(p, _Probe):
                self._cancel(p.timer)
                del self._pending[seq]
        for m in self._random_members(self._cfg.gossip_nodes, self._is_live):
            self._send(m.address, [])

    def receive_packet(self, data: bytes, src: str, now: float) -> None:
        """A datagram arrived from `src`. Bad input is dropped and counted."""
        st = self.stats
        st.packets_received += 1
        st.bytes_received += len(data)
        plain = self._open(data, MAX_DATAGRAM_BYTES)
        if plain is None:
            return
        try:
            msgs, bad = wire.decode_packet(plain, self._limits)
        except Malformed:
            st.dropped_malformed += 1
            return
        st.malformed_messages += bad
        dispatch = self._dispatch
        for msg in msgs:
            dispatch[type(msg)](msg, src, now)

    def _open(self, data: bytes, max_bytes: int) -> bytes | None:
        """Size-check and decrypt incoming bytes; None (counted) when they must be dropped."""
        st = self.stats
        if len(data) > max_bytes:
            st.dropped_oversize += 1
            return None
        if self._keyring is not None:
            try:
                return self._keyring.decrypt(data)
            except DecryptError:
                st.dropped_bad_auth += 1
                return None
        return data

    def receive_stream(self, data: bytes, src: str, now: float) -> None:
        """A stream message (push-pull) arrived. Bad input is dropped and counted."""
        st = self.stats
        st.streams_received += 1
        st.stream_bytes_received += len(data)
        plain = self._open(data, self._cfg.max_stream_bytes + OVERHEAD_BYTES)
        if plain is None:
            return
        try:
            msg = wire.decode_push_pull(plain, self._limits)
        except Malformed:
            st.dropped_malformed += 1
            return
        self.on_push_pull(msg, src, now)

    def stream_failed(self, dest: str, now: float) -> None:
        """The runtime could not deliver a stream message to `dest`."""
        for seq, ex in list(self._exchanges.items()):
            if ex.dest == dest:
                self._cancel(ex.timer)
                del self._exchanges[seq]
                self.stats.push_pulls_failed += 1
                return

    def handle_timer(self, now: float) -> None:
        """Run every timer due at or before `now`."""
        for fn, args in self._timers.due(now):
            fn(*args, now)

    def next_deadline(self) -> float | None:
        """When `handle_timer` must be called next, or None."""
        return self._timers.next_deadline()

    def drain_outbox(self) -> list[SendPacket | SendStream]:
        """Messages to send, oldest first; the caller sends them all."""
        out = self._outbox
        self._outbox = []
        return out

    def next_event(self) -> MemberEvent | None:
        """The oldest unread membership event, or None."""
        return self._events.popleft() if self._events else None

    def members(self) -> list[MemberInfo]:
        """Every member we know, ourselves included, in any state."""
        return [m.info() for m in self._members.values()]

    def incarnations(self) -> dict[str, tuple[int, str]]:
        """name -> (incarnation, state) of every member we know, ourselves included: a
        cheap snapshot of our view, for observers that follow it step by step."""
        return {n: (m.incarnation, STATE_NAMES[m.state]) for n, m in self._members.items()}

    def member(self, name: str) -> MemberInfo | None:
        m = self._members.get(name)
        return None if m is None else m.info()

    def update_meta(self, meta: Mapping[str, MetaValue], now: float) -> None:
        """Advertise new metadata under a higher incarnation (event 'update')."""
        if self._leaving:
            raise LocalProtocolError("cannot update metadata after leave()")
        self._self.meta = _check_meta_local(meta, self._limits)
        self._self.incarnation += 1
        self._broadcast_self_alive()
        self._emit("update", self._self)

    def bootstrap(self, members: Iterable[MemberInfo], now: float) -> None:
        """Install known alive members without any exchange (a saved view, or a
        simulation that starts with a formed cluster). Emits 'join' events; others
        are not told, so every member must be bootstrapped with the same view."""
        for info in members:
            if info.name == self.name or info.name in self._members:
                continue
            if len(self._members) >= self._cfg.max_members:
                raise LocalProtocolError("bootstrap exceeds max_members")
            meta = _check_meta_local(info.meta, self._limits)
            self._add_member(info.name, info.address, info.incarnation, meta, now)
        self._joined = True
        self._rephase_push_pull(now)

    def restore(self, members: Iterable[MemberInfo], now: float) -> None:
        """Install the view saved before a restart, before `join`: members that were
        alive or suspect come back alive (probed like any other; a failed one is
        suspected and declared dead as usual), dead ones come back dead, left ones
        and ourselves are skipped. Emits 'join' and 'dead' events.

        Without it a restarted member knows only the members it hears of, and a
        member that no one it reaches remembers (all restarted together while it
        was down or cut off) is missing from its ring until that member returns."""
        for info in members:
            if info.name == self.name or info.name in self._members or info.state == "left":
                continue
            if len(self._members) >= self._cfg.max_members:
                self.stats.dropped_member_limit += 1
                continue
            try:
                meta = wire.check_meta(dict(info.meta), self._limits)
                if not 0 < len(info.name.encode()) <= self._cfg.max_name_bytes:
                    raise Malformed("bad name")
                if not wire.valid_address(info.address):
                    raise Malformed("bad address")
                if not 0 <= info.incarnation <= wire.MAX_UINT63:
                    raise Malformed("incarnation out of range")
            except Malformed:
                # A saved file is input from outside: skip what does not validate.
                self.stats.malformed_messages += 1
                continue
            self._add_member(info.name, info.address, info.incarnation, meta, now,
                             state=DEAD if info.state == "dead" else ALIVE)

    # -- status ------------------------------------------------------------------------
    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def meta(self) -> Mapping[str, MetaValue]:
        return dict(self._self.meta)

    @property
    def awareness(self) -> int:
        """Lifeguard health score, 0 = healthy."""
        return self._awareness.score

    @property
    def joined(self) -> bool:
        """True once a push-pull with a seed completed (or after bootstrap)."""
        return self._joined

    @property
    def leaving(self) -> bool:
        return self._leaving

    @property
    def broadcasts_pending(self) -> int:
        """Updates still waiting to be piggybacked."""
        return len(self._broadcasts)

    @property
    def num_live(self) -> int:
        """Members (ourselves included) that are alive or suspect."""
        return self._live

    def state_of(self, name: str) -> str | None:
        m = self._members.get(name)
        return None if m is None else STATE_NAMES[m.state]

    # == message handlers ===============================================================

    def on_ping(self, msg: Ping, src: str, now: float) -> None:
        if msg.target != self.name:
            # Someone thinks another member lives at our address; acking would
            # vouch for a member that may be gone.
            self.stats.misdirected_pings += 1
            return
        self._send(src, [wire.encode_ack(msg.seq)])

    def on_ping_req(self, msg: PingReq, src: str, now: float) -> None:
        if msg.target == self.name:
            self._send(src, [wire.encode_ack(msg.seq)])
            return
        if self._relays >= MAX_PENDING_RELAYS:
            self.stats.dropped_relay_limit += 1
            return
        seq = self._next_seq()
        relay = _Relay(src, msg.seq, msg.want_nack)
        # Nack early enough that it reaches the requester before it gives up.
        wait = self._cfg.indirect_probe_timeout_s * self._cfg.nack_timeout_fraction
        relay.timer = self._schedule(now + wait, self.on_nack_timeout, seq)
        self._pending[seq] = relay
        self._relays += 1
        self._send(msg.target_address, [wire.encode_ping(seq, msg.target)])

    def on_ack(self, msg: Ack, src: str, now: float) -> None:
        p = self._pending.pop(msg.seq, None)
        if p is None:
            self.stats.unexpected_acks += 1
            return
        self._cancel(p.timer)
        if isinstance(p, _Probe):
            self.stats.probe_successes += 1
            if self._cfg.lifeguard_awareness:
                self._awareness.apply_delta(-1)
        else:
            self._relays -= 1
            self._send(p.requester, [wire.encode_ack(p.orig_seq)])

    def on_nack(self, msg: Nack, src: str, now: float) -> None:
        p = self._pending.get(msg.seq)
        if isinstance(p, _Probe):
            p.nacks += 1
            self.stats.nacks_received += 1

    def on_alive(self, msg: Alive, src: str, now: float) -> None:
        if msg.name == self.name:
            me = self._self
            if self._leaving:
                return
            if msg.incarnation > me.incarnation or (
                msg.incarnation == me.incarnation
                and (msg.address != me.address or msg.meta != me.meta)
            ):
                # A stale or conflicting view of us (e.g. from before a restart).
                self._refute(msg.incarnation)
            return
        m = self._members.get(msg.name)
        if m is None:
            if len(self._members) >= self._cfg.max_members:
                self.stats.dropped_member_limit += 1
                return
            m = self._add_member(msg.name, msg.address, msg.incarnation, msg.meta, now)
            self._queue(m.name, wire.encode_alive(m.incarnation, m.name, m.address, m.meta))
            return
        if msg.incarnation <= m.incarnation:
            return
        old = m.state
        changed = msg.address != m.address or msg.meta != m.meta
        m.incarnation = msg.incarnation
        self.view_version += 1
        m.address = msg.address
        m.meta = msg.meta
        self._set_state(m, ALIVE, now)
        kind: EventKind | None
        if old == ALIVE:
            kind = "update" if changed else None
        elif old == SUSPECT:
            kind = "alive"
        else:
            kind = "join"
        if kind is not None:
            self._emit(kind, m)
        self._queue(m.name, wire.encode_alive(m.incarnation, m.name, m.address, m.meta))

    def on_suspect(self, msg: Suspect, src: str, now: float) -> None:
        if msg.name == self.name:
            if not self._leaving and msg.incarnation >= self._self.incarnation:
                self._refute(msg.incarnation)
            return
        m = self._members.get(msg.name)
        if m is None or (msg.incarnation < m.incarnation
                         and not self._cfg.fault_wrong_incarnation_precedence):
            return
        if m.state == SUSPECT:
            s = m.suspicion
            assert s is not None
            m.incarnation = msg.incarnation
            self.view_version += 1
            if s.confirm(msg.accuser):
                # Pass the confirmation on, so that others count it too, and move
                # our own deadline closer.
                self._queue(m.name, wire.encode_suspect(m.incarnation, m.name, msg.accuser))
                self._arm_suspicion(m, now)
            return
        if m.state != ALIVE:
            return
        m.incarnation = msg.incarnation
        self.view_version += 1
        self._start_suspicion(m, msg.accuser, msg.incarnation, now)
        if msg.accuser == self.name:
            self.stats.suspicions += 1
        self._emit("suspect", m)
        self._queue(m.name, wire.encode_suspect(m.incarnation, m.name, msg.accuser))

    def on_dead(self, msg: Dead, src: str, now: float) -> None:
        if msg.name == self.name:
            if not self._leaving and msg.incarnation >= self._self.incarnation:
                self._refute(msg.incarnation)
            return
        m = self._members.get(msg.name)
        if m is None or m.state >= DEAD or (
                msg.incarnation < m.incarnation
                and not self._cfg.fault_wrong_incarnation_precedence):
            return
        m.incarnation = msg.incarnation
        self.view_version += 1
        self._set_state(m, DEAD, now)
        self._emit("dead", m)
        self._queue(m.name, wire.encode_dead(m.incarnation, m.name, msg.accuser))
        self._push_now()

    def on_left(self, msg: Left, src: str, now: float) -> None:
        if msg.name == self.name:
            if not self._leaving and msg.incarnation >= self._self.incarnation:
                self._refute(msg.incarnation)
            return
        m = self._members.get(msg.name)
        if m is None or msg.incarnation < m.incarnation or m.state == LEFT:
            return
        m.incarnation = msg.incarnation
        self.view_version += 1
        self._set_state(m, LEFT, now)
        self._emit("left", m)
        self._queue(m.name, wire.encode_left(m.incarnation, m.name))

    def on_push_pull(self, msg: PushPull, src: str, now: float) -> None:
        if msg.name == self.name:
            self.stats.malformed_messages += 1  # our own state echoed back: ignore
            return
        if msg.reply:
            ex = self._exchanges.pop(msg.seq, None)
            if ex is None:
                return  # late (timed out) or unsolicited; a reply is not merged blindly
            self._cancel(ex.timer)
            self.stats.push_pulls_completed += 1
            if ex.join and not self._joined:
                self._joined = True
                self._merge(msg, now)
                # The cluster size is known now; keep a random phase at its period.
                self._rephase_push_pull(now)
                return
        else:
            self.stats.push_pulls_served += 1
            self._send_stream(
                msg.address,
                wire.encode_push_pull(
                    msg.seq, self.name, self.address, False, True, self._local_state()
                ),
            )
        self._merge(msg, now)

    # == timers ========================================================================

    def on_probe_timeout(self, now: float) -> None:
        """Time to probe the next member of the round-robin order."""
        cfg = self._cfg
        interval = cfg.probe_interval_s
        if cfg.lifeguard_awareness:
            interval = self._awareness.scale(interval)
        self._schedule(now + interval, self.on_probe_timeout)
        if self._leaving:
            return
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        probe = _Probe(target.name, now)
        timeout = cfg.probe_timeout_s
        if cfg.lifeguard_awareness:
            timeout = self._awareness.scale(timeout)
        probe.timer = self._schedule(now + timeout, self.on_ping_timeout, seq)
        self._pending[seq] = probe
        self.stats.probes += 1
        parts = [wire.encode_ping(seq, target.name)]
        if target.state == SUSPECT and cfg.lifeguard_buddy:
            # Buddy system: tell the member it is suspected, first thing in the packet.
            parts.insert(0, wire.encode_suspect(target.incarnation, target.name, self.name))
        self._send(target.address, parts)

    def on_ping_timeout(self, seq: int, now: float) -> None:
        """No direct ack: ask `indirect_checks` alive members to probe for us."""
        p = self._pending.get(seq)
        if not isinstance(p, _Probe):
            return
        target = self._members.get(p.target)
        if target is None or target.state > SUSPECT:
            del self._pending[seq]
            return
        cfg = self._cfg
        helpers = self._random_members(
            cfg.indirect_checks, lambda m: m.state == ALIVE and m is not target
        )
        want_nack = cfg.lifeguard_awareness
        req = wire.encode_ping_req(seq, target.name, target.address, want_nack)
        for h in helpers:
            self._send(h.address, [req])
        self.stats.indirect_probes += 1
        p.expected_nacks = len(helpers) if want_nack else 0
        timeout = cfg.indirect_probe_timeout_s
        if cfg.lifeguard_awareness:
            timeout = self._awareness.scale(timeout)
        p.timer = self._schedule(now + timeout, self.on_indirect_timeout, seq)

    def on_indirect_timeout(self, seq: int, now: float) -> None:
        """Neither a direct nor a relayed ack: suspect the target."""
        p = self._pending.pop(seq, None)
        if not isinstance(p, _Probe):
            return
        self.stats.probe_failures += 1
        if self._cfg.lifeguard_awareness:
            # Missing nacks mean the paths to our helpers fail too: more likely our
            # own fault. Without helpers, any failure counts against us.
            if p.expected_nacks > 0:
                self._awareness.apply_delta(max(0, p.expected_nacks - p.nacks))
            else:
                self._awareness.apply_delta(1)
        m = self._members.get(p.target)
        if m is not None and m.state <= SUSPECT:
            self.on_suspect(Suspect(m.incarnation, m.name, self.name), self.address, now)

    def on_nack_timeout(self, seq: int, now: float) -> None:
        """A relayed ping got no ack: tell the requester we tried (Lifeguard nack)."""
        r = self._pending.get(seq)
        if not isinstance(r, _Relay):
            return
        if r.want_nack and not r.nacked:
            r.nacked = True
            self.stats.nacks_sent += 1
            self._send(r.requester, [wire.encode_nack(r.orig_seq)])
            # Keep forwarding a late ack until the requester gives up anyway.
            rest = self._cfg.indirect_probe_timeout_s * (1 - self._cfg.nack_timeout_fraction)
            r.timer = self._schedule(now + rest, self.on_nack_timeout, seq)
            return
        del self._pending[seq]
        self._relays -= 1

    def on_gossip_timeout(self, now: float) -> None:
        """Push queued updates to a few random members, recently dead ones included."""
        cfg = self._cfg
        self._schedule(now + cfg.gossip_interval_s, self.on_gossip_timeout)
        if not self._broadcasts:
            self.stats.gossip_ticks_skipped += 1
            return
        horizon = now - cfg.gossip_to_the_dead_s
        for m in self._random_members(
            cfg.gossip_nodes, lambda m: m.state <= SUSPECT or m.state_change >= horizon
        ):
            self._send(m.address, [])

    def on_push_pull_timeout(self, now: float) -> None:
        """Periodic full-state exchange with one random alive member."""
        cfg = self._cfg
        self._push_pull_timer = self._schedule(
            now + cfg.push_pull_period_s(self._live), self.on_push_pull_timeout
        )
        if self._leaving:
            return
        if len(self._exchanges) >= cfg.max_concurrent_push_pull:
            self.stats.push_pulls_skipped += 1
            return
        for m in self._random_members(1, lambda m: m.state == ALIVE):
            self._start_push_pull(m.address, False, now)

    def on_push_pull_reply_timeout(self, seq: int, now: float) -> None:
        if self._exchanges.pop(seq, None) is not None:
            self.stats.push_pulls_timed_out += 1

    def on_suspicion_timeout(self, name: str, now: float) -> None:
        """A suspicion ran out unrefuted: declare the member dead."""
        self._suspicion_timers.pop(name, None)
        m = self._members.get(name)
        if m is None or m.state != SUSPECT:
            return
        self.stats.declared_dead += 1
        self._set_state(m, DEAD, now)
        self._emit("dead", m)
        self._queue(m.name, wire.encode_dead(m.incarnation, m.name, self.name))
        self._push_now()

    def on_reap_timeout(self, name: str, changed_at: float, now: float) -> None:
        """Forget a member that has been dead or left for dead_reap_s."""
        m = self._members.get(name)
        if m is None or m.state < DEAD or m.state_change != changed_at or m is self._self:
            return
        del self._members[name]
        self.view_version += 1
        self._reaped[name] = m.incarnation
        if len(self._reaped) > self._cfg.max_members:
            del self._reaped[next(iter(self._reaped))]
        pos = self._other_pos.pop(name)
        last = self._others.pop()
        if last != name:
            self._others[pos] = last
            self._other_pos[last] = pos
        try:
            i = self._probe_order.index(name)
        except ValueError:
            pass
        else:
            del self._probe_order[i]
            if i < self._probe_index:
                self._probe_index -= 1
        self._broadcasts.remove(name)
        self._emit("reaped", m)

    # == invariants ====================================================================

    def check_invariants(self) -> None:
        """Assert internal consistency; the simulator calls this after every step."""
        me = self._self
        assert self._members.get(self.name) is me
        assert me.state == (LEFT if self._leaving else ALIVE), me
        assert len(self._members) <= self._cfg.max_members
        assert self._live == sum(1 for m in self._members.values() if m.state <= SUSPECT)
        assert len(self._others) == len(self._members) - 1
        for i, n in enumerate(self._others):
            assert self._other_pos[n] == i and n in self._members and n != self.name
        for n, m in self._members.items():
            assert m.name == n and 0 <= m.incarnation <= wire.MAX_UINT63
            assert (m.suspicion is not None) == (m.state == SUSPECT), m
            assert (n in self._suspicion_timers) == (m.state == SUSPECT), m
        assert 0 <= self._awareness.score < self._cfg.awareness_max_multiplier
        assert self._relays == sum(1 for p in self._pending.values() if isinstance(p, _Relay))
        assert self._relays <= MAX_PENDING_RELAYS
        assert len(self._exchanges) <= self._cfg.max_concurrent_push_pull
        self._broadcasts.check_invariants()
        assert self._probe_index <= len(self._probe_order)
        assert len(self._reaped) <= self._cfg.max_members
        assert not any(n in self._members for n in self._reaped)

    # == internals =====================================================================

    def _schedule(self, when: float, fn: Callable[..., None], *args: Any) -> Timer:
        return self._timers.at(when, fn, *args)

    _cancel = staticmethod(Timers.cancel)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _emit(self, kind: EventKind, m: Member) -> None:
        self._events.append(MemberEvent(kind, m.info()))

    def _transmit_limit(self) -> int:
        n = len(self._members)
        cached_n, limit = self._limit_cache
        if cached_n != n:
            limit = self._cfg.retransmit_limit(n)
            self._limit_cache = (n, limit)
        return limit

    def _queue(self, name: str, payload: bytes) -> None:
        self._broadcasts.queue(name, payload)

    def _broadcast_self_alive(self) -> None:
        me = self._self
        self._queue(self.name, wire.encode_alive(me.incarnation, me.name, me.address, me.meta))

    def _push_now(self) -> None:
        """Push the queued updates to `gossip_nodes` random live members at once,
        rather than at the next gossip tick: done when we learn of a death, so
        that news taking a member out of service spreads at network speed (each
        member that learns it passes it on straight away), as a leave does."""
        for m in self._random_members(self._cfg.gossip_nodes, self._is_live):
            self._send(m.address, [])

    def _refute(self, accused: int) -> None:
        me = self._self
        me.incarnation = max(me.incarnation, accused) + 1
        self.view_version += 1
        self.stats.refutations += 1
        if self._cfg.lifeguard_awareness:
            # Being suspected hints that we answer too slowly.
            self._awareness.apply_delta(1)
        self._broadcast_self_alive()

    def _send(self, dest: str, parts: list[bytes]) -> None:
        """Send `parts` to `dest` with as many queued updates as fit in the MTU."""
        used = self._packet_overhead
        for p in parts:
            used += len(p)
        free = self._cfg.mtu_bytes - used
        if free > 0 and self._broadcasts:
            parts = parts + self._broadcasts.take(free, self._transmit_limit())
        if not parts:
            return
        data = wire.build_packet(parts)
        if self._keyring is not None:
            data = self._keyring.encrypt(data)
        st = self.stats
        n = len(data)
        st.packets_sent += 1
        st.bytes_sent += n
        if n > st.max_packet_bytes:
            st.max_packet_bytes = n
        self._outbox.append(SendPacket(dest, data))

    def _send_stream(self, dest: str, data: bytes) -> None:
        if self._keyring is not None:
            data = self._keyring.encrypt(data)
        self.stats.streams_sent += 1
        self.stats.stream_bytes_sent += len(data)
        self._outbox.append(SendStream(dest, data))

    def _start_push_pull(self, dest: str, join: bool, now: float) -> None:
        seq = self._next_seq()
        ex = _Exchange(dest, join)
        ex.timer = self._schedule(
            now + self._cfg.push_pull_timeout_s, self.on_push_pull_reply_timeout, seq
        )
        self._exchanges[seq] = ex
        self.stats.push_pulls_started += 1
        self._send_stream(
            dest,
            wire.encode_push_pull(seq, self.name, self.address, join, False, self._local_state()),
        )

    def _local_state(self) -> list[StateEntry]:
        return [
            StateEntry(m.name, m.address, m.incarnation, m.state, m.meta)
            for m in self._members.values()
        ]

    def _merge(self, msg: PushPull, now: float) -> None:
        """Apply a remote full state as if its entries had arrived as messages."""
        src = msg.address
        members = self._members
        limits = self._limits
        me = self._self
        for raw in msg.states:
            # Fast path: an entry that matches our record changes nothing. Not for our
            # own entry: the same incarnation with other metadata or another address
            # (what we announced before a restart with other settings) is refuted.
            if type(raw) is list and len(raw) == 5 and type(raw[0]) is str:
                m = members.get(raw[0])
                if (m is not None and m is not me and raw[2] == m.incarnation
                        and raw[3] == m.state):
                    continue
            try:
                e = wire.parse_state_entry(raw, limits)
            except Malformed:
                self.stats.malformed_messages += 1
                continue
            if e.state == ALIVE:
                self.on_alive(Alive(e.incarnation, e.name, e.address, e.meta), src, now)
            elif e.state == LEFT:
                self.on_left(Left(e.incarnation, e.name), src, now)
            elif e.name not in members and e.name != self.name:
                self._learn_failed(e, msg.name, now)
            else:
                # Suspect or dead in the sender's view: suspect it here and let the
                # member refute, rather than trust a possibly stale death.
                self.on_suspect(Suspect(e.incarnation, e.name, msg.name), src, now)

    def _learn_failed(self, e: StateEntry, accuser: str, now: float) -> None:
        """Record a member we never knew that another member's full state holds
        suspect or dead, in that state, with its address and metadata.

        A member that is down is still a member: the layer above keeps it on the
        ring (its ranges go to fallbacks until it returns or is reaped). Ignoring it,
        as for gossip messages about unknown members, would leave a member that
        restarted or joined while another was down with a ring that lacks it, and so
        with other primaries for its keys than everyone else. A member we reaped is
        not taken back at the same incarnation: that would pass a death around for
        ever between members that reap at different times."""
        if e.incarnation <= self._reaped.get(e.name, -1):
            return
        if len(self._members) >= self._cfg.max_members:
            self.stats.dropped_member_limit += 1
            return
        self._add_member(e.name, e.address, e.incarnation, e.meta, now,
                         state=DEAD if e.state == DEAD else SUSPECT, accuser=accuser)

    def _rephase_push_pull(self, now: float) -> None:
        self._cancel(self._push_pull_timer)
        period = self._cfg.push_pull_period_s(self._live)
        self._push_pull_timer = self._schedule(
            now + self._rng.random() * period, self.on_push_pull_timeout
        )

    def _add_member(
        self,
        name: str,
        address: str,
        incarnation: int,
        meta: dict[str, MetaValue],
        now: float,
        *,
        state: int = ALIVE,
        accuser: str = "",
    ) -> Member:
        """Add a member we did not know: alive (event 'join'), or suspect or dead as
        another member's full state holds it (event 'suspect' / 'dead')."""
        m = Member(name, address, incarnation, ALIVE, meta, now)
        self._members[name] = m
        self.view_version += 1
        self._reaped.pop(name, None)
        self._other_pos[name] = len(self._others)
        self._others.append(name)
        self._live += 1
        # A newcomer goes to a random place in the current round, so that it is
        # probed within a round but members do not all probe it at once.
        i = int(self._rng.random() * (len(self._probe_order) + 1))
        self._probe_order.insert(i, name)
        if i < self._probe_index:
            self._probe_index += 1
        if state == ALIVE:
            self._emit("join", m)
        elif state == SUSPECT:
            self._start_suspicion(m, accuser, incarnation, now)
            self._emit("suspect", m)
        else:
            # Dead members are skipped when their turn to be probed comes.
            self._set_state(m, state, now)
            self._emit("dead", m)
        return m

    def _set_state(self, m: Member, state: int, now: float) -> None:
        old = m.state
        if old == state:
            return
        if (old <= SUSPECT) != (state <= SUSPECT):
            self._live += 1 if state <= SUSPECT else -1
        m.state = state
        self.view_version += 1
        m.state_change = now
        if old == SUSPECT:
            m.suspicion = None
            self._cancel(self._suspicion_timers.pop(m.name, None))
        if state >= DEAD and m is not self._self:
            self._schedule(now + self._cfg.dead_reap_s, self.on_reap_timeout, m.name, now)

    def _start_suspicion(self, m: Member, accuser: str, incarnation: int, now: float) -> None:
        """Move an alive member to suspect, with a suspicion timer."""
        cfg = self._cfg
        # k independent confirmations are expected; in a tiny cluster nobody else
        # could confirm, so the timeout is the minimum straight away.
        k = cfg.suspicion_mult - 2
        if self._live - 2 < k:
            k = 0
        min_s = cfg.suspicion_min_s(self._live)
        max_s = min_s * cfg.suspicion_max_timeout_mult if cfg.lifeguard_suspicion else min_s
        self._set_state(m, SUSPECT, now)
        m.suspicion = Suspicion(accuser, incarnation, k, min_s, max_s, now)
        self._arm_suspicion(m, now)

    def _arm_suspicion(self, m: Member, now: float) -> None:
        s = m.suspicion
        assert s is not None
        self._cancel(self._suspicion_timers.get(m.name))
        self._suspicion_timers[m.name] = self._schedule(
            max(now, s.deadline()), self.on_suspicion_timeout, m.name
        )

    def _next_probe_target(self) -> Member | None:
        members = self._members
        order = self._probe_order
        for _ in range(len(order) + 1):
            if self._probe_index >= len(order):
                self._reshuffle()
                order = self._probe_order
                if not order:
                    return None
            name = order[self._probe_index]
            self._probe_index += 1
            m = members.get(name)
            if m is not None and m.state <= SUSPECT:
                return m
        return None

    def _reshuffle(self) -> None:
        me = self._self
        order = [m.name for m in self._members.values() if m.state <= SUSPECT and m is not me]
        self._rng.shuffle(order)
        self._probe_order = order
        self._probe_index = 0

    def _random_members(self, k: int, pred: Callable[[Member], bool]) -> list[Member]:
        """Up to k distinct other members satisfying `pred`, chosen at random.
        Random indexes with a bounded number of tries (3 per member) keeps this O(k)
        in the usual case instead of filtering the whole list."""
        others = self._others
        n = len(others)
        if n == 0 or k <= 0:
            return []
        members = self._members
        rnd = self._rng.random
        out: list[Member] = []
        for _ in range(3 * n):
            m = members[others[int(rnd() * n)]]
            if m in out or not pred(m):
                continue
            out.append(m)
            if len(out) >= k:
                break
        return out

    @staticmethod
    def _is_live(m: Member) -> bool:
        return m.state <= SUSPECT
