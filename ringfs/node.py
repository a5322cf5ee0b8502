"""The composite sans-IO node: every protocol decision a ringfs node makes.

Theory of operation
-------------------
A `Node` performs no I/O, never reads a clock and never creates randomness. Its
drivers (the trio runtime in ringfs/runtime, the simulator in simulations/)
feed it what happened and carry out what it asks:

    client_connected(conn, now) / client_disconnected(conn, now)
    client_request(conn, body, now) -> frame | None   a decoded request frame
    on_sync_complete(durable_seq, now)                a sync the node asked for finished
    on_sync_failed(message, now)                      ... or failed
    handle_timer(now); next_deadline() -> float | None
    drain_outbox() -> list[Effect]                    replies, syncs, closes to perform

`client_request` answers at once when it can (reads, and writes under a policy
that acknowledges before syncing) by returning the encoded response frame; when
an answer must wait (a write awaiting its fsync) it returns None and the reply
later appears in the outbox as `ClientReply`.

Durability: a write is handed to the storage engine, which passes it to the OS at
once and returns its sequence number. Under the `always` and `group` policies the
node emits `RequestSync(seq)` and holds the acknowledgement until
`on_sync_complete` reports a durable sequence number at or beyond it. A failed
sync puts the node into a read-only state: it can no longer tell what reached the
disk, so it refuses writes rather than acknowledge something it may lose.

Connection state (handshake done, requests in flight) lives here too, so the
protocol rules are enforced identically over real sockets and in the simulator.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from ringfs import __version__
from ringfs.config import NodeConfig
from ringfs.dvv import DVVSet, Value, decode_context, encode_context, from_stored
from ringfs.errors import ErrorCode
from ringfs.storage.engine import StorageEngine
from ringfs.wire import (
    SUPPORTED_VERSIONS,
    Op,
    WireError,
    encode_error,
    encode_response,
    field_key,
    field_opt_bytes,
    field_value,
    parse_request,
)

log = logging.getLogger("ringfs.node")


# -- effects the drivers carry out ------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientReply:
    """Send `frame` (a complete encoded frame) on client connection `conn`."""

    conn: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close client connection `conn` once the frames queued before this are sent."""

    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class RequestSync:
    """Make the engine durable up to at least `seq`, then call on_sync_complete."""

    seq: int


Effect = ClientReply | CloseConnection | RequestSync


@dataclass
class _Conn:
    handshaken: bool = False
    inflight: set[int] | None = None


@dataclass(slots=True)
class _PendingAck:
    seq: int
    conn: int
    req_id: int
    frame: bytes


class Node:
    """One ringfs node's protocol logic. See the module docstring."""

    def __init__(
        self, config: NodeConfig, engine: StorageEngine, rng: random.Random, now: float
    ) -> None:
        self.config = config
        self.name = config.name
        self.engine = engine
        self.rng = rng
        self.limits = config.limits
        self.durability = config.durability
        self.started_at = now
        self.read_only_reason: str | None = None
        self.counters: Counter[str] = Counter()
        self._outbox: list[Effect] = []
        self._conns: dict[int, _Conn] = {}
        self._pending: deque[_PendingAck] = deque()
        self._sync_requested = 0
        self._next_interval_sync: float | None = (
            now + config.durability.interval_ms / 1000.0
            if config.durability.kind == "interval" else None
        )
        self._handlers: dict[int, Callable[[int, int, dict[str, Any]], bytes | None]] = {
            Op.PING: self._on_ping,
            Op.GET: self._on_get,
            Op.PUT: self._on_put,
            Op.DELETE: self._on_delete,
            Op.STATUS: self._on_status,
        }
        log.info("node %s starting: engine=%s durability=%s", self.name, config.engine,
                 config.durability)

    # -- connections ---------------------------------------------------------------
    def client_connected(self, conn: int, now: float) -> None:
        if conn in self._conns:
            raise ValueError(f"connection {conn} is already open")
        self._conns[conn] = _Conn()
        self.counters["connections_opened"] += 1

    def client_disconnected(self, conn: int, now: float) -> None:
        """Forget a connection. Writes it issued still complete; their replies are dropped."""
        if self._conns.pop(conn, None) is not None:
            self.counters["connections_closed"] += 1

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def inflight(self, conn: int) -> int:
        """Requests on `conn` whose replies are still held (for read back-pressure)."""
        c = self._conns.get(conn)
        return len(c.inflight) if c is not None and c.inflight else 0

    # -- requests ------------------------------------------------------------------
    def client_request(self, conn: int, body: Any, now: float) -> bytes | None:
        """Handle one decoded request frame from `conn`.

        Returns the encoded reply frame when the answer is ready now, else None (the
        reply comes later through the outbox). Protocol violations are answered with
        an error frame; fatal ones also queue CloseConnection.
        """
        c = self._conns.get(conn)
        if c is None:
            raise ValueError(f"request on unknown connection {conn}")
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
                raise WireError(ErrorCode.DUPLICATE_REQUEST_ID,
                                f"request id {rid} is already in flight", req_id=rid)
            return handler(conn, rid, args)
        except WireError as exc:
            self.counters[f"error_{exc.code.name.lower()}"] += 1
            if exc.fatal:
                self._outbox.append(CloseConnection(conn, exc.message))
                log.debug("closing connection %d: %s", conn, exc.message)
            return encode_error(exc.req_id, exc.code, exc.message)

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
        c.handshaken = True
        return encode_response(rid, {
            "version": max(common),
            "node": self.name,
            "server": f"ringfs/{__version__}",
            "limits": self.limits.to_wire(),
        })

    def _on_ping(self, conn: int, rid: int, args: dict[str, Any]) -> bytes:
        return encode_response(rid, {})

    def _on_status(self, conn: int, rid: int, args: dict[str, Any]) -> bytes:
        return encode_response(rid, self.status())

    def status(self) -> dict[str, Any]:
        """What `ringfs status` shows for this node."""
        st = self.engine.stats()
        return {
            "node": self.name,
            "address": self.config.listen,
            "version": __version__,
            "read_only": self.read_only_reason,
            "members": [{"name": self.name, "address": self.config.listen, "state": "alive",
                         "incarnation": 0}],
            "storage": {
                "engine": self.config.engine,
                "durability": str(self.durability),
                "keys": st.keys,
                "tombstones": st.tombstones,
                "last_seq": st.last_seq,
                "durable_seq": st.durable_seq,
                "data_bytes": st.data_bytes,
                "live_bytes": st.live_bytes,
                "corrupt_records": st.corrupt_records,
            },
            "connections": len(self._conns),
            "pending_acks": len(self._pending),
            "counters": dict(self.counters),
        }

    # -- key/value -----------------------------------------------------------------
    def _load(self, key: bytes) -> DVVSet | None:
        rec = self.engine.get(key)
        if rec is None:
            return None
        return from_stored(msgpack.unpackb(rec.meta, raw=False))

    def _on_get(self, conn: int, rid: int, args: dict[str, Any]) -> bytes:
        key = field_key(args, self.limits, rid)
        self.counters["get"] += 1
        state = self._load(key)
        if state is None:
            return encode_response(rid, {"found": False, "values": [], "context": b""})
        values = state.live_values()
        return encode_response(rid, {
            "found": bool(values),
            "values": values,
            "context": encode_context(state.context()),
        })

    def _on_put(self, conn: int, rid: int, args: dict[str, Any]) -> bytes | None:
        key = field_key(args, self.limits, rid)
        value = field_value(args, self.limits, rid)
        self.counters["put"] += 1
        return self._write(conn, rid, key, value, args)

    def _on_delete(self, conn: int, rid: int, args: dict[str, Any]) -> bytes | None:
        key = field_key(args, self.limits, rid)
        self.counters["delete"] += 1
        return self._write(conn, rid, key, None, args)

    def _write(self, conn: int, rid: int, key: bytes, value: Value,
               args: dict[str, Any]) -> bytes | None:
        raw_ctx = field_opt_bytes(args, "context", self.limits.max_context_bytes, rid)
        if self.read_only_reason is not None:
            raise WireError(ErrorCode.STORAGE_ERROR,
                            f"node is read-only: {self.read_only_reason}", req_id=rid)
        state = self._load(key)
        if raw_ctx is None:
            # A blind write supersedes everything this node has seen of the key.
            ctx = state.context() if state is not None else {}
        else:
            try:
                ctx = decode_context(raw_ctx)
            except ValueError as exc:
                raise WireError(ErrorCode.BAD_CONTEXT, str(exc), req_id=rid) from None
        if state is None:
            if value is None and raw_ctx is None:
                # Deleting a key this node never had: nothing to supersede, nothing to store.
                return encode_response(rid, {"context": b""})
            state = DVVSet()
        new = state.update(ctx, value, self.name)
        if new.sibling_count() > self.config.max_siblings:
            raise WireError(ErrorCode.TOO_MANY_SIBLINGS,
                            f"key would have {new.sibling_count()} siblings "
                            f"(limit {self.config.max_siblings}); read, resolve and write back "
                            "with the context", req_id=rid)
        stored = msgpack.packb(new.to_wire(), use_bin_type=True)
        try:
            if new.is_tombstone():
                seq = self.engine.delete(key, stored)
            else:
                seq = self.engine.put(key, b"", stored)
        except OSError as exc:
            self.counters["storage_errors"] += 1
            log.error("write failed: %s", exc)
            raise WireError(ErrorCode.STORAGE_ERROR, f"write failed: {exc.strerror or exc}",
                            req_id=rid) from None
        frame = encode_response(rid, {"context": encode_context(new.context())})
        if not self.durability.acks_after_sync:
            return frame
        c = self._conns[conn]
        if c.inflight is None:
            c.inflight = set()
        c.inflight.add(rid)
        self._pending.append(_PendingAck(seq, conn, rid, frame))
        if seq > self._sync_requested:
            self._sync_requested = seq
            self._outbox.append(RequestSync(seq))
        return None

    # -- durability ----------------------------------------------------------------
    def on_sync_complete(self, durable_seq: int, now: float) -> None:
        """A sync finished; release every acknowledgement it covers."""
        pending = self._pending
        while pending and pending[0].seq <= durable_seq:
            p = pending.popleft()
            c = self._conns.get(p.conn)
            if c is None:
                continue  # the client went away; the write stands regardless
            if c.inflight is not None:
                c.inflight.discard(p.req_id)
            self._outbox.append(ClientReply(p.conn, p.frame))

    def on_sync_failed(self, message: str, now: float) -> None:
        """A sync failed: what reached the disk is unknown, so stop taking writes."""
        self.read_only_reason = f"sync failed: {message}"
        self.counters["sync_failures"] += 1
        log.error("storage sync failed, node is now read-only: %s", message)
        while self._pending:
            p = self._pending.popleft()
            c = self._conns.get(p.conn)
            if c is None:
                continue
            if c.inflight is not None:
                c.inflight.discard(p.req_id)
            self._outbox.append(ClientReply(
                p.conn, encode_error(p.req_id, ErrorCode.STORAGE_ERROR,
                                     f"write may not be durable: {message}")))

    # -- timers --------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self._next_interval_sync

    def handle_timer(self, now: float) -> None:
        t = self._next_interval_sync
        if t is not None and now >= t:
            self.on_interval_sync_timeout(now)

    def on_interval_sync_timeout(self, now: float) -> None:
        interval = self.durability.interval_ms / 1000.0
        self._next_interval_sync = now + interval
        last = self.engine.last_seq
        if last > self.engine.durable_seq and last > self._sync_requested:
            self._sync_requested = last
            self._outbox.append(RequestSync(last))

    # -- plumbing ------------------------------------------------------------------
    def drain_outbox(self) -> list[Effect]:
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


def make_rng(seed: int | None = None) -> random.Random:
    """The randomness a driver hands a node: seeded in the simulator, OS-seeded at runtime."""
    return random.Random(seed)
