"""The composite sans-IO node: every protocol decision a ringfs node makes.

Theory of operation
-------------------
A `Node` performs no I/O, never reads a clock and never creates randomness. Its
drivers (the trio runtime in ringfs/runtime, the simulator in simulations/) feed
it what happened and carry out what it asks:

    client_connected(conn, now) / client_disconnected(conn, now)
    client_request(conn, body, now) -> frame | None   one decoded frame from a connection
    peer_unreachable(address, now)                    a peer connection failed
    on_sync_complete(durable_seq, now) / on_sync_failed(message, now)
    handle_timer(now); next_deadline() -> float | None
    drain_outbox() -> list[Effect]                    replies, peer frames, syncs, closes

Connections carry either a client (HELLO without "peer") or another node (HELLO
with "peer": its name); peer frames are routed to the replication handlers.

Replication (Dynamo): a key lives on the N nodes of its preference list. Any
node takes any request. A get is sent to the N replicas of the annotated
preference list (`Ring.apl`: primaries that are up, fallbacks standing in for
those that are not) and answered after R replies with their causal merge; the
replies that come later still count for read repair. A put is coordinated by a
primary replica (a node that is none forwards it to one): the coordinator
applies the write to its own copy, creating a new dot, then ships the resulting
state to the other replicas, which merge it; the client is answered after W
replicas made it durable. A put without a context is a checked write (the
replicas merge it only over values its context covers; see PutCoordinator). A
fallback keeps what it receives for the down primary as a hint, stored apart
from its own data under a reserved key prefix.

Dots are stamped with an *actor* id, `name@epoch`, where the driver bumps the
epoch durably at every start. A crash can lose writes the node had not synced
but whose dots other replicas already hold; a new actor id per run means such a
dot is never issued twice with different values.

Durability: engine writes go to the OS at once; under the `always` and `group`
policies every acknowledgement (to a client, or to a coordinator) waits until
`on_sync_complete` reports a durable sequence number at or beyond the write. A
failed sync leaves the node read-only: it can no longer tell what reached the
disk, so it refuses writes rather than acknowledge something it may lose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import msgpack

from ringfs import __version__
from ringfs.antientropy import is_local_key
from ringfs.config import NodeConfig
from ringfs.dvv import (
    DVVSet,
    Value,
    decode_context,
    decode_stored,
    encode_context,
    merge_contexts,
)
from ringfs.errors import ErrorCode
from ringfs.files import FileStore
from ringfs.gossip import GossipConfig, Keyring, MemberInfo, SendPacket, Swim
from ringfs.gossip.member import STATE_NAMES, MemberState
from ringfs.lww import digest as lww_digest
from ringfs.lww import matches as lww_matches
from ringfs.lww import newest as lww_newest
from ringfs.lww import stamp as lww_stamp
from ringfs.membership import Member, Membership
from ringfs.peer import PeerMsg, frame_prefix, pack_message, parse_peer, peer_frame
from ringfs.quorum import GetCoordinator, PutCoordinator, QuorumFailure
from ringfs.repair import LEAVING_KEY, Repairer
from ringfs.ring import Replica
from ringfs.storage.engine import Record, StorageEngine
from ringfs.timers import Timer, Timers
from ringfs.wire import (
    ERROR,
    RESPONSE,
    SUPPORTED_VERSIONS,
    Op,
    WireError,
    encode_error,
    encode_frame,
    encode_response,
    field_key,
    field_opt_bytes,
    field_opt_uint,
    field_value,
    pack,
    parse_request,
    unpack,
)

log = logging.getLogger("ringfs.node")

RECONNECT_INTERVAL_S = 5.0
"""How often a node tries a full-state exchange with one member it believes dead, or
re-joins its seeds when it sees nobody alive: the way views split by a long partition,
or a node restarted while cut off, merge again."""
MAX_REAPED_REMEMBERED = 1_000_000
"""Reaped keys whose counters a node remembers; past it, it takes a new actor id."""
MAX_REAPED_CLOCKS = 100_000
"""Reaped tombstones whose clocks a node keeps (oldest forgotten first): a copy of a
key that arrives after its tombstone was reaped here loses what the tombstone had
deleted, so a late hint or repair cannot bring a deleted value back."""
HANDOFF_INTERVAL_S = 1.0
"""How often a node checks whether owners of its hints are back."""
MAX_FORWARD_HOPS = 2
"""A write is forwarded at most this many times: while a ring change spreads, the
node a write was forwarded to may see another primary; a third view is refused."""
HANDOFF_MAX_INFLIGHT = 64
"""Hint deliveries awaiting an owner's acknowledgement at once, per owner."""

LOCAL_PREFIX = b"\x00l"
"""Keys a node keeps for itself (never replicated, compared or handed off)."""
VIEW_KEY = LOCAL_PREFIX + b"view"
"""Local key holding the gossip view, so a restarted node remembers members that are
down (docs/design.md); written at once when the ring changes, else at most every
VIEW_SAVE_INTERVAL_S when a member's state changed."""
VIEW_SAVE_INTERVAL_S = 1.0
GC_THRESHOLDS = (50_000, 20, 100)
"""gc.set_threshold for a process driving nodes (`ringfs node`, the simulator): a
node allocates many short-lived objects per message and few cycles, and with
Python's defaults a node under write load spent about 5% of its time in the
collector, a simulation about 15%, mostly in full collections."""
REAPED_PREFIX = LOCAL_PREFIX + b"r"
"""Local keys holding the clock of a reaped tombstone: REAPED_PREFIX + the key."""
_MEMBER_STATES: dict[str, MemberState] = {s: s for s in STATE_NAMES}
HINT_PREFIX = b"\x00h"
"""Keys beginning with 0x00 are the node's own; a hint is HINT_PREFIX + owner + 0 + key."""

KNOWN_FAULTS = frozenset({
    "ignore_context",      # a put ignores the client's context (writes blind)
    "ack_before_sync",     # acknowledge writes before the sync that covers them
    "skip_read_repair",    # never repair stale replicas found by a get
    "skip_hinted_handoff",  # never deliver hints to their owners
    "skip_anti_entropy",   # never run Merkle-tree exchanges
    "wrong_incarnation_precedence",  # gossip: accept suspect/dead of an older incarnation
    "skip_write_check",    # replicas take a checked write (a blind put) without checking it
})
"""Defects the simulator can inject to prove its checkers can fail. Never set in production."""

# Room left in a frame for the envelope and contexts when bounding sibling sets.
_FRAME_SLACK = 64 * 1024
PEER_BATCH_BYTES = 1024 * 1024
"""Messages queued for one peer are sent in frames of about this size at most."""


# -- effects the drivers carry out ------------------------------------------------
# Named tuples: the node makes one or more of these per message, and a tuple is the
# cheapest immutable record to build.

class ClientReply(NamedTuple):
    """Send `frame` (a complete encoded frame) on connection `conn`."""

    conn: int
    frame: bytes


class CloseConnection(NamedTuple):
    """Close connection `conn` once the frames queued before this are sent."""

    conn: int
    reason: str


class RequestSync(NamedTuple):
    """Make the engine durable up to at least `seq`, then call on_sync_complete."""

    seq: int


class PeerSend(NamedTuple):
    """Deliver `frame` to the node at `address` over this node's connection to it."""

    address: str
    frame: bytes


class Datagram(NamedTuple):
    """Send a gossip datagram to the UDP endpoint at `address`."""

    address: str
    data: bytes


Effect = ClientReply | CloseConnection | RequestSync | PeerSend | Datagram

_new: Any = tuple.__new__
"""Builds an effect on the hot paths: `_new(PeerSend, (address, frame))` is the same
tuple as `PeerSend(address, frame)` without the generated Python __new__."""


@dataclass
class _Conn:
    handshaken: bool = False
    peer: str | None = None
    inflight: set[int] | None = None
    forwarded_from: tuple[str, int] | None = None
    """For the pseudo-connection of a forwarded write: (sender node, its forward id)."""
    hops: int = 0
    """How many nodes forwarded the write this pseudo-connection carries."""
    closing: bool = False
    """A fatal error was answered: later frames on this connection are ignored."""


@dataclass(slots=True)
class _Pending:
    """An acknowledgement held until `seq` is durable."""

    seq: int
    release: Callable[[], None]


@dataclass(eq=False)
class _ClientGet:
    conn: int
    rid: int
    coord: GetCoordinator
    whereis: bool = False
    sent: bool = False
    then: Callable[[GetCoordinator | None, QuorumFailure | None, float], None] | None = None
    """For a read done on behalf of a blind write: continue it instead of replying."""
    timer: Timer | None = None


class _Stale(Exception):
    """A checked write met values its context does not cover: those `held` here."""

    def __init__(self, held: DVVSet) -> None:
        super().__init__("the local copy holds values the write has not seen")
        self.held = held


@dataclass(eq=False)
class _ClientPut:
    conn: int
    rid: int
    coord: PutCoordinator
    value: Value
    timer: Timer | None = None


@dataclass(eq=False)
class _Forwarded:
    conn: int
    rid: int
    target: str
    timer: Timer | None = None


def hint_key(owner: str, key: bytes) -> bytes:
    return HINT_PREFIX + owner.encode() + b"\x00" + key


def parse_hint_key(stored: bytes) -> tuple[str, bytes] | None:
    if not stored.startswith(HINT_PREFIX):
        return None
    owner, sep, key = stored[len(HINT_PREFIX):].partition(b"\x00")
    if not sep:
        return None
    return owner.decode(errors="replace"), key


class Node:
    """One ringfs node's protocol logic. See the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        engine: StorageEngine,
        rng: random.Random,
        now: float,
        *,
        epoch: int = 1,
        faults: frozenset[str] = frozenset(),
        keyring: Keyring | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = faults - KNOWN_FAULTS
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        self.faults = faults
        self.config = config
        self.name = config.name
        self.actor = f"{config.name}@{epoch}"
        self._epoch = epoch
        self._seeds_given = any(sd != config.listen for sd in config.seeds)
        self._actor_generation = 0
        self._reaped: dict[bytes, int] = {}
        """Keys reaped during this actor's life, with its last counter in each."""
        self._lost: set[bytes] = set()
        """Keys whose local copy was lost to damage under this actor (lost_counters)."""
        self.engine = engine
        self.rng = rng
        self.limits = config.limits
        self.durability = config.durability
        self._wall_clock = wall_clock
        """Seconds since the epoch by this node's clock: stamps last-write-wins values
        (`now` is the driver's monotonic clock; the simulator hands in a skewed one)."""
        self._lww = tuple(p.encode() for p in config.lww_prefixes)
        self._lww_digest = lww_digest(config.lww_prefixes)
        self._lww_warned: dict[str, str] = {}
        """Members whose LWW prefixes differ from this node's, with the fingerprint
        warned about (logged once per member and fingerprint)."""
        self.started_at = now
        self.read_only_reason: str | None = None
        self.counters: Counter[str] = Counter()
        self._reaped_clocks: dict[bytes, DVVSet] = self._saved_reaped_clocks()
        """Key -> the clock (counters, no values) of the tombstone reaped here, oldest
        first; each is also kept on disk under REAPED_PREFIX, so a restart remembers."""
        meta: dict[str, str | int | float] = {"capacity": config.capacity}
        if self._lww_digest:
            meta["lww"] = self._lww_digest
        if config.zone:
            meta["zone"] = config.zone
        self.membership = Membership(
            Member(config.name, config.listen, meta=meta),
            vnodes_per_capacity=config.vnodes_per_capacity,
            unreachable_s=config.unreachable_s,
        )
        self._outbox: list[Effect] = []
        self._peer_out: dict[str, list[bytes]] = {}
        """address -> encoded messages for that peer, sent as frames by drain_outbox."""
        self._peer_out_bytes: dict[str, int] = {}
        self._frame_prefix = frame_prefix(config.name)
        # A batch never outgrows a frame the peer accepts (256: the envelope's room).
        self._peer_batch_bytes = min(PEER_BATCH_BYTES, config.limits.max_frame_bytes - 256)
        self._conns: dict[int, _Conn] = {}
        self._pending: deque[_Pending] = deque()
        self._sync_requested = 0
        self._next_interval_sync: float | None = (
            now + config.durability.interval_ms / 1000.0
            if config.durability.kind == "interval" else None
        )
        self._timers = Timers()
        self._ids = 0
        self._gets: dict[int, _ClientGet] = {}
        self._puts: dict[int, _ClientPut] = {}
        self._forwards: dict[int, _Forwarded] = {}
        self._pseudo_conn = 0
        self._max_sibling_bytes = self.limits.max_frame_bytes - _FRAME_SLACK
        # owner -> keys this node holds for it as a fallback (rebuilt from the store).
        self._hint_index: dict[str, set[bytes]] = {}
        if len(engine):
            for sk in self._iter_hints():
                parsed = parse_hint_key(sk)
                if parsed is not None:
                    self._hint_index.setdefault(parsed[0], set()).add(parsed[1])
        self._handoffs: dict[int, tuple[str, bytes, DVVSet]] = {}
        self._handoff_inflight: Counter[str] = Counter()
        self._next_handoff: float | None = now + HANDOFF_INTERVAL_S if self._hint_index else None
        self._hints_full_logged = False
        self._solo_apl = (Replica(config.name, "primary", None),)
        self._handlers: dict[int, Callable[[int, int, dict[str, Any], float], bytes | None]] = {
            Op.PING: self._on_ping,
            Op.GET: self._on_get,
            Op.PUT: self._on_put,
            Op.DELETE: self._on_delete,
            Op.STATUS: self._on_status,
            Op.WHEREIS: self._on_whereis,
            Op.LEAVE: self._on_leave,
        }
        self._peer_handlers: dict[int, Callable[[str, dict[str, Any], float], None]] = {
            PeerMsg.JOIN: self.on_join,
            PeerMsg.MEMBERS: self.on_members,
            PeerMsg.REPLICA_PUT: self.on_replica_put,
            PeerMsg.REPLICA_PUT_ACK: self.on_replica_put_ack,
            PeerMsg.REPLICA_GET: self.on_replica_get,
            PeerMsg.REPLICA_GET_REPLY: self.on_replica_get_reply,
            PeerMsg.REPLICA_REAP: self.on_replica_reap,
            PeerMsg.FORWARD: self.on_forward,
            PeerMsg.FORWARD_REPLY: self.on_forward_reply,
            PeerMsg.GOSSIP: self.on_gossip,
            PeerMsg.AAE_REQUEST: self.on_aae_request,
            PeerMsg.AAE_REPLY: self.on_aae_reply,
        }
        self._forwardable = {Op.PUT, Op.DELETE, Op.FILE_COMMIT, Op.FILE_DELETE}
        self.files = FileStore(self, now)
        self._handlers.update(self.files.handlers())
        self._peer_handlers.update(self.files.peer_handlers())
        log.info("node %s (actor %s) starting: engine=%s durability=%s N=%d R=%d W=%d "
                 "gossip=%s", self.name, self.actor, config.engine, config.durability,
                 config.n_replicas, config.r, config.w, config.gossip)
        self.gossip: Swim | None = None
        self._view_save_at: float | None = None
        self._next_reconnect: float | None = None
        self._seeds: list[str] = []
        seeds = [s for s in config.seeds if s != config.listen]
        if config.gossip != "off":
            preset = GossipConfig.local() if config.gossip == "local" else GossipConfig.lan()
            if "wrong_incarnation_precedence" in faults:
                preset = dataclasses.replace(preset, fault_wrong_incarnation_precedence=True)
            self.gossip = Swim(preset, config.name, config.listen,
                               random.Random(rng.getrandbits(64)), now, meta=meta,
                               keyring=keyring)
            saved = self._saved_view()
            if saved:
                self.gossip.restore(saved, now)
            if seeds:
                self.gossip.join(seeds, now)
            self._seeds = seeds
            self._next_reconnect = now + RECONNECT_INTERVAL_S
            self._pump_gossip(now)
        else:
            for seed in seeds:
                self._send_address(seed, PeerMsg.JOIN, self._join_body())
        self.repair = Repairer(self, now)
        if engine.get(LEAVING_KEY) is not None and self.gossip is not None:
            self.repair.begin_leave(now, resumed=True)

    # -- small helpers -------------------------------------------------------------
    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _after(self, when: float, fn: Callable[[float], None]) -> Timer:
        """Call fn(now) once `now` reaches `when`; the entry returned can be cancelled
        with `_cancel_timer` (a request that finished no longer needs its timeout: it
        is dropped unrun, and no wake-up is scheduled for it)."""
        return self._timers.at(when, fn)

    _cancel_timer = staticmethod(Timers.cancel)

    def _send(self, node: str, msg: PeerMsg, body: dict[str, Any]) -> bool:
        addr = self.membership.address_of(node)
        if addr is None:
            self.counters["peer_unknown_destination"] += 1
            return False
        self._send_address(addr, msg, body)
        return True

    def _send_encoded(self, node: str, frame: bytes) -> bool:
        """Like _send, for a frame from encode_peer: one frame may go to several peers."""
        addr = self.membership.address_of(node)
        if addr is None:
            self.counters["peer_unknown_destination"] += 1
            return False
        self._outbox.append(_new(PeerSend, (addr, frame)))
        return True

    def _send_address(self, address: str, msg: PeerMsg, body: dict[str, Any]) -> None:
        """Queue a message for the peer at `address`; `drain_outbox` frames the queue."""
        self._queue_packed(address, pack_message(msg, body))

    def _send_packed(self, node: str, packed: bytes) -> bool:
        """Like _send, for a message from pack_message: one may go to several peers."""
        addr = self.membership.address_of(node)
        if addr is None:
            self.counters["peer_unknown_destination"] += 1
            return False
        self._queue_packed(addr, packed)
        return True

    def _queue_packed(self, address: str, packed: bytes) -> None:
        queue = self._peer_out.get(address)
        if queue is None:
            self._peer_out[address] = [packed]
            self._peer_out_bytes[address] = len(packed)
            return
        size = self._peer_out_bytes[address] + len(packed)
        if size > self._peer_batch_bytes:
            self._outbox.append(_new(PeerSend, (address, peer_frame(self._frame_prefix, queue))))
            queue.clear()
            size = len(packed)
        queue.append(packed)
        self._peer_out_bytes[address] = size

    def _flush_peers(self) -> None:
        prefix = self._frame_prefix
        outbox = self._outbox
        for address, queue in self._peer_out.items():
            if queue:
                outbox.append(_new(PeerSend, (address, peer_frame(prefix, queue))))
        self._peer_out = {}
        self._peer_out_bytes = {}

    def _hold_until_durable(self, seq: int, release: Callable[[], None]) -> None:
        """Run `release` once `seq` is durable (at once under policies that ack early)."""
        if (not self.durability.acks_after_sync or seq <= self.engine.durable_seq
                or "ack_before_sync" in self.faults):
            release()
            return
        self._pending.append(_Pending(seq, release))
        self._request_sync(seq)

    def _request_sync(self, seq: int) -> None:
        """Ask the driver for a sync covering `seq`, unless one already asked for covers it."""
        if seq > self._sync_requested:
            self._sync_requested = seq
            self._outbox.append(_new(RequestSync, (seq,)))

    # -- connections ---------------------------------------------------------------
    def client_connected(self, conn: int, now: float) -> None:
        if conn in self._conns:
            raise ValueError(f"connection {conn} is already open")
        self._conns[conn] = _Conn()
        self.counters["connections_opened"] += 1

    def client_disconnected(self, conn: int, now: float) -> None:
        """Forget a connection. Requests it issued still complete; their replies are dropped."""
        if self._conns.pop(conn, None) is not None:
            self.counters["connections_closed"] += 1

    def inflight(self, conn: int) -> int:
        """Requests on `conn` whose replies are still to come (for read back-pressure)."""
        c = self._conns.get(conn)
        return len(c.inflight) if c is not None and c.inflight else 0

    def _track(self, conn: int, rid: int) -> None:
        c = self._conns.get(conn)
        if c is None:
            return  # the client went away; a write made again for it still goes on
        if c.inflight is None:
            c.inflight = set()
        c.inflight.add(rid)

    def _finish(self, conn: int, rid: int, frame: bytes) -> None:
        c = self._conns.get(conn)
        if c is None:
            return  # the client went away; what it asked for stands regardless
        if c.inflight is not None:
            c.inflight.discard(rid)
        if c.forwarded_from is not None:
            self._conns.pop(conn, None)
            self._reply_forward(c.forwarded_from, frame)
            return
        self._outbox.append(_new(ClientReply, (conn, frame)))

    def _reply_forward(self, origin: tuple[str, int], frame: bytes) -> None:
        sender, fid = origin
        kind, _rid, payload = unpack(memoryview(frame)[4:], len(frame))
        self._send(sender, PeerMsg.FORWARD_REPLY,
                   {"id": fid, "ok": kind == RESPONSE, "body": payload})

    # -- requests ------------------------------------------------------------------
    def client_request(self, conn: int, body: Any, now: float) -> bytes | None:
        """Handle one decoded frame from `conn`.

        Returns the encoded reply frame when the answer is ready now, else None (the
        reply, if any, comes later through the outbox). Protocol violations are
        answered with an error frame; fatal ones also queue CloseConnection, and the
        caller must not pass further frames of that connection.
        """
        c = self._conns.get(conn)
        if c is None:
            raise ValueError(f"request on unknown connection {conn}")
        if c.closing:
            self.counters["frames_after_close"] += 1
            return None
        if c.peer is not None:
            self._on_peer_frame(c, conn, body, now)
            return None
        try:
            rid, op, args = parse_request(body)
            if not c.handshaken:
                if op != Op.HELLO:
                    raise WireError(ErrorCode.HANDSHAKE_REQUIRED,
                                    "the first request on a connection must be HELLO",
                                    req_id=rid, fatal=True)
                return self._on_hello(conn, c, rid, args)
            handler = self._handlers.get(op)
            if handler is None:
                if op == Op.HELLO:
                    raise WireError(ErrorCode.BAD_REQUEST, "HELLO was already done", req_id=rid)
                raise WireError(ErrorCode.UNKNOWN_OP, f"unknown op {op}", req_id=rid)
            if c.inflight and rid in c.inflight:
                # The reply could not be told apart from the original's: the client is
                # broken, so the connection is closed rather than answered ambiguously.
                raise WireError(ErrorCode.DUPLICATE_REQUEST_ID,
                                f"request id {rid} is already in flight", fatal=True)
            return handler(conn, rid, args, now)
        except WireError as exc:
            self.counters[f"error_{exc.code.name.lower()}"] += 1
            if exc.fatal:
                c.closing = True
                self._outbox.append(CloseConnection(conn, exc.message))
                log.debug("closing connection %d: %s", conn, exc.message)
            return encode_error(exc.req_id, exc.code, exc.message, **exc.details)
        except Exception as exc:  # a bug must cost one request, never the node
            self.counters["internal_errors"] += 1
            log.exception("internal error handling a request")
            rid_guess = body[1] if type(body) is list and len(body) > 1 and type(
                body[1]) is int else None
            return encode_error(rid_guess, ErrorCode.INTERNAL, f"internal error: {exc!r}")

    def _on_hello(self, conn: int, c: _Conn, rid: int, args: dict[str, Any]) -> bytes:
        versions = args.get("versions")
        if (type(versions) is not list or not versions or len(versions) > 16
                or not all(type(v) is int for v in versions)):
            raise WireError(ErrorCode.BAD_REQUEST, "'versions' must be a list of integers",
                            req_id=rid, fatal=True)
        common = [v for v in SUPPORTED_VERSIONS if v in versions]
        if not common:
            raise WireError(ErrorCode.UNSUPPORTED_VERSION,
                            f"this node speaks versions {list(SUPPORTED_VERSIONS)}",
                            req_id=rid, fatal=True)
        peer = args.get("peer")
        if peer is not None:
            if type(peer) is not str or not peer or len(peer) > 64:
                raise WireError(ErrorCode.BAD_REQUEST, "'peer' must be a node name",
                                req_id=rid, fatal=True)
            c.peer = peer
            self.counters["peer_connections"] += 1
        c.handshaken = True
        return encode_response(rid, {
            "version": max(common),
            "node": self.name,
            "server": f"ringfs/{__version__}",
            "limits": self.limits.to_wire(),
        })

    def _on_ping(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes:
        return encode_response(rid, {})

    def _on_status(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes:
        return encode_response(rid, self.status(now))

    def _on_leave(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes:
        if self.gossip is None:
            raise WireError(ErrorCode.BAD_REQUEST, "leave needs gossip membership", req_id=rid)
        try:
            self.repair.begin_leave(now)
        except WireError as exc:
            exc.req_id = rid
            raise
        self.counters["leave"] += 1
        return encode_response(rid, {"leaving": True, **self.repair.status()["handoff"]})

    def _set_leaving_meta(self, now: float) -> None:
        """Advertise `leaving`: every ring, this node's own included, drops this node."""
        me = self.membership.me
        meta = {**me.meta, "leaving": 1}
        self.membership.me = dataclasses.replace(me, meta=meta)
        self.membership.upsert(self.membership.me)
        if self.gossip is not None:
            self.gossip.update_meta(meta, now)
            self._pump_gossip(now)

    @property
    def departed(self) -> bool:
        """A requested leave finished: the data moved away and the leave was announced."""
        return self.repair.departed

    def status(self, now: float) -> dict[str, Any]:
        """What `ringfs status` shows for this node."""
        st = self.engine.stats()
        shares = self.membership.ring.shares()
        up = self.membership.up(now)
        members = []
        for m in sorted(self.membership.members.values(), key=lambda m: m.name):
            d = m.to_status()
            if m.name == self.name and self.gossip is not None:
                d["incarnation"] = self.gossip.incarnation
                if self.gossip.leaving:
                    d["state"] = "left"
            elif d["state"] == "alive" and m.name not in up:
                d["state"] = "suspect"  # alive by membership, unreachable by transport
            d["ring_share"] = round(shares.get(m.name, 0.0), 6)
            members.append(d)
        return {
            "node": self.name,
            "actor": self.actor,
            "address": self.config.listen,
            "version": __version__,
            "read_only": self.read_only_reason,
            "members": members,
            "ring": {"n_replicas": self.config.n_replicas, "r": self.config.r,
                     "w": self.config.w, "vnodes": len(self.membership.ring.vnodes),
                     "digest": self.membership.ring.digest.hex(),
                     "lww_prefixes": list(self.config.lww_prefixes),
                     "lww_prefixes_differ": sorted(
                         m.name for m in self.membership.members.values()
                         if m.name != self.name
                         and m.meta.get("lww", "") != self._lww_digest)},
            "storage": {
                "engine": self.config.engine,
                "durability": str(self.durability),
                "keys": st.keys - len(self._reaped_clocks) - sum(
                    self.engine.get(k) is not None for k in (VIEW_KEY, LEAVING_KEY)),
                "tombstones": st.tombstones,
                "last_seq": st.last_seq,
                "durable_seq": st.durable_seq,
                "data_bytes": st.data_bytes,
                "live_bytes": st.live_bytes,
                "corrupt_records": st.corrupt_records,
            },
            "hints": {"pending": self.hints, "max": self.config.max_hints,
                      "by_owner": self.hints_by_owner(),
                      "full": self.hints >= self.config.max_hints},
            **self.repair.status(),
            "connections": len(self._conns),
            "pending_acks": len(self._pending),
            "files": self.files.status(),
            "counters": dict(self.counters),
        }

    # -- local replica storage -------------------------------------------------------
    def _stored_key(self, key: bytes, hint_for: str | None) -> bytes:
        return key if hint_for is None else hint_key(hint_for, key)

    def _read(self, stored_key: bytes) -> tuple[Record | None, DVVSet | None]:
        """The stored record of a key and its decoded state (None, None when absent).

        A replicated key found missing may have been found damaged by this very read:
        the repairer hears of it at once, before any write could take the key out of
        the engine's list of damaged keys (its tree must be rebuilt, and the counters
        the lost copy held must not be reused).
        """
        # _read_record, written out: every read comes here, and the call cost a GET
        # about 0.2 us of 7.4 in `bench.kv micro`.
        rec = self.engine.get(stored_key)
        if rec is None:
            if not is_local_key(stored_key):
                self.repair.note_damage()
            return None, None
        # Decoded afresh on every read: about half a microsecond for a one-value state,
        # less than keeping decoded states for reuse cost (a cache of them made a
        # replicated put 7-9% dearer in bench.put_path, hits or not, GC on or off).
        return rec, decode_stored(rec.meta)

    def _read_record(self, stored_key: bytes) -> Record | None:
        """The stored record of a key, undecoded (see `_read`)."""
        rec = self.engine.get(stored_key)
        if rec is None and not is_local_key(stored_key):
            self.repair.note_damage()
        return rec

    def _load(self, stored_key: bytes) -> DVVSet | None:
        return self._read(stored_key)[1]

    def _store(self, stored_key: bytes, state: DVVSet, live: int | None = None, *,
               old: Record | None) -> int:
        """Write a replica state over `old`, the record `_read` returned; raises OSError
        from the engine.

        Every local write goes through here (or `_drop_local`), which keeps the
        anti-entropy hash trees current.
        """
        packed = pack(state.packable())  # the shared packer: its buffer is reused
        if (state.is_tombstone() if live is None else live == 0):
            seq = self.engine.delete(stored_key, packed)
        else:
            seq = self.engine.put(stored_key, b"", packed)
        if not is_local_key(stored_key):
            repair = self.repair
            repair.follow_ring()
            if not repair.trees.note_write(stored_key, None if old is None else old.meta,
                                           packed):
                repair.foreign_write()  # a key this node does not own: hand it on
        return seq

    def _drop_local(self, stored_key: bytes) -> None:
        """Forget a stored key entirely (no tombstone); every local removal goes here."""
        old = None if is_local_key(stored_key) else self.engine.get(stored_key)
        self.engine.purge(stored_key)
        if old is not None:
            self.repair.follow_ring()
            self.repair.trees.note_write(stored_key, old.meta, None)

    def _iter_hints(self) -> Any:
        for k, _rec in self.engine.iter_range(0, 0):
            if k.startswith(HINT_PREFIX):
                yield k

    def _merge_local(self, key: bytes, incoming: DVVSet, hint_for: str | None, *,
                     checked: bool = False, base: bytes | None = None) -> int | None:
        """Merge `incoming` into the local copy; the write's seq, or None if nothing changed.

        `base`: the encoded state the coordinator made `incoming` from by a causal
        update of its own (REPLICA_PUT's `base`). A local copy that is exactly those
        bytes is what `incoming` descends from, so their merge is `incoming` itself,
        and a checked write's test holds: it is stored as it came, without decoding,
        testing or merging the local copy.

        Raises WireError when the node cannot take the write, and, for a `checked`
        write, _Stale when the local copy holds values its clock does not cover.
        """
        if self.read_only_reason is not None:
            raise WireError(ErrorCode.STORAGE_ERROR, f"node is read-only: {self.read_only_reason}")
        self.files.check_incoming(key, incoming)
        sk = self._stored_key(key, hint_for)
        rec = self._read_record(sk)
        if (rec is not None and base is not None and rec.meta == base and hint_for is None
                and key not in self._reaped_clocks):
            return self._store_merged(sk, incoming, rec)
        local = None if rec is None else decode_stored(rec.meta)
        if checked and local is not None and not incoming.supersedes(local):
            # Values the write has not seen, or a dot of it already naming another
            # value here (a coordinator that lost count): write again over them.
            raise _Stale(local)
        if hint_for is None and self._reaped_clocks:
            gone = self._reaped_clocks.get(key)
            if gone is not None:
                # The key's tombstone was reaped here: drop what it had deleted (a
                # hint or repair sent before the delete must not revive it).
                incoming = incoming.sync(gone)
                if local is None and not incoming.sibling_count():
                    return None
        merged = incoming if local is None else local.sync(incoming)
        if local is not None and merged == local:
            return None
        if hint_for is not None and local is None:
            if self.hints >= self.config.max_hints:
                self.counters["hints_refused_full"] += 1
                if not self._hints_full_logged:
                    self._hints_full_logged = True
                    log.warning("hint store full (%d); refusing fallback writes, anti-entropy "
                                "must repair the owners", self.config.max_hints)
                raise WireError(ErrorCode.OVERLOADED, "hint store is full")
            self._note_hint(hint_for, key, None)
        return self._store_merged(sk, merged, rec)

    def _store_merged(self, sk: bytes, merged: DVVSet, rec: Record | None) -> int:
        try:
            return self._store(sk, merged, old=rec)
        except OSError as exc:
            self.counters["storage_errors"] += 1
            log.error("write failed: %s", exc)
            raise WireError(ErrorCode.STORAGE_ERROR,
                            f"write failed: {exc.strerror or exc}") from None

    @property
    def hints(self) -> int:
        """Writes held for down owners (hinted handoff still to do)."""
        return sum(len(keys) for keys in self._hint_index.values())

    def hints_by_owner(self) -> dict[str, int]:
        return {owner: len(keys) for owner, keys in sorted(self._hint_index.items()) if keys}

    def _note_hint(self, owner: str, key: bytes, now: float | None) -> None:
        self._hint_index.setdefault(owner, set()).add(key)
        if self._next_handoff is None:
            self._next_handoff = (now if now is not None else 0.0) + HANDOFF_INTERVAL_S

    def on_handoff_timeout(self, now: float) -> None:
        """Deliver hints to owners that gossip (or the transport) shows are up again."""
        self._next_handoff = None
        if not self._hint_index:
            return
        self._next_handoff = now + HANDOFF_INTERVAL_S
        if ("skip_hinted_handoff" in self.faults or self.read_only_reason is not None
                or not self.config.hinted_handoff):
            return
        for owner in list(self._hint_index):
            keys = self._hint_index[owner]
            if not keys:
                del self._hint_index[owner]
                continue
            if owner == self.name:
                continue
            rehome = not self.membership.is_up(owner, now)
            if rehome and not (self.repair.leaving or owner not in self.membership.members):
                continue
            budget = HANDOFF_MAX_INFLIGHT - self._handoff_inflight[owner]
            for key in sorted(keys)[:max(0, budget)]:
                if any(h[0] == owner and h[1] == key for h in self._handoffs.values()):
                    continue
                state = self._load(hint_key(owner, key))
                if state is None:
                    keys.discard(key)
                    continue
                body: dict[str, Any] = {"key": key, "state": state.to_wire(), "handoff": True}
                target = owner
                if rehome:
                    found, hint_for = self._rehome_target(key, owner, now)
                    if found is None:
                        continue
                    target = found
                    if hint_for is not None:
                        body["hint_for"] = hint_for
                hid = self._next_id()
                self._handoffs[hid] = (owner, key, state)
                self._handoff_inflight[owner] += 1
                # An acknowledgement can be lost (owner crashed before syncing, a cut
                # link): give up on this attempt after a while so the hint is retried.
                self._after(now + self.config.request_timeout_s,
                            partial(self._handoff_expired, hid))
                self.counters["hints_sent"] += 1
                self._send(target, PeerMsg.REPLICA_PUT, {"id": hid, **body})

    def _rehome_target(self, key: bytes, owner: str,
                       now: float) -> tuple[str | None, str | None]:
        """Where a hint goes when its owner cannot take it: (node, hint_for).

        An owner no longer on the ring (removed) gets nothing: the key's first live
        owner now takes the write as its own. A leaving node passes hints for owners
        that are down to the fallback the ring now picks for them.
        """
        ring = self.membership.ring
        up = self.membership.up(now) - {self.name}
        if owner not in ring:
            first = next((r.node for r in ring.apl(key, self.config.n_replicas, up)
                          if r.role == "primary" and r.node != self.name), None)
            return first, None
        for rep in ring.apl(key, self.config.n_replicas, up):
            if rep.hint_for == owner and rep.node != self.name:
                return rep.node, owner
        return None, None

    def _handoff_expired(self, hid: int, now: float) -> None:
        if hid in self._handoffs:
            self.counters["hints_unacknowledged"] += 1
            self._handoff_done(hid, False)

    def _handoff_done(self, hid: int, ok: bool) -> bool:
        """An owner answered a hint delivery; True if `hid` was one."""
        h = self._handoffs.pop(hid, None)
        if h is None:
            return False
        owner, key, sent = h
        self._handoff_inflight[owner] -= 1
        if not ok:
            self.counters["hints_refused"] += 1
            return True
        sk = hint_key(owner, key)
        if self._load(sk) == sent:
            # The owner holds it durably and nothing newer arrived meanwhile: drop ours.
            self._drop_local(sk)
            self._hint_index.get(owner, set()).discard(key)
            self.counters["hints_delivered"] += 1
        return True

    # -- client key/value ops ---------------------------------------------------------
    def _client_key(self, args: dict[str, Any], rid: int) -> bytes:
        key = field_key(args, self.limits, rid)
        if key[0] == 0:
            raise WireError(ErrorCode.BAD_REQUEST, "keys starting with byte 0x00 are reserved",
                            req_id=rid)
        return key

    def _quorum_arg(self, args: dict[str, Any], name: str, rid: int) -> int:
        """R or W for a request: as asked, else the default.

        On a node started without seeds, a ring of fewer than N members keeps fewer
        than N copies, so quorums shrink with it; members that are down still count,
        so failures still fail. A node given seeds belongs to a bigger cluster even
        when it sees nobody (restarted while the others were away): shrinking W to
        what it sees would acknowledge writes the real replicas never get.
        """
        if name in args:
            v = field_opt_uint(args, name, 1, self.config.n_replicas, rid)
            q = v if v is not None else int(getattr(self.config, name))
        else:
            q = self.config.r if name == "r" else self.config.w
        if self._seeds_given:
            return q
        n = len(self.membership.ring)
        return q if q < n else n

    def require_cluster(self, rid: int | None) -> None:
        """Raise UNAVAILABLE (not executed) on a node given seeds that knows no other
        member yet: it belongs to a bigger cluster (restarted while cut off, its saved
        view lost), and owning every key it would take writes where the cluster's
        reads never look."""
        m = self.membership
        if self._seeds_given and len(m.members) == 1:
            raise WireError(ErrorCode.UNAVAILABLE,
                            "this node has not found its cluster yet (none of its "
                            "seeds or remembered members answered)", req_id=rid,
                            details={"executed": False})

    def _apl(self, key: bytes, now: float, rid: int | None = None) -> tuple[Replica, ...]:
        """The annotated preference list of a key a client request names (`rid`: the
        request's id, for the error a node that knows no cluster yet answers)."""
        if self._alone(rid):
            # A one-member ring is this node alone: every key's list is just us.
            return self._solo_apl
        m = self.membership
        return m.ring.apl(key, self.config.n_replicas, m.up(now))

    def _alone(self, rid: int | None) -> bool:
        """Whether this node alone is the ring (see require_cluster, which it applies)."""
        m = self.membership
        if len(m.ring) == 1 and len(m.members) == 1:
            if self._seeds_given:  # (checked here first: most nodes were given none)
                self.require_cluster(rid)
            return True
        return False

    def _on_get(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes | None:
        key = self._client_key(args, rid)
        self.counters["get"] += 1
        if len(args) == 1 and self._alone(rid):
            # Only a key, on a one-node ring: R is 1 (`_alone` refused a node given
            # seeds, whose quorums do not shrink), and the local copy is the answer
            # (what _start_get finds for a one-replica list).
            return self._state_result(rid, self._read(key)[1], key)
        r = self._quorum_arg(args, "r", rid)
        if r == 1 and self._alone(rid):
            return self._state_result(rid, self._read(key)[1], key)
        return self._start_get(conn, rid, key, r, now, whereis=False)

    def _on_whereis(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes | None:
        key = self._client_key(args, rid)
        self.counters["whereis"] += 1
        return self._start_get(conn, rid, key, 0, now, whereis=True)

    def _start_get(self, conn: int, rid: int, key: bytes, r: int, now: float,
                   whereis: bool,
                   then: Callable[[GetCoordinator | None, QuorumFailure | None, float], None]
                   | None = None, apl: tuple[Replica, ...] | None = None) -> bytes | None:
        """Read `key` from its replicas; `apl`: its preference list at `now`, when the
        caller already has it."""
        if apl is None:
            apl = self._apl(key, now, rid)
        if whereis:
            r = len(apl) or 1
        if len(apl) < r:
            raise self._too_few_up(rid, len(apl), r)
        if len(apl) == 1 and apl[0].node == self.name and not whereis and then is None:
            # A one-replica ring: read locally, nothing to merge or repair.
            return self._state_result(rid, self._load(key), key)
        coord = GetCoordinator(key, apl, r, now + self.config.request_timeout_s)
        gid = self._next_id()
        self._gets[gid] = _ClientGet(conn, rid, coord, whereis, then=then)
        if then is None:
            self._track(conn, rid)
        failure: QuorumFailure | None = None
        for rep in apl:
            if rep.node == self.name:
                coord.on_reply(self.name, self._load(self._stored_key(key, rep.hint_for)))
            else:
                body: dict[str, Any] = {"id": gid, "key": key}
                if rep.hint_for is not None:
                    body["hint_for"] = rep.hint_for
                if not self._send(rep.node, PeerMsg.REPLICA_GET, body):
                    failure = coord.on_failed(rep.node, "unknown address") or failure
        self._gets[gid].timer = self._after(coord.deadline, partial(self.on_get_timeout, gid))
        self._advance_get(gid, now, failure)
        return None

    def _state_result(self, rid: int, state: DVVSet | None, key: bytes) -> bytes:
        if state is None or not state.entries:
            return encode_response(rid, {"found": False, "values": [], "context": b""})
        values = self._read_values(key, state)
        return encode_response(rid, {"found": bool(values), "values": values,
                                     "context": state.encoded_context()})

    def _get_result(self, rid: int, coord: GetCoordinator) -> bytes:
        state = coord.merged
        values = self._read_values(coord.key, state)
        return encode_response(rid, {
            "found": bool(values),
            "values": values,
            "context": state.encoded_context(),
        })

    def _read_values(self, key: bytes, state: DVVSet) -> list[bytes]:
        """The values a get answers with: every live sibling, or for a last-write-wins
        key the newest one alone (the context still covers them all)."""
        if self._lww and lww_matches(key, self._lww):
            value = lww_newest(state)
            return [] if value is None else [value]
        return state.live_values()

    def _whereis_result(self, rid: int, coord: GetCoordinator) -> bytes:
        replicas = []
        for rep in coord.replicas:
            st = coord.replies.get(rep.node)
            entry: dict[str, Any] = {
                "node": rep.node, "role": rep.role, "hint_for": rep.hint_for,
                "answered": rep.node in coord.replies,
                "present": st is not None and bool(st.live_values()),
                "siblings": len(st.live_values()) if st is not None else 0,
                "tombstone": st is not None and st.is_tombstone(),
                "context": st.encoded_context() if st is not None else b"",
            }
            if rep.node in coord.failed:
                entry["error"] = coord.failed[rep.node]
            replicas.append(entry)
        return encode_response(rid, {
            "key": coord.key,
            "preference_list": list(self.membership.ring.preference_list(
                coord.key, self.config.n_replicas)),
            "replicas": replicas,
        })

    def _advance_get(self, gid: int, now: float, failure: QuorumFailure | None = None) -> None:
        g = self._gets.get(gid)
        if g is None:
            return
        coord = g.coord
        if failure is not None and not g.whereis:
            g.sent = True
            if g.then is not None:
                g.then(None, failure, now)
            else:
                self._finish(g.conn, g.rid, self._quorum_error(g.rid, failure))
        elif coord.answered and not g.whereis and not g.sent and len(coord.replies) >= coord.r:
            g.sent = True
            if g.then is not None:
                g.then(coord, None, now)
            else:
                self._finish(g.conn, g.rid, self._get_result(g.rid, coord))
        if coord.complete or (g.sent and g.then is not None):
            # A blind write's read ends at R answers: the write that follows brings
            # every replica up, so later answers would only be compared for nothing.
            self._close_get(gid)

    def _close_get(self, gid: int) -> None:
        g = self._gets.pop(gid, None)
        if g is None:
            return
        self._cancel_timer(g.timer)
        coord = g.coord
        coord.closed = True
        if g.whereis:
            self._finish(g.conn, g.rid, self._whereis_result(g.rid, coord))
            return
        if not coord.answered or g.then is not None:
            return  # a blind write's read: no repair, the write itself follows
        if (self.config.read_repair and coord.merged.entries
                and "skip_read_repair" not in self.faults):
            for rep in coord.stale():
                self.counters["read_repairs"] += 1
                self._repair(rep, coord.key, coord.merged)
        expected = min(self.config.n_replicas, len(self.membership.ring))
        if len(coord.replicas) == expected and coord.all_primaries_hold_tombstone():
            self._schedule_reap(coord, coord.merged)

    def _repair(self, rep: Replica, key: bytes, state: DVVSet) -> None:
        if rep.node == self.name:
            with contextlib.suppress(WireError):
                self._merge_local(key, state, rep.hint_for)
            return
        body: dict[str, Any] = {"id": 0, "key": key, "state": state.to_wire()}
        if rep.hint_for is not None:
            body["hint_for"] = rep.hint_for
        self._send(rep.node, PeerMsg.REPLICA_PUT, body)

    def _schedule_reap(self, coord: GetCoordinator, tomb: DVVSet) -> None:
        nodes = [rep.node for rep in coord.replicas]
        key = coord.key

        def reap(now: float) -> None:
            self.counters["reaps"] += 1
            for node in nodes:
                if node == self.name:
                    self._reap_local(key, tomb)
                else:
                    self._send(node, PeerMsg.REPLICA_REAP, {"key": key, "state": tomb.to_wire()})

        self._after(coord.deadline + self.config.tombstone_grace_s, reap)

    def _reap_local(self, key: bytes, tomb: DVVSet) -> None:
        if self._load(key) == tomb:
            # The clock is written before the tombstone goes: a crash loses a suffix of
            # the log, so it cannot keep the removal and lose the clock.
            self._remember_reaped(key, DVVSet.clock(tomb.context()))
            self._drop_local(key)
            self.counters["tombstones_reaped"] += 1
            # Forgetting the key must not let this actor issue its old dots again: a
            # client holding a context from before the delete would cover them.
            self.remember_counter(key, tomb)

    def remember_counter(self, key: bytes, state: DVVSet) -> None:
        """This node drops `state`, its copy of `key` (reaped, or handed to the key's
        new owners): keep this actor's counter for the key, so that a write it
        coordinates later continues above it instead of issuing the old dots again
        (other replicas, or a client's context, may still hold them)."""
        mine = state.counter(self.actor)
        if mine:
            if len(self._reaped) >= MAX_REAPED_REMEMBERED:
                self._new_actor_generation()
            elif mine > self._reaped.get(key, 0):
                self._reaped[key] = mine

    def _remember_reaped(self, key: bytes, clock: DVVSet) -> None:
        """Keep the clock of a tombstone reaped here, in memory and on disk, forgetting
        the oldest beyond MAX_REAPED_CLOCKS."""
        clocks = self._reaped_clocks
        clocks.pop(key, None)
        oldest = next(iter(clocks)) if len(clocks) >= MAX_REAPED_CLOCKS else None
        if oldest is not None:
            del clocks[oldest]
        clocks[key] = clock
        try:
            if oldest is not None:
                self.engine.purge(REAPED_PREFIX + oldest)
            self.engine.put(REAPED_PREFIX + key, encode_context(clock.context()))
        except OSError as exc:
            # Kept in memory all the same: only a restart would forget it.
            self.counters["storage_errors"] += 1
            log.error("saving a reaped tombstone's clock failed: %s", exc)

    def _saved_reaped_clocks(self) -> dict[bytes, DVVSet]:
        """The reaped tombstones' clocks on disk, oldest first; unreadable ones skipped."""
        found: list[tuple[int, bytes, DVVSet]] = []
        skip = len(REAPED_PREFIX)
        for k in self.engine.keys_with_prefix(REAPED_PREFIX):
            rec = self.engine.get(k)
            if rec is None or rec.tombstone or len(k) == skip:
                continue
            try:
                clock = decode_context(rec.value)
            except ValueError:
                self.counters["reaped_clock_unreadable"] += 1
                continue
            found.append((rec.seq, k[skip:], DVVSet.clock(clock)))
        found.sort(key=lambda e: e[0])
        return {key: clock for _, key, clock in found}

    def _new_actor_generation(self) -> None:
        """Start a fresh actor id: every counter of the old one is then safe to forget."""
        self._actor_generation += 1
        self.actor = f"{self.name}@{self._epoch}.{self._actor_generation}"
        self._reaped.clear()
        self._lost.clear()

    def lost_counters(self, keys: set[bytes] | frozenset[bytes]) -> None:
        """The store lost these keys' copies (damage): this actor's counters for them
        are unknown, so the next write of one of them starts a new actor id."""
        self._lost |= keys
        if len(self._lost) > MAX_REAPED_REMEMBERED:
            self._new_actor_generation()

    def on_get_timeout(self, gid: int, now: float) -> None:
        g = self._gets.get(gid)
        if g is None:
            return
        failure = g.coord.on_timeout()
        if failure is not None and not g.whereis and not g.sent:
            g.sent = True
            if g.then is not None:
                g.then(None, failure, now)
            else:
                self._finish(g.conn, g.rid, self._quorum_error(g.rid, failure))
        self._close_get(gid)

    def _too_few_up(self, rid: int, up: int, needed: int) -> WireError:
        self.counters["quorum_not_met"] += 1
        return WireError(ErrorCode.QUORUM_NOT_MET,
                         f"only {up} replica(s) up, {needed} needed", req_id=rid,
                         details={"replied": 0, "needed": needed, "addressed": up})

    def _quorum_error(self, rid: int, f: QuorumFailure) -> bytes:
        self.counters["quorum_not_met"] += 1
        return encode_error(rid, ErrorCode.QUORUM_NOT_MET,
                            f"{f.replied} of {f.addressed} replica(s) replied, {f.needed} "
                            f"needed: {f.reason}", replied=f.replied, needed=f.needed,
                            addressed=f.addressed)

    def _on_put(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes | None:
        key = self._client_key(args, rid)
        value = field_value(args, self.limits, rid)
        self.counters["put"] += 1
        if len(args) == 2 and not self._lww and not self.faults and self._alone(rid):
            # A put of nothing but a key and a value on a one-node ring (`_alone` having
            # refused a node that knows no cluster yet): _write would find W = 1, this
            # node the only primary, no context and no last-write-wins stamp, and hand
            # it on as below. Working that out was a measurable share of such a put
            # in the running node (docs/benchmarks.md); this is all it comes to here.
            return self._coordinate(conn, rid, key, value, None, 1, now, self._solo_apl)
        return self._write(conn, rid, Op.PUT, key, value, args, now)

    def _on_delete(self, conn: int, rid: int, args: dict[str, Any], now: float) -> bytes | None:
        key = self._client_key(args, rid)
        self.counters["delete"] += 1
        return self._write(conn, rid, Op.DELETE, key, None, args, now)

    def _write(self, conn: int, rid: int, op: Op, key: bytes, value: Value,
               args: dict[str, Any], now: float) -> bytes | None:
        raw_ctx = (field_opt_bytes(args, "context", self.limits.max_context_bytes, rid)
                   if "context" in args else None)  # (most puts carry none)
        w = self._quorum_arg(args, "w", rid)
        ctx: dict[str, int] | None = None
        if raw_ctx is not None:
            try:
                ctx = decode_context(raw_ctx)
            except ValueError as exc:
                raise WireError(ErrorCode.BAD_CONTEXT, str(exc), req_id=rid) from None
        apl = self._apl(key, now, rid)
        me = self.name
        for rep in apl:
            if rep.node == me and rep.role == "primary":
                break
        else:
            if self._conns[conn].hops >= MAX_FORWARD_HOPS:
                # Views of the ring differ for longer than a change takes to spread;
                # forwarding on could loop, so refuse (nothing was written).
                raise WireError(ErrorCode.UNAVAILABLE, "forwarded to a node that is not a "
                                "primary replica of the key", req_id=rid,
                                details={"executed": False})
            return self._forward(conn, rid, op, apl, args, now)
        if len(apl) < w:
            raise self._too_few_up(rid, len(apl), w)
        if self.read_only_reason is not None:
            raise WireError(ErrorCode.STORAGE_ERROR,
                            f"node is read-only: {self.read_only_reason}", req_id=rid)
        if "ignore_context" in self.faults:
            ctx = {}  # injected defect: the client's context is dropped
        # A blind put supersedes what a read quorum would see, not just this replica's
        # copy, which may be stale: it is written with this copy's context, and
        # replicas apply it only when that covers what they hold; a replica holding
        # more answers with it, and the put is made again over that (PutCoordinator).
        # It needs R acceptances (W if more); a last-write-wins key's needs only W.
        r = check = min(self.config.r, len(apl))
        if value is not None and self._lww and lww_matches(key, self._lww):
            # Last-write-wins key: stamped; reads pick the newest stamp (ringfs/lww.py).
            value = lww_stamp(value, self._wall_clock())
            check = 1
        if ctx is None and len(apl) > 1:
            if value is not None:
                return self._coordinate(conn, rid, key, value, None, w, now, apl,
                                        check=check)
            # A blind delete removes what a read quorum sees: read first, then write
            # with the merged context.
            self._track(conn, rid)

            def then(coord: GetCoordinator | None, failure: QuorumFailure | None,
                     when: float) -> None:
                c = self._conns.get(conn)
                if c is not None and c.inflight is not None:
                    c.inflight.discard(rid)
                if coord is None:
                    assert failure is not None
                    self._finish(conn, rid, self._quorum_error(rid, failure))
                    return
                if conn not in self._conns:
                    return
                seen = coord.merged.context()
                try:
                    frame = self._coordinate(conn, rid, key, value, seen, w, when)
                except WireError as exc:
                    frame = encode_error(rid, exc.code, exc.message, **exc.details)
                if frame is not None:
                    self._finish(conn, rid, frame)

            self._start_get(conn, rid, key, r, now, whereis=False, then=then, apl=apl)
            return None
        return self._coordinate(conn, rid, key, value, ctx, w, now, apl)

    def _coordinate(self, conn: int, rid: int, key: bytes, value: Value,
                    ctx: dict[str, int] | None, w: int, now: float,
                    apl: tuple[Replica, ...] | None = None, *,
                    check: int = 0) -> bytes | None:
        """Apply a write to this primary's copy and replicate it (see the module docstring);
        `now`: when the request started; `apl`: the key's preference list then, when
        the caller has it (checked against W already). `check`: a blind put's R,
        written with this copy's context as a checked write (PutCoordinator)."""
        if apl is None:
            apl = self._apl(key, now, rid)
            if len(apl) < w:
                raise self._too_few_up(rid, len(apl), w)
        if self.read_only_reason is not None:  # (a write made again, a delete's read)
            raise WireError(ErrorCode.STORAGE_ERROR,
                            f"node is read-only: {self.read_only_reason}", req_id=rid)
        rec, local = self._read(key)  # tells the repairer of damage it finds
        if key in self._lost:
            self._new_actor_generation()
        if value is None and local is None and not ctx:  # nothing to delete, nothing seen
            return encode_response(rid, {"context": b"", "siblings": 0})
        base = local if local is not None else DVVSet()
        gone = self._reaped_clocks.get(key)
        if gone is not None:
            # The new version covers the reaped tombstone's clock, so it supersedes
            # anything that tombstone deleted wherever the two meet.
            base = base.sync(gone)
        floor = self._reaped.pop(key, None)
        if floor is not None and base.counter(self.actor) < floor:
            # The key was reaped here (and may since have come back from another
            # coordinator): continue this actor's counter above the dots it issued.
            base = base.sync(DVVSet.clock({self.actor: floor}))
        over_copy = gone is None and floor is None  # `base` is this copy as stored
        if ctx is not None:
            new = base.update(ctx, value, self.actor)
        elif over_copy:
            new = base.overwrite(value, self.actor)  # over everything this copy holds
        else:
            new = base.update(local.context() if local is not None else {}, value, self.actor)
        summary = new.summary()
        if summary[0] > self.config.max_siblings or summary[2] > self._max_sibling_bytes:
            raise self._too_many_siblings(rid, summary)
        try:
            seq = self._store(key, new, summary[1], old=rec)
        except OSError as exc:
            self.counters["storage_errors"] += 1
            log.error("write failed: %s", exc)
            raise WireError(ErrorCode.STORAGE_ERROR, f"write failed: {exc.strerror or exc}",
                            req_id=rid) from None
        if len(apl) == 1 and not self.durability.acks_after_sync:
            return self._put_result(rid, new, summary)  # one replica, acked before sync: done
        coord = PutCoordinator(key, new, apl, w, now + self.config.request_timeout_s, check)
        pid = self._next_id()
        put = self._puts[pid] = _ClientPut(conn, rid, coord, value)
        self._track(conn, rid)
        body: dict[str, Any] | None = None
        packed: bytes | None = None  # the same message for every primary
        unknown: list[str] = []
        for rep in apl:
            if rep.node == self.name:
                continue
            if body is None:
                body = {"id": pid, "key": key, "state": new.packable()}
                if check:
                    body["check"] = True
                if rec is not None and over_copy:
                    # `new` is an update of exactly this copy (see _merge_local).
                    body["base"] = rec.meta
            if rep.hint_for is not None:
                sent = self._send(rep.node, PeerMsg.REPLICA_PUT,
                                  {**body, "hint_for": rep.hint_for})
            else:
                if packed is None:
                    packed = pack_message(PeerMsg.REPLICA_PUT, body)
                sent = self._send_packed(rep.node, packed)
            if not sent:
                unknown.append(rep.node)
        put.timer = self._after(coord.deadline, partial(self.on_put_timeout, pid))
        self._hold_until_durable(seq, partial(self._put_acked, pid, self.name))
        for node in unknown:
            self._put_refused(pid, node, "unknown address")
        return None

    def _too_many_siblings(self, rid: int, summary: tuple[int, int, int]) -> WireError:
        """The error for a write whose state `summary` (siblings, live, bytes) passes a
        sibling limit; the caller tests the limits (on every put, without a call)."""
        count, live, size = summary
        if count > self.config.max_siblings:
            return WireError(ErrorCode.TOO_MANY_SIBLINGS,
                             f"key would have {count} siblings ({count - live} of them "
                             f"tombstones; limit {self.config.max_siblings}): read, resolve "
                             "and write back with the context", req_id=rid)
        return WireError(ErrorCode.TOO_MANY_SIBLINGS,
                         f"siblings would total {size} bytes, more than one reply frame "
                         "holds: read, resolve and write back with the context", req_id=rid)

    def _put_result(self, rid: int, state: DVVSet,
                    summary: tuple[int, int, int] | None = None) -> bytes:
        siblings, live, _ = summary if summary is not None else state.summary()
        # A context is only handed back when it covers nothing but what this writer saw
        # plus its own write: with siblings left, writing again with the full context
        # would silently discard values the writer never read.
        ctx = state.encoded_context() if siblings == 1 else b""
        return encode_response(rid, {"context": ctx, "siblings": live})

    def _put_acked(self, pid: int, node: str) -> None:
        p = self._puts.get(pid)
        if p is None:
            return
        if p.coord.on_ack(node):
            # (No refusal can be in hand: one, with the acceptances before this one,
            # would have made R answers, and the put would have been written again.)
            self._finish(p.conn, p.rid, self._put_result(p.rid, p.coord.state))
        elif p.coord.rewrite is not None:
            self._rewrite_put(pid, p)
            return
        self._retire_put(pid, p)

    def _retire_put(self, pid: int, p: _ClientPut) -> None:
        """Forget a put once its outcome is sent: later acks change nothing (the
        replicas that were slow still get the write, or anti-entropy brings it). A
        checked write that succeeded is kept until every replica answered, so that a
        replica answering with a conflict still gets the write."""
        coord = p.coord
        if coord.finished and not (coord.check and coord.succeeded and not coord.answered):
            self._puts.pop(pid, None)
            self._cancel_timer(p.timer)

    def _put_conflict(self, pid: int, node: str, state: DVVSet) -> None:
        """A replica did not apply a checked write: it holds `state`, versions the
        write's context did not cover."""
        p = self._puts.get(pid)
        if p is None:
            return
        coord = p.coord
        self.counters["put_conflicts"] += 1
        if coord.succeeded:
            coord.on_conflict(node, state)  # counted toward `answered`
            self._write_over_conflict(coord, node)
        else:
            failure = coord.on_conflict(node, state)
            if failure is not None:
                self._finish(p.conn, p.rid, self._quorum_error(p.rid, failure))
            elif coord.rewrite is not None:
                self._rewrite_put(pid, p)
                return
        self._retire_put(pid, p)

    def _write_over_conflict(self, coord: PutCoordinator, node: str) -> None:
        """Give a replica that refused a checked write the write all the same, once it
        succeeded: acknowledged by replicas its context covered, it has seen every
        write acknowledged before it, so what this replica holds more is concurrent
        with it (or was never acknowledged) and stays beside it as a sibling."""
        hint_for = next((r.hint_for for r in coord.replicas if r.node == node), None)
        body: dict[str, Any] = {"id": 0, "key": coord.key, "state": coord.state.packable()}
        if hint_for is not None:
            body["hint_for"] = hint_for
        self._send(node, PeerMsg.REPLICA_PUT, body)

    def _rewrite_put(self, pid: int, p: _ClientPut) -> None:
        """Make a checked write again, over what the replicas that refused it hold
        and over its own first version: an ordinary write to the same replicas, in
        the time the request has left."""
        self._puts.pop(pid, None)
        self._cancel_timer(p.timer)
        coord = p.coord
        assert coord.rewrite is not None
        self.counters["put_rewrites"] += 1
        ctx = merge_contexts(coord.state.context(), coord.rewrite.context())
        started = coord.deadline - self.config.request_timeout_s
        try:
            frame = self._coordinate(p.conn, p.rid, coord.key, p.value, ctx, coord.w,
                                     started, coord.replicas)
        except WireError as exc:
            frame = encode_error(p.rid, exc.code, exc.message, **exc.details)
        if frame is not None:
            self._finish(p.conn, p.rid, frame)

    def _put_refused(self, pid: int, node: str, reason: str) -> None:
        p = self._puts.get(pid)
        if p is None:
            return
        failure = p.coord.on_refused(node, reason)
        if p.coord.rewrite is not None:
            self._rewrite_put(pid, p)
            return
        if failure is not None:
            if node == self.name and self.read_only_reason is not None:
                # This node's own disk failed: say so rather than blame the quorum.
                frame = encode_error(p.rid, ErrorCode.STORAGE_ERROR,
                                     f"write may not be durable: {self.read_only_reason}")
            else:
                frame = self._quorum_error(p.rid, failure)
            self._finish(p.conn, p.rid, frame)
        self._retire_put(pid, p)

    def on_put_timeout(self, pid: int, now: float) -> None:
        p = self._puts.pop(pid, None)
        if p is None:
            return
        failure = p.coord.on_timeout()
        if failure is not None:
            self._finish(p.conn, p.rid, self._quorum_error(p.rid, failure))

    # -- forwarding --------------------------------------------------------------------
    def _forward(self, conn: int, rid: int, op: Op, apl: tuple[Replica, ...],
                 args: dict[str, Any], now: float) -> bytes | None:
        primaries = [rep.node for rep in apl if rep.role == "primary"]
        # Prefer a coordinator nobody suspects: a suspect one is probably gone.
        target = next((n for n in primaries
                       if (m := self.membership.members.get(n)) is not None
                       and m.state == "alive"), primaries[0] if primaries else None)
        if target is None:
            raise WireError(ErrorCode.UNAVAILABLE,
                            "no primary replica of this key is up to coordinate the write",
                            req_id=rid, details={"executed": False})
        fid = self._next_id()
        fw = self._forwards[fid] = _Forwarded(conn, rid, target)
        self._track(conn, rid)
        self.counters["forwarded"] += 1
        self._send(target, PeerMsg.FORWARD, {"id": fid, "op": int(op), "args": args,
                                             "hops": self._conns[conn].hops + 1})
        fw.timer = self._after(now + self.config.request_timeout_s + 0.5,
                               partial(self.on_forward_timeout, fid))
        return None

    def on_forward_timeout(self, fid: int, now: float) -> None:
        f = self._forwards.pop(fid, None)
        if f is not None:
            self._finish(f.conn, f.rid, encode_error(
                f.rid, ErrorCode.TIMEOUT, "the coordinating replica did not answer in time; "
                "the write may or may not have happened"))

    # -- peers -------------------------------------------------------------------------
    def _on_peer_frame(self, c: _Conn, conn: int, body: Any, now: float) -> None:
        parsed = parse_peer(body)
        if parsed is None or parsed[0] != c.peer:
            self.counters["peer_malformed"] += 1
            return
        sender, mtype, msg = parsed
        if mtype == PeerMsg.BATCH:
            msgs = msg.get("msgs")
            if type(msgs) is not list:
                self.counters["peer_malformed"] += 1
                return
            for m in msgs:
                if (type(m) is not list or len(m) != 2 or type(m[0]) is not int
                        or type(m[1]) is not dict or m[0] == PeerMsg.BATCH):
                    self.counters["peer_malformed"] += 1
                    continue
                self._on_peer_message(sender, m[0], m[1], now)
            return
        self._on_peer_message(sender, mtype, msg, now)

    def _on_peer_message(self, sender: str, mtype: int, msg: dict[str, Any],
                         now: float) -> None:
        handler = self._peer_handlers.get(mtype)
        if handler is None:
            self.counters["peer_unknown_type"] += 1
            return
        try:
            handler(sender, msg, now)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            self.counters["peer_malformed"] += 1
            log.debug("dropped malformed %s from %s: %r", mtype, sender, exc)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("handling %s from %s failed", mtype, sender)

    def peer_unreachable(self, address: str, now: float) -> None:
        """The connection to the peer at `address` failed: requests to it fail now."""
        name = self.membership.name_at(address)
        self.counters["peer_unreachable"] += 1
        if self.gossip is not None:
            self.gossip.stream_failed(address, now)
            self._pump_gossip(now)
        if name is None:
            return
        self.membership.mark_unreachable(name, now)
        self.files.peer_unreachable(name, now)
        for pid in list(self._puts):
            p = self._puts[pid]
            if any(rep.node == name for rep in p.coord.replicas):
                self._put_refused(pid, name, "unreachable")
        for gid in list(self._gets):
            g = self._gets[gid]
            if any(rep.node == name for rep in g.coord.replicas):
                f = g.coord.on_failed(name, "unreachable")
                self._advance_get(gid, now, f)
        for hid in [hid for hid, h in self._handoffs.items() if h[0] == name]:
            self._handoff_done(hid, False)
        for fid in [fid for fid, fw in self._forwards.items() if fw.target == name]:
            fw = self._forwards.pop(fid)
            self._cancel_timer(fw.timer)
            self._finish(fw.conn, fw.rid, encode_error(
                fw.rid, ErrorCode.UNAVAILABLE, f"lost the connection to coordinator {name}; "
                "the write may or may not have happened"))

    def _join_body(self) -> dict[str, Any]:
        me = self.membership.me
        return {"name": me.name, "address": me.address, "meta": dict(me.meta)}

    def on_join(self, sender: str, body: dict[str, Any], now: float) -> None:
        name, address, meta = body["name"], body["address"], body["meta"]
        if name != sender or type(address) is not str or type(meta) is not dict:
            raise ValueError("bad JOIN")
        known = self.membership.members.get(name)
        if name != self.name:
            self.membership.merge_wire([[name, address, meta]])
            self._check_lww_prefixes(name, meta)
            if known is not None and known.address != address:
                self.membership.upsert(Member(name, address, meta=known.meta))
            self.membership.mark_reachable(name)
        self._send_address(address, PeerMsg.MEMBERS, {
            "members": [m.to_wire() for m in self.membership.members.values()]})
        if known is None:
            log.info("member %s joined at %s", name, address)
            # Tell everyone else about the newcomer (static membership until gossip).
            for m in list(self.membership.members.values()):
                if m.name not in (self.name, name):
                    self._send(m.name, PeerMsg.MEMBERS, {"members": [[name, address, meta]]})

    def _check_lww_prefixes(self, name: str, meta: Mapping[str, Any]) -> None:
        """Warn (once per member and list) when a member announces other LWW prefixes:
        the node coordinating a write or read applies its own list, so keys would be
        written and read differently depending on the node a client reached."""
        theirs = meta.get("lww", "")
        if theirs == self._lww_digest or self._lww_warned.get(name) == theirs:
            return
        self._lww_warned[name] = theirs
        self.counters["lww_prefixes_differ"] += 1
        log.warning("member %s lists other lww_prefixes than this node (%s): every node "
                    "must list the same ones", name,
                    ", ".join(map(repr, self.config.lww_prefixes)) or "none")

    def on_members(self, sender: str, body: dict[str, Any], now: float) -> None:
        entries = body["members"]
        if type(entries) is not list or len(entries) > 10_000:
            raise ValueError("bad MEMBERS")
        self.membership.mark_reachable(sender)
        before = set(self.membership.members)
        if self.membership.merge_wire(entries):
            for name in sorted(set(self.membership.members) - before):
                log.info("learned of member %s", name)
                self._check_lww_prefixes(name, self.membership.members[name].meta)
                addr = self.membership.address_of(name)
                if addr is not None:
                    self._send_address(addr, PeerMsg.JOIN, self._join_body())

    def on_replica_put(self, sender: str, body: dict[str, Any], now: float) -> None:
        pid, key = body["id"], body["key"]
        hint_for = body.get("hint_for")
        if type(pid) is not int or type(key) is not bytes or not key or (
                hint_for is not None and type(hint_for) is not str):
            raise ValueError("bad REPLICA_PUT")
        self.membership.mark_reachable(sender)
        if self.repair.departed:
            # This node left (its data moved away): a copy taken now would leave with it.
            if pid:
                self._send(sender, PeerMsg.REPLICA_PUT_ACK,
                           {"id": pid, "ok": False, "reason": "this node left the cluster"})
            return
        base = body.get("base")
        if base is not None and type(base) is not bytes:
            raise ValueError("bad REPLICA_PUT base")
        try:
            state = DVVSet.from_wire(body["state"], max_siblings=self.config.max_siblings * 2)
            # A checked write (a blind put) is taken only over values its clock covers.
            checking = "skip_write_check" not in self.faults  # (an injected defect)
            checked = pid != 0 and body.get("check") is True
            seq = self._merge_local(key, state, hint_for, checked=checked and checking,
                                    base=base if checking else None)
        except _Stale as stale:
            self.counters["replica_put_conflicts"] += 1
            self._send(sender, PeerMsg.REPLICA_PUT_ACK,
                       {"id": pid, "ok": False, "reason": "holds versions the write had "
                        "not seen", "state": stale.held.to_wire()})
            return
        except WireError as exc:
            if pid:
                self._send(sender, PeerMsg.REPLICA_PUT_ACK,
                           {"id": pid, "ok": False, "reason": exc.message})
            return
        self.counters["replica_puts"] += 1
        if not pid:
            return  # a repair: nobody waits for it
        if seq is None:
            seq = self.engine.last_seq  # unchanged, but what we hold may not be durable yet

        def ack() -> None:
            self._send(sender, PeerMsg.REPLICA_PUT_ACK, {"id": pid, "ok": True})

        self._hold_until_durable(seq, ack)

    def on_replica_put_ack(self, sender: str, body: dict[str, Any], now: float) -> None:
        pid, ok = body["id"], body["ok"]
        if type(pid) is not int:
            raise ValueError("bad ack")
        self.membership.mark_reachable(sender)
        ok = ok is True
        if self._handoff_done(pid, ok) or self.repair.on_ack(pid, sender, ok, now):
            return
        if ok is True:
            self._put_acked(pid, sender)
            return
        held = body.get("state")
        if held is not None:
            try:
                state = DVVSet.from_wire(held, max_siblings=self.config.max_siblings * 2)
            except ValueError:
                self._put_refused(pid, sender, "malformed state")
                return
            self._put_conflict(pid, sender, state)
            return
        self._put_refused(pid, sender, str(body.get("reason", "refused"))[:200])

    def on_replica_get(self, sender: str, body: dict[str, Any], now: float) -> None:
        gid, key = body["id"], body["key"]
        hint_for = body.get("hint_for")
        if type(gid) is not int or type(key) is not bytes or not key or (
                hint_for is not None and type(hint_for) is not str):
            raise ValueError("bad REPLICA_GET")
        self.membership.mark_reachable(sender)
        state = self._load(self._stored_key(key, hint_for))
        self.counters["replica_gets"] += 1
        self._send(sender, PeerMsg.REPLICA_GET_REPLY,
                   {"id": gid, "ok": True, "state": None if state is None else state.to_wire()})

    def on_replica_get_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        gid = body["id"]
        if type(gid) is not int:
            raise ValueError("bad reply")
        self.membership.mark_reachable(sender)
        g = self._gets.get(gid)
        if g is None:
            return
        raw = body.get("state")
        try:
            state = None if raw is None else DVVSet.from_wire(raw)
        except ValueError:
            self._advance_get(gid, now, g.coord.on_failed(sender, "malformed state"))
            return
        g.coord.on_reply(sender, state)
        self._advance_get(gid, now)

    def on_replica_reap(self, sender: str, body: dict[str, Any], now: float) -> None:
        key = body["key"]
        if type(key) is not bytes or not key:
            raise ValueError("bad REAP")
        self._reap_local(key, DVVSet.from_wire(body["state"]))

    def on_forward(self, sender: str, body: dict[str, Any], now: float) -> None:
        fid, op, args = body["id"], body["op"], body["args"]
        if type(fid) is not int or op not in self._forwardable or type(args) is not dict:
            raise ValueError("bad FORWARD")
        self.counters["forwards_received"] += 1
        # Run it as a request on a pseudo-connection whose reply goes back to the sender.
        self._pseudo_conn -= 1
        conn = self._pseudo_conn
        hops = body.get("hops", 1)
        self._conns[conn] = _Conn(handshaken=True, forwarded_from=(sender, fid),
                                  hops=hops if type(hops) is int and hops > 0 else 1)
        out = self.client_request(conn, [0, fid, op, args], now)
        if out is not None:
            self._finish(conn, fid, out)

    def on_forward_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        fid, ok, payload = body["id"], body["ok"], body["body"]
        if type(fid) is not int or type(payload) is not dict:
            raise ValueError("bad FORWARD_REPLY")
        f = self._forwards.pop(fid, None)
        if f is None:
            return
        self._cancel_timer(f.timer)
        kind = RESPONSE if ok is True else ERROR
        self._finish(f.conn, f.rid, encode_frame([kind, f.rid, payload]))

    def on_aae_request(self, sender: str, body: dict[str, Any], now: float) -> None:
        self.membership.mark_reachable(sender)
        self.repair.on_request(sender, body, now)

    def on_aae_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        self.membership.mark_reachable(sender)
        self.repair.on_reply(sender, body, now)

    # -- gossip ------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, src: str, now: float) -> None:
        """A UDP datagram arrived on the node's port from `src` ("host:port")."""
        if self.gossip is None:
            self.counters["datagrams_ignored"] += 1
            return
        self.gossip.receive_packet(data, src, now)
        self._pump_gossip(now)

    def on_gossip(self, sender: str, body: dict[str, Any], now: float) -> None:
        data, origin = body["data"], body["from"]
        if type(data) is not bytes or type(origin) is not str:
            raise ValueError("bad GOSSIP")
        if self.gossip is None:
            return
        self.gossip.receive_stream(data, origin, now)
        self._pump_gossip(now)

    def on_reconnect_timeout(self, now: float) -> None:
        """Push-pull with a random dead member, or re-join the seeds when alone."""
        g = self.gossip
        self._next_reconnect = now + RECONNECT_INTERVAL_S
        if g is None or g.leaving:
            return
        others_alive = [m for m in g.members() if m.name != self.name and m.state == "alive"]
        dead = sorted(m.address for m in g.members()
                      if m.name != self.name and m.state == "dead")
        targets: list[str] = []
        if not others_alive and self._seeds:
            targets = list(self._seeds)
        elif dead:
            targets = [self.rng.choice(dead)]
        if targets:
            self.counters["gossip_reconnects"] += 1
            g.join(targets, now)
            self._pump_gossip(now)

    def _saved_view(self) -> list[MemberInfo]:
        """The gossip view saved before the last stop; [] when none or unreadable."""
        rec = self.engine.get(VIEW_KEY)
        if rec is None:
            return []
        out = []
        try:
            for e in msgpack.unpackb(rec.value, raw=False):
                name, address, incarnation, state, meta = e
                st = _MEMBER_STATES.get(state) if type(state) is str else None
                if (type(name) is str and type(address) is str and type(incarnation) is int
                        and st is not None and type(meta) is dict):
                    out.append(MemberInfo(name, address, incarnation, st, meta))
        except (ValueError, TypeError, msgpack.UnpackException):
            self.counters["view_unreadable"] += 1
            log.warning("saved membership view is unreadable; starting from the seeds")
            return []
        return out

    def on_view_save_timeout(self, now: float) -> None:
        """Save the gossip view (it changed): a restart then remembers members that are
        down, which keeps them on the ring (sloppy quorum uses fallbacks for them)."""
        self._view_save_at = None
        g = self.gossip
        if g is None or self.read_only_reason is not None:
            return
        view = [[m.name, m.address, m.incarnation, str(m.state), dict(m.meta)]
                for m in g.members() if m.name != self.name]
        try:
            seq = self.engine.put(VIEW_KEY, msgpack.packb(view, use_bin_type=True))
        except OSError as exc:
            self.counters["storage_errors"] += 1
            log.error("saving the membership view failed: %s", exc)
            return
        self._request_sync(seq)  # make it durable now, not with the next write

    def leave(self, now: float) -> None:
        """Leave the cluster gracefully: members will mark this node left, not dead."""
        if self.gossip is not None:
            self.gossip.leave(now)
            self._pump_gossip(now)

    @property
    def leave_pending(self) -> bool:
        """Whether the announcement of a leave is still being disseminated."""
        return self.gossip is not None and self.gossip.broadcasts_pending > 0

    def _pump_gossip(self, now: float) -> None:
        """Carry gossip's messages out and its membership events into the ring."""
        g = self.gossip
        if g is None:
            return
        me = self.config.listen
        for out in g.drain_outbox():
            if type(out) is SendPacket:
                self._outbox.append(Datagram(out.dest, out.data))
            else:
                self._send_address(out.dest, PeerMsg.GOSSIP, {"data": out.data, "from": me})
        ms = self.membership
        while (ev := g.next_event()) is not None:
            m = ev.member
            if m.name == self.name:
                continue
            if self._view_save_at is None:
                self._view_save_at = now + VIEW_SAVE_INTERVAL_S
            self.counters[f"member_{ev.kind}"] += 1
            if ev.kind == "reaped":
                if ms.remove(m.name):
                    self._view_save_at = now
            else:
                state = str(m.state)  # gossip's belief after the event
                changed = ms.upsert(Member(m.name, m.address, state, m.incarnation,
                                           dict(m.meta)))
                self._check_lww_prefixes(m.name, m.meta)
                if state == "alive":
                    ms.mark_reachable(m.name)
                    if self._hint_index.get(m.name):
                        self._next_handoff = now  # its hints can go home now
                if changed:
                    # Saved at once, not a second later: a node restarted on a view
                    # that lacks a member would coordinate writes on the wrong ring.
                    self._view_save_at = now
                    log.info("ring changed: member %s %s (%d members)", m.name, ev.kind,
                             len(ms.members))
            if ev.kind in ("dead", "left", "join"):
                log.info("member %s is %s (incarnation %d)", m.name, ev.kind if ev.kind != "join"
                         else "alive", m.incarnation)

    # -- durability ----------------------------------------------------------------------
    def on_sync_complete(self, durable_seq: int, now: float) -> None:
        """A sync finished; release every acknowledgement it covers."""
        pending = self._pending
        while pending and pending[0].seq <= durable_seq:
            pending.popleft().release()

    def on_sync_failed(self, message: str, now: float) -> None:
        """A sync failed: what reached the disk is unknown, so stop taking writes."""
        self.read_only_reason = f"sync failed: {message}"
        self.counters["sync_failures"] += 1
        log.error("storage sync failed, node is now read-only: %s", message)
        self._pending.clear()
        for pid in list(self._puts):
            self._put_refused(pid, self.name, "sync failed")

    # -- timers --------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        t = self._next_interval_sync
        top = self._timers.next_deadline()
        if top is not None and (t is None or top < t):
            t = top
        if self.gossip is not None:
            g = self.gossip.next_deadline()
            if g is not None and (t is None or g < t):
                t = g
        h = self._next_handoff
        if h is not None and (t is None or h < t):
            t = h
        rc = self._next_reconnect
        if rc is not None and (t is None or rc < t):
            t = rc
        vs = self._view_save_at
        if vs is not None and (t is None or vs < t):
            t = vs
        return t

    def handle_timer(self, now: float) -> None:
        t = self._next_interval_sync
        if t is not None and now >= t:
            self.on_interval_sync_timeout(now)
        h = self._next_handoff
        if h is not None and now >= h:
            self.on_handoff_timeout(now)
        rc = self._next_reconnect
        if rc is not None and now >= rc:
            self.on_reconnect_timeout(now)
        vs = self._view_save_at
        if vs is not None and now >= vs:
            self.on_view_save_timeout(now)
        if self.gossip is not None:
            g = self.gossip.next_deadline()
            if g is not None and now >= g:
                self.gossip.handle_timer(now)
                self._pump_gossip(now)
        for fn, args in self._timers.due(now):
            try:
                fn(*args, now)
            except Exception:  # a bug in one timer must not stop the others or the node
                self.counters["internal_errors"] += 1
                log.exception("timer callback failed")

    def on_interval_sync_timeout(self, now: float) -> None:
        interval = self.durability.interval_ms / 1000.0
        self._next_interval_sync = now + interval
        last = self.engine.last_seq
        if last > self.engine.durable_seq:
            self._request_sync(last)

    # -- plumbing ------------------------------------------------------------------------
    @property
    def has_effects(self) -> bool:
        """Whether effects wait in the outbox (messages for peers not counted)."""
        return bool(self._outbox)

    def drain_outbox(self, *, hold_peers: bool = False) -> list[Effect]:
        """The effects queued since the last drain. Messages for peers are framed here,
        one frame per peer; `hold_peers` keeps them queued for a later drain instead
        (a driver about to hand the node more input batches them into fewer frames)."""
        if self._peer_out and not hold_peers:
            self._flush_peers()
        out = self._outbox
        self._outbox = []
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError if internal state is inconsistent (run by the simulator)."""
        last = -1
        for p in self._pending:
            assert p.seq >= last, "pending acks out of sequence order"
            last = p.seq
            assert p.seq <= self.engine.last_seq, "pending ack beyond the engine's last seq"
        assert self.engine.durable_seq <= self.engine.last_seq
        if not self.durability.acks_after_sync:
            assert not self._pending
        assert self.hints >= 0
        assert all(v >= 0 for v in self._handoff_inflight.values())
        if self.gossip is not None:
            self.gossip.check_invariants()


__all__ = ["ClientReply", "CloseConnection", "Datagram", "Effect", "Node", "PeerSend",
           "RequestSync"]
