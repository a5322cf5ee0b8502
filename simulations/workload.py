"""Workloads: simulated clients issuing gets, puts and deletes with contexts.

Each client runs a closed loop (one request at a time, a think time between
requests), picking keys from a small key space so that writes contend. A client
that read a key writes back with that read's context, as a careful application
would; sometimes it writes blind. Every request and outcome lands in `history`,
which the checkers read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ringfs.wire import Op
from simulations.world import SimClient, SimWorld


@dataclass
class Event:
    """One completed client operation."""

    client: str
    op: str
    key: bytes
    value: bytes | None
    start: float
    end: float
    outcome: str
    result: Any = None


@dataclass
class Workload:
    """Several closed-loop clients over a shared key space."""

    world: SimWorld
    clients: int = 3
    keys: int = 8
    think_s: float = 0.01
    put_ratio: float = 0.45
    delete_ratio: float = 0.1
    history: list[Event] = field(default_factory=list)
    running: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.world.rng.getrandbits(64))
        self._contexts: dict[tuple[str, bytes], bytes] = {}
        self._seq = 0

    def start(self, node_addresses: list[str]) -> None:
        for i in range(self.clients):
            c = self.world.add_client(f"c{i}")
            addr = node_addresses[i % len(node_addresses)]
            c.connect(addr, partial(self._ready, c))

    def _ready(self, c: SimClient, ok: bool) -> None:
        self._next(c)

    def stop(self) -> None:
        self.running = False

    def _next(self, c: SimClient) -> None:
        if not self.running:
            return
        self.world.loop.call_later(self.rng.random() * self.think_s, self._issue, c)

    def _issue(self, c: SimClient) -> None:
        if not self.running:
            return
        key = b"key-%d" % self.rng.randrange(self.keys)
        roll = self.rng.random()
        args: dict[str, Any] = {"key": key}
        value: bytes | None = None
        if roll < self.put_ratio:
            op = Op.PUT
            self._seq += 1
            value = b"%s-%d" % (c.name.encode(), self._seq)
            args["value"] = value
        elif roll < self.put_ratio + self.delete_ratio:
            op = Op.DELETE
        else:
            op = Op.GET
        ctx = self._contexts.get((c.name, key))
        if op != Op.GET and ctx is not None and self.rng.random() < 0.8:
            args["context"] = ctx
        start = self.world.now

        def done(outcome: str, payload: Any) -> None:
            self.history.append(Event(c.name, op.name, key, value, start, self.world.now,
                                      outcome, payload))
            if outcome == "ok" and isinstance(payload, dict) and "context" in payload:
                self._contexts[(c.name, key)] = payload["context"]
            self._next(c)

        c.request(op, args, done)
