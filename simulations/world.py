"""The simulated world: real `Node` objects over a simulated network and disks.

Everything random derives from one seed: the network's losses and delays, each
node's rng, each client's choices. Nodes are driven exactly as the trio runtime
drives them (the same frames, the same effects), only time is virtual:

- a client request travels as encoded frames over a simulated stream, is split by
  the same FrameDecoder and handed to `Node.client_request`;
- `RequestSync` snapshots the in-memory engine's durable point at once and
  reports completion after a simulated fsync latency (group commit: syncs asked
  for while one runs are covered by the next);
- each node has one timer, re-armed from `next_deadline()` after every call;
- a crash drops the node off the network and loses its unsynced writes.

`trace` records every externally visible event as one line; the same seed gives
the same trace, byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ringfs.config import Durability, NodeConfig
from ringfs.gossip import Keyring
from ringfs.node import ClientReply, CloseConnection, Datagram, Node, PeerSend, RequestSync
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import (
    ERROR,
    PROTOCOL_VERSION,
    RESPONSE,
    FrameDecoder,
    Op,
    encode_error,
    encode_request,
)
from simulations.loop import EventLoop, Handle
from simulations.network import LinkConfig, SimNetwork

LEAVE_SPREAD_S = 5.0
"""How long a node that finished leaving runs on before it stops (as the runtime does)."""
WALL_EPOCH_S = 1_800_000_000.0
"""Wall-clock time (seconds since 1970) at the start of every simulation."""

@dataclass(frozen=True)
class DiskConfig:
    """How a simulated disk behaves."""

    fsync_latency_s: float = 0.002
    """Time from asking for a sync to its completion."""
    fsync_jitter_s: float = 0.001
    """Uniform extra latency in [0, fsync_jitter_s]."""


@dataclass(eq=False)
class SimNode:
    """One node process in the world, with its disk surviving crashes."""

    name: str
    address: str
    config: NodeConfig
    engine: MemoryEngine
    node: Node
    up: bool = True
    timer: Handle | None = None
    timer_at: float | None = None
    syncing: bool = False
    sync_again: bool = False
    decoders: dict[str, FrameDecoder] = field(default_factory=dict)
    conn_ids: dict[str, int] = field(default_factory=dict)
    conn_addrs: dict[int, str] = field(default_factory=dict)
    next_conn: int = 1
    epoch: int = 1
    skew_s: float = 0.0
    """This node's clock runs this far ahead of true (simulated) time."""
    paused_until: float = 0.0
    """While paused (SIGSTOP), input waits in buffers and timers wait."""
    departed: bool = False
    """The node left the cluster (LEAVE) and stopped for good."""
    seen_view: int = -1
    """The gossip view version the view observers last saw (-1: none yet)."""


class SimWorld:
    """A seeded world of nodes, clients, a network and disks."""

    def __init__(
        self,
        seed: int,
        *,
        link: LinkConfig | None = None,
        disk: DiskConfig | None = None,
        node_defaults: dict[str, Any] | None = None,
        faults: frozenset[str] = frozenset(),
        engine_factory: Callable[[str], MemoryEngine] | None = None,
        gossip_key: bytes | None = None,
        trace: bool = True,
    ) -> None:
        self.seed = seed
        self.faults = faults
        self.gossip_key = gossip_key
        """When set, gossip is encrypted under this key on every node."""
        self.engine_factory = engine_factory
        """Makes each node's disk (given the node's name); a plain MemoryEngine when None."""
        self.rng = random.Random(seed)
        self.loop = EventLoop()
        self.net = SimNetwork(self.loop, self._child_rng(), link)
        self.disk = disk or DiskConfig()
        self._disk_rng = self._child_rng()
        self.node_defaults = node_defaults or {}
        self.nodes: dict[str, SimNode] = {}
        self.clients: dict[str, SimClient] = {}
        self.trace: list[str] = []
        self.tracing = trace
        """Whether `log` records lines in `trace` (a debugging aid; a long run that does
        not read the trace saves the cost of formatting every request)."""
        self.view_observers: list[Callable[[SimNode], None]] = []
        """Called with the node after a step of an up node (its effects carried out)
        that changed its gossip view, and after each (re)start: the harness records
        the views through it."""
        self._by_address: dict[str, SimNode] = {}

    def _child_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    @property
    def now(self) -> float:
        return self.loop.now

    def log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.loop.now:12.6f} {text}")

    def trace_digest(self) -> str:
        """A short hash of the whole trace, for comparing runs."""
        h = hashlib.sha256()
        for line in self.trace:
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    # -- nodes ---------------------------------------------------------------------
    def add_node(self, name: str, **overrides: Any) -> SimNode:
        """Start a node; unless `seeds` is given it joins through every node already here."""
        address = f"10.0.0.{len(self.nodes) + 1}:7001"
        seeds = tuple(n.address for n in self.nodes.values())
        settings = {"durability": Durability("group"), "seeds": seeds,
                    **self.node_defaults, **overrides}
        config = NodeConfig(name=name, listen=address, engine="memory", **settings)
        engine = MemoryEngine() if self.engine_factory is None else self.engine_factory(name)
        sn = SimNode(name, address, config, engine,
                     Node(config, engine, self._child_rng(), self.loop.now, epoch=1,
                          faults=self.faults, keyring=self._keyring(),
                          wall_clock=partial(self._wall_time, name)))
        self.nodes[name] = sn
        self._by_address[address] = sn
        self.net.register(
            address,
            on_packet=partial(self._node_packet, sn),
            on_stream=partial(self._node_stream, sn),
            on_stream_failed=partial(self._peer_failed, sn),
        )
        self.log(f"node {name} started at {address}")
        self._pump(sn)
        return sn

    def crash(self, name: str) -> None:
        """Kill the process and cut the power: unsynced writes are lost."""
        sn = self.nodes[name]
        if not self._stop(sn):
            return
        sn.engine.crash()
        self.log(f"node {name} crashed (durable seq {sn.engine.durable_seq})")

    def restart(self, name: str) -> None:
        """Start a crashed node again on the disk it left behind."""
        sn = self.nodes[name]
        if sn.up or sn.departed:
            return
        sn.epoch += 1  # the runtime bumps a durable epoch at every start
        # Like an operator's config, a restarted node seeds from the rest of the cluster.
        others = tuple(o.address for o in self.nodes.values() if o is not sn)
        sn.config = dataclasses.replace(sn.config, seeds=others)
        sn.node = Node(sn.config, sn.engine, self._child_rng(), self._now(sn), epoch=sn.epoch,
                       faults=self.faults, keyring=self._keyring(),
                       wall_clock=partial(self._wall_time, name))
        sn.up = True
        sn.syncing = sn.sync_again = False
        sn.decoders.clear()
        sn.conn_ids.clear()
        sn.conn_addrs.clear()
        sn.timer = None
        sn.timer_at = None
        sn.seen_view = -1  # a new process: its first view is news
        self.net.set_up(sn.address, True)
        self.log(f"node {name} restarted with {len(sn.engine)} keys")
        self._pump(sn)

    def rot(self, name: str, probability: float, rng: random.Random) -> list[bytes]:
        """Bit rot: damage each record on `name`'s disk with `probability`; the stored
        keys damaged."""
        engine = self.nodes[name].engine
        hit = [key for key in sorted(k for k, _ in engine.iter_range(0, 0))
               if rng.random() < probability and engine.rot(key)]
        self.log(f"bit rot on {name}: {len(hit)} records damaged")
        return hit

    def _stop(self, sn: SimNode) -> bool:
        """Take a running node off the network and stop its timer; False if it was down."""
        if not sn.up:
            return False
        sn.up = False
        self.net.set_up(sn.address, False)
        if sn.timer is not None:
            sn.timer.cancel()
        return True

    def _stop_departed(self, sn: SimNode) -> None:
        if self._stop(sn):
            self.log(f"node {sn.name} left the cluster and stopped "
                     f"({len(sn.engine)} keys left)")

    def pause(self, name: str, seconds: float) -> None:
        """Stop a node's process for a while (SIGSTOP): nothing it receives is handled
        and none of its timers fire until it resumes; the network keeps delivering."""
        sn = self.nodes[name]
        sn.paused_until = max(sn.paused_until, self.loop.now + seconds)
        self.log(f"node {name} paused for {seconds:.3f}s")

    def set_skew(self, name: str, skew_s: float) -> None:
        """Make a node's clock run `skew_s` ahead of (or, negative, behind) true time."""
        self.nodes[name].skew_s = skew_s
        self.log(f"node {name} clock skew {skew_s:+.3f}s")

    def _now(self, sn: SimNode) -> float:
        return self.loop.now + sn.skew_s

    def _wall_time(self, name: str) -> float:
        """A node's wall clock (for last-write-wins stamps): skewed like its other clock,
        from a fixed date, so the same seed stamps the same values."""
        return WALL_EPOCH_S + self.loop.now + self.nodes[name].skew_s

    def _keyring(self) -> Keyring | None:
        if self.gossip_key is None:
            return None
        return Keyring([self.gossip_key], nonce_source=self._child_rng().randbytes)

    def _node_packet(self, sn: SimNode, data: bytes, src: str) -> None:
        if not sn.up:
            return
        if sn.paused_until > self.loop.now:
            self.loop.post_at(sn.paused_until, self._node_packet, sn, data, src)
            return
        sn.node.receive_datagram(data, src, self._now(sn))
        self._pump(sn)

    # -- driving a node ------------------------------------------------------------
    def _node_stream(self, sn: SimNode, data: bytes, src: str) -> None:
        if not sn.up:
            return
        true_now = self.loop.now
        if sn.paused_until > true_now:
            self.loop.post_at(sn.paused_until, self._node_stream, sn, data, src)
            return
        node = sn.node
        conn = sn.conn_ids.get(src)
        if conn is None:
            conn = sn.next_conn
            sn.next_conn += 1
            sn.conn_ids[src] = conn
            sn.conn_addrs[conn] = src
            sn.decoders[src] = FrameDecoder(sn.config.limits.max_frame_bytes)
            node.client_connected(conn, self._now(sn))
            peer = self._by_address.get(src)
            if peer is not None:
                # The peer's connection opens with HELLO naming it; its reply goes nowhere.
                node.client_request(conn, [0, 1, int(Op.HELLO),
                                           {"versions": [PROTOCOL_VERSION], "peer": peer.name}],
                                    self._now(sn))
        decoder = sn.decoders[src]
        now = true_now + sn.skew_s  # self._now(sn), inlined: this runs for every message
        for body in decoder.feed(data):
            frame = node.client_request(conn, body, now)
            if frame is not None:
                self.net.send_stream(sn.address, src, frame)
        if decoder.error is not None:
            exc = decoder.error
            self.net.send_stream(sn.address, src, encode_error(None, exc.code, exc.message))
            self._drop_conn(sn, conn)
        self._pump(sn)

    def _drop_conn(self, sn: SimNode, conn: int) -> None:
        src = sn.conn_addrs.pop(conn, None)
        if src is not None:
            sn.conn_ids.pop(src, None)
            sn.decoders.pop(src, None)
            sn.node.client_disconnected(conn, self._now(sn))

    def _pump(self, sn: SimNode) -> None:
        """Carry out a node's effects and re-arm its timer."""
        if not sn.up:
            return
        node = sn.node
        out = node.drain_outbox()
        if out:
            send_stream = self.net.send_stream
            address = sn.address
            for eff in out:
                kind = type(eff)
                if kind is PeerSend:
                    send_stream(address, eff.address, eff.frame)
                elif kind is ClientReply:
                    dest = sn.conn_addrs.get(eff.conn)
                    if dest is not None:
                        send_stream(address, dest, eff.frame)
                elif kind is Datagram:
                    self.net.send_packet(address, eff.address, eff.data)
                elif kind is RequestSync:
                    self._start_sync(sn)
                elif kind is CloseConnection:
                    self._drop_conn(sn, eff.conn)
        if not sn.departed and node.repair.departed:
            sn.departed = True  # like the runtime: let the leave spread, then stop
            self.loop.call_at(self.loop.now + LEAVE_SPREAD_S, self._stop_departed, sn)
        dl = node.next_deadline()
        if dl != sn.timer_at:
            if sn.timer is not None:
                sn.timer.cancel()
            sn.timer_at = dl
            sn.timer = (None if dl is None
                        else self.loop.call_at(self._true_time(sn, dl), self._fire_timer, sn))
        g = node.gossip
        if g is not None and g.view_version != sn.seen_view:
            sn.seen_view = g.view_version
            for fn in self.view_observers:
                fn(sn)

    @staticmethod
    def _true_time(sn: SimNode, node_time: float) -> float:
        """When a node's clock reads `node_time`. With a skew, (t - skew) + skew can round
        one ulp below t: the node would wake early, do nothing and re-arm at the same
        instant forever, so such a time is moved up to the next representable one."""
        at = node_time - sn.skew_s
        while at + sn.skew_s < node_time:
            at = math.nextafter(at, math.inf)
        return at

    def _peer_failed(self, sn: SimNode, dest: str) -> None:
        if sn.up:
            sn.node.peer_unreachable(dest, self._now(sn))
            self._pump(sn)

    def _fire_timer(self, sn: SimNode) -> None:
        if not sn.up:
            return
        sn.timer = None
        sn.timer_at = None
        if sn.paused_until > self.loop.now:
            sn.timer_at = -1.0  # force a re-arm after the pause
            sn.timer = self.loop.call_at(sn.paused_until, self._fire_timer, sn)
            return
        sn.node.handle_timer(self._now(sn))
        self._pump(sn)

    def _start_sync(self, sn: SimNode) -> None:
        if sn.syncing:
            sn.sync_again = True
            return
        sn.syncing = True
        node = sn.node
        durable = sn.engine.sync()  # the write-back happens now; its completion later
        delay = self.disk.fsync_latency_s + self._disk_rng.random() * self.disk.fsync_jitter_s
        self.loop.post_later(delay, self._finish_sync, sn, node, durable)

    def _finish_sync(self, sn: SimNode, node: Node, durable: int) -> None:
        if not sn.up or sn.node is not node:
            return  # the process that asked crashed meanwhile
        sn.syncing = False
        node.on_sync_complete(durable, self._now(sn))
        if sn.sync_again:
            sn.sync_again = False
            self._start_sync(sn)
        self._pump(sn)

    # -- clients -------------------------------------------------------------------
    def add_client(self, name: str) -> SimClient:
        address = f"10.1.0.{len(self.clients) + 1}:40000"
        c = SimClient(self, name, address)
        self.clients[name] = c
        self.net.register(address, on_packet=_ignore_packet, on_stream=c._on_stream,
                          on_stream_failed=c._on_stream_failed)
        return c

    # -- running -------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        self.loop.run_until(self.loop.now + seconds)
        self.check_invariants()

    def check_invariants(self) -> None:
        for sn in self.nodes.values():
            if sn.up:
                sn.node.check_invariants()


Callback = Callable[[str, Any], None]


def _ignore_packet(data: bytes, src: str) -> None:
    """Datagrams to an endpoint with no gossip attached are dropped."""


class SimClient:
    """A client speaking the wire protocol to one node at a time over simulated streams.

    Requests complete through callbacks `(outcome, payload)`: outcome is "ok"
    (payload: the result map), "error" (payload: the error map) or "timeout".
    """

    def __init__(self, world: SimWorld, name: str, address: str) -> None:
        self.world = world
        self.name = name
        self.address = address
        self.node: str | None = None
        self._decoder = FrameDecoder(1 << 30)
        self._ids = 0
        self._waiting: dict[int, tuple[str, Callback, Handle]] = {}
        self.completed = 0

    def connect(self, node_address: str, on_ready: Callable[[bool], None] | None = None) -> None:
        """Open a connection (HELLO) to the node at `node_address`."""
        self.node = node_address
        self._decoder = FrameDecoder(1 << 30)

        def done(outcome: str, payload: Any) -> None:
            if on_ready is not None:
                on_ready(outcome == "ok")

        self._send(Op.HELLO, {"versions": [PROTOCOL_VERSION], "client": self.name}, done, 5.0)

    def request(self, op: Op, args: dict[str, Any], callback: Callback,
                timeout_s: float = 5.0) -> None:
        self._send(op, args, callback, timeout_s)

    def _send(self, op: Op, args: dict[str, Any], callback: Callback, timeout_s: float) -> None:
        if self.node is None:
            raise RuntimeError("connect() first")
        self._ids += 1
        rid = self._ids
        world = self.world
        h = world.loop.call_later(timeout_s, self._timeout, rid)
        self._waiting[rid] = (op.name, callback, h)
        if world.tracing:
            world.log(f"client {self.name} -> {self.node} #{rid} {op.name} {_brief(args)}")
        world.net.send_stream(self.address, self.node, encode_request(rid, op, args))

    def call(self, op: Op, args: dict[str, Any], timeout_s: float = 5.0) -> tuple[str, Any]:
        """Issue one request and run the world until it completes (for tests and tools)."""
        box: list[tuple[str, Any]] = []
        self.request(op, args, lambda o, p: box.append((o, p)), timeout_s)
        self.world.loop.run_while(lambda: not box, self.world.now + timeout_s + 1)
        assert box, "request neither completed nor timed out"
        return box[0]

    def open(self, node_address: str) -> None:
        """Connect and run the world until the handshake completes."""
        box: list[bool] = []
        self.connect(node_address, box.append)
        self.world.loop.run_while(lambda: not box, self.world.now + 6)
        if not box or not box[0]:
            raise RuntimeError(f"handshake with {node_address} failed")

    def _timeout(self, rid: int) -> None:
        w = self._waiting.pop(rid, None)
        if w is not None:
            self.world.log(f"client {self.name} #{rid} {w[0]} timed out")
            w[1]("timeout", None)

    def _on_stream(self, data: bytes, src: str) -> None:
        if src != self.node:
            return
        for body in self._decoder.feed(data):
            kind, rid, payload = body
            w = self._waiting.pop(rid, None) if rid is not None else None
            if w is None:
                continue
            w[2].cancel()
            self.completed += 1
            tracing = self.world.tracing
            if kind == RESPONSE:
                if tracing:
                    self.world.log(f"client {self.name} <- #{rid} ok {_brief(payload)}")
                w[1]("ok", payload)
            elif kind == ERROR:
                if tracing:
                    self.world.log(f"client {self.name} <- #{rid} error {payload.get('name')}")
                w[1]("error", payload)

    def _on_stream_failed(self, dest: str) -> None:
        # The connection broke: everything in flight on it has an unknown outcome.
        for rid in sorted(self._waiting):
            op, cb, h = self._waiting.pop(rid)
            h.cancel()
            self.world.log(f"client {self.name} #{rid} {op} connection failed")
            cb("timeout", None)


def _brief(m: Any) -> str:
    if not isinstance(m, dict):
        return repr(m)[:60]
    parts = []
    for k in sorted(m):
        v = m[k]
        if isinstance(v, bytes):
            parts.append(f"{k}={v[:16]!r}")
        elif isinstance(v, list):
            parts.append(f"{k}=[{len(v)}]")
        else:
            parts.append(f"{k}={v!r}"[:40])
    return " ".join(parts)
