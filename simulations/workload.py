"""Workloads: simulated clients issuing gets, puts and deletes with contexts.

Each client runs a closed loop (one request at a time, an exponential think time
between requests) over a small key space, so that writes contend. A client keeps
the context of the last result it got for each key and writes back with it, as a
careful application would; sometimes it writes blind. Every value written is
unique (client name and a sequence number), which lets the checkers find the dot
each write was given.

Every request lands in `history` when it is issued and is completed in place, so
the checkers see start and end times, what was sent (value, context, and which
earlier result that context came from) and what came back. A client whose
connection breaks reconnects to a node picked at random after a short pause.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ringfs.wire import Op
from simulations.world import SimClient, SimWorld

PENDING = "pending"
OK = "ok"
ERROR = "error"
TIMEOUT = "timeout"

# Errors after which the connection is unusable: the client reconnects.
_RECONNECT_ERRORS = frozenset({"HANDSHAKE_REQUIRED", "BAD_FRAME", "UNSUPPORTED_VERSION"})


@dataclass(eq=False)
class OpRecord:
    """One client operation, from issue to outcome."""

    id: int
    client: str
    op: str
    """GET, PUT or DELETE."""
    key: bytes
    value: bytes | None
    """The value a PUT wrote (unique in a run); None otherwise."""
    context_sent: bytes | None
    """The causal context a write carried; None for a blind write (and for gets)."""
    context_source: int | None
    """Id of the earlier operation whose result supplied `context_sent`."""
    node: str
    """Address of the node the request was sent to."""
    start: float
    r: int | None = None
    """An explicit read quorum, when the request set one."""
    end: float = -1.0
    outcome: str = PENDING
    """ok, error, timeout (unknown outcome: the write may or may not have happened) or pending."""
    error: str | None = None
    """The error name (QUORUM_NOT_MET, ...) when outcome is error."""
    result: Any = None
    """The response or error map as received."""

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def is_write(self) -> bool:
        return self.op != "GET"

    @property
    def context(self) -> bytes:
        """The context a successful result carried (b"" when none)."""
        if self.outcome == OK and isinstance(self.result, dict):
            ctx = self.result.get("context", b"")
            return ctx if isinstance(ctx, bytes) else b""
        return b""

    @property
    def values(self) -> list[bytes]:
        """The siblings a successful GET returned."""
        if self.outcome == OK and self.op == "GET" and isinstance(self.result, dict):
            vals = self.result.get("values", [])
            return [v for v in vals if isinstance(v, bytes)]
        return []

    @property
    def latency_s(self) -> float:
        return self.end - self.start


Event = OpRecord
"""The name earlier code used for a history entry."""


@dataclass(frozen=True)
class WorkloadConfig:
    """What the clients do."""

    clients: int = 4
    """Concurrent closed-loop clients."""
    keys: int = 8
    """Size of the key space; small so that writes contend."""
    rate_ops_s: float = 50.0
    """Target rate over all clients; each client's mean think time is clients / rate."""
    put_ratio: float = 0.45
    delete_ratio: float = 0.1
    """The rest of the operations are gets."""
    context_ratio: float = 0.8
    """Probability that a write carries the client's last context for the key, when it has one."""
    timeout_s: float = 10.0
    """Client-side request timeout; longer than the node's so outcomes are mostly definite."""
    reconnect_s: float = 0.5
    """Pause before reconnecting after a broken connection."""

    def __post_init__(self) -> None:
        if self.clients < 1 or self.keys < 1:
            raise ValueError("clients and keys must be at least 1")
        if self.rate_ops_s <= 0:
            raise ValueError("rate_ops_s must be positive")
        if not (self.put_ratio >= 0 and self.delete_ratio >= 0
                and self.put_ratio + self.delete_ratio <= 1):
            raise ValueError("put_ratio and delete_ratio must be >= 0 and sum to at most 1")
        if not 0 <= self.context_ratio <= 1:
            raise ValueError("context_ratio must be in [0, 1]")
        if self.timeout_s <= 0 or self.reconnect_s < 0:
            raise ValueError("timeout_s must be positive and reconnect_s not negative")

    @property
    def think_s(self) -> float:
        return self.clients / self.rate_ops_s


def key_name(i: int) -> bytes:
    return b"k%03d" % i


@dataclass(eq=False)
class _Client:
    sim: SimClient
    ready: bool = False
    busy: bool = False
    contexts: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    """Per key: the last context received and the id of the operation it came from."""


class Workload:
    """Several clients over a shared key space, closed-loop or driven one op at a time."""

    def __init__(self, world: SimWorld, clients: int = 3, keys: int = 8,
                 think_s: float | None = None, *, config: WorkloadConfig | None = None,
                 **changes: Any) -> None:
        if config is None:
            rate = clients / think_s if think_s else 100.0 * clients
            config = WorkloadConfig(clients=clients, keys=keys, rate_ops_s=rate, **changes)
        self.world = world
        self.config = config
        self.rng = random.Random(world.rng.getrandbits(64))
        self.history: list[OpRecord] = []
        self.running = False
        self.auto = True
        self._clients: dict[str, _Client] = {}
        self._addresses: list[str] = []
        self._seq = 0
        self.inflight = 0
        """Operations issued and not yet completed."""
        self.on_complete: Callable[[OpRecord], None] | None = None
        """Called after every operation completes (the checkers' incremental hook)."""

    @property
    def keys(self) -> list[bytes]:
        return [key_name(i) for i in range(self.config.keys)]

    @property
    def pending(self) -> int:
        return sum(1 for c in self._clients.values() if c.busy)

    # -- lifecycle -----------------------------------------------------------------
    def start(self, node_addresses: list[str], *, auto: bool = True) -> None:
        """Create the clients, connect them round robin, and (auto) start their loops."""
        self._addresses = list(node_addresses)
        self.running = True
        self.auto = auto
        for i in range(self.config.clients):
            name = f"c{i}"
            c = _Client(self.world.add_client(name))
            self._clients[name] = c
            self._connect(c, self._addresses[i % len(self._addresses)])

    def stop(self) -> None:
        """Issue nothing more; operations in flight still complete."""
        self.running = False

    @property
    def client_names(self) -> list[str]:
        return list(self._clients)

    def _connect(self, c: _Client, address: str) -> None:
        c.ready = False
        c.busy = True

        def up() -> None:
            c.busy = False
            c.ready = True
            self._next(c)

        def pinged(outcome: str, payload: Any) -> None:
            if outcome == OK:
                up()
            else:
                c.busy = False
                self._reconnect_later(c)

        def done(ok: bool) -> None:
            if ok:
                up()
            else:
                # A HELLO is refused on a connection that is still open from before (the
                # node sees the same address pair): a PING tells whether it is usable.
                c.sim.request(Op.PING, {}, pinged, self.config.timeout_s)

        c.sim.connect(address, done)

    def _reconnect_later(self, c: _Client) -> None:
        c.ready = False
        if not self.running:
            return
        c.busy = True  # nothing else may be issued until the new connection is up

        def go() -> None:
            c.busy = False
            if self.running:
                self._connect(c, self.rng.choice(self._addresses))

        self.world.loop.call_later(self.config.reconnect_s * (0.5 + self.rng.random()), go)

    def _next(self, c: Any) -> None:
        """Schedule the client's next operation after a think time (closed loop)."""
        if isinstance(c, SimClient):  # the older interface passed the SimClient itself
            c = self._clients[c.name]
        if not (self.running and self.auto):
            return
        delay = self.rng.expovariate(1.0 / self.config.think_s)
        self.world.loop.post_later(delay, self._issue_random, c)

    def _issue_random(self, c: _Client) -> None:
        if not self.running or c.busy or not c.ready:
            return
        cfg = self.config
        key = key_name(self.rng.randrange(cfg.keys))
        roll = self.rng.random()
        if roll < cfg.put_ratio:
            op = "PUT"
        elif roll < cfg.put_ratio + cfg.delete_ratio:
            op = "DELETE"
        else:
            op = "GET"
        self._issue(c, op, key, self.rng.random() < cfg.context_ratio)

    # -- one operation -------------------------------------------------------------
    def issue(self, client: str, op: str, key: bytes, *, with_context: bool = True,
              r: int | None = None) -> OpRecord | None:
        """Issue one operation now from `client`; None if that client is busy or not connected."""
        c = self._clients[client]
        if c.busy or not c.ready:
            return None
        return self._issue(c, op, key, with_context, r)

    def _issue(self, c: _Client, op: str, key: bytes, with_context: bool,
               r: int | None = None) -> OpRecord:
        args: dict[str, Any] = {"key": key}
        value: bytes | None = None
        ctx: bytes | None = None
        source: int | None = None
        if op == "PUT":
            self._seq += 1
            value = b"%s-%d" % (c.sim.name.encode(), self._seq)
            args["value"] = value
        if op != "GET" and with_context and key in c.contexts:
            ctx, source = c.contexts[key]
            args["context"] = ctx
        if r is not None:
            args["r"] = r
        assert c.sim.node is not None
        rec = OpRecord(len(self.history), c.sim.name, op, key, value, ctx, source,
                       c.sim.node, self.world.now, r)
        self.history.append(rec)
        self.inflight += 1
        c.busy = True
        c.sim.request(Op[op], args, lambda outcome, payload: self._done(c, rec, outcome, payload),
                      self.config.timeout_s)
        return rec

    def _done(self, c: _Client, rec: OpRecord, outcome: str, payload: Any) -> None:
        rec.end = self.world.now
        rec.outcome = outcome
        rec.result = payload
        self.inflight -= 1
        c.busy = False
        if outcome == ERROR:
            rec.error = str(payload.get("name")) if isinstance(payload, dict) else "?"
        if outcome == OK:
            ctx = rec.context
            if ctx:
                c.contexts[rec.key] = (ctx, rec.id)
            else:
                # No context (a put that left siblings, or a read of nothing): writing
                # back an empty context would claim to have seen nothing.
                c.contexts.pop(rec.key, None)
        if self.on_complete is not None:
            self.on_complete(rec)
        if outcome == TIMEOUT or (outcome == ERROR and rec.error in _RECONNECT_ERRORS):
            self._reconnect_later(c)
        else:
            self._next(c)
