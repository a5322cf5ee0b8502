"""A simulated network: datagrams with latency, loss, duplication and reordering;
reliable ordered streams; symmetric and one-way partitions; clogged links.

All randomness comes from the rng handed in. Addresses are "host:port" strings,
as on the real network. A datagram between two endpoints is delivered through
`on_packet(data, src)`; a stream message through `on_stream(data, src)`; a stream
message that cannot be delivered (partition, endpoint down) is reported to the
sender through `on_stream_failed(dest)` after the link's connect timeout.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from heapq import heappush

from simulations.loop import EventLoop


@dataclass(frozen=True)
class LinkConfig:
    """How one direction of a link behaves."""

    latency_s: float = 0.0005
    """Base one-way delay."""
    jitter_s: float = 0.0005
    """Uniform extra delay in [0, jitter_s]; makes datagrams reorder."""
    loss: float = 0.0
    """Probability that a datagram is dropped."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice."""
    clog_s: float = 0.0
    """Extra delay for everything on the link (a clogged link); 0 when clear."""
    stream_fail_s: float = 1.0
    """How long a sender waits before learning a stream message was not delivered."""


PacketHandler = Callable[[bytes, str], None]
FailHandler = Callable[[str], None]


@dataclass
class _Endpoint:
    on_packet: PacketHandler
    on_stream: PacketHandler
    on_stream_failed: FailHandler
    up: bool = True


class SimNetwork:
    """Delivers datagrams and stream messages between registered addresses."""

    def __init__(
        self, loop: EventLoop, rng: random.Random, default: LinkConfig | None = None
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.default = default or LinkConfig()
        self._links: dict[tuple[str, str], LinkConfig] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._blocked: set[tuple[str, str]] = set()
        # Streams are ordered per (src, dest): a message never overtakes an earlier one.
        self._stream_tail: dict[tuple[str, str], float] = {}
        self.packets_sent = 0
        self.packets_delivered = 0
        self.packets_dropped = 0
        self.bytes_sent = 0
        self.max_packet_bytes = 0
        self.streams_sent = 0
        self.streams_failed = 0

    # -- endpoints ---------------------------------------------------------------
    def register(
        self,
        address: str,
        on_packet: PacketHandler,
        on_stream: PacketHandler,
        on_stream_failed: FailHandler,
    ) -> None:
        """Attach an endpoint; replaces any earlier one at the same address."""
        self._endpoints[address] = _Endpoint(on_packet, on_stream, on_stream_failed)

    def set_up(self, address: str, up: bool) -> None:
        """Take an endpoint off the network (crashed) or back on (restarted)."""
        ep = self._endpoints.get(address)
        if ep is not None:
            ep.up = up

    def is_up(self, address: str) -> bool:
        ep = self._endpoints.get(address)
        return ep is not None and ep.up

    # -- faults ------------------------------------------------------------------
    def link(self, src: str, dest: str) -> LinkConfig:
        return self._links.get((src, dest), self.default)

    def set_link(self, src: str, dest: str, cfg: LinkConfig, both_ways: bool = True) -> None:
        self._links[(src, dest)] = cfg
        if both_ways:
            self._links[(dest, src)] = cfg

    def update_default(self, **changes: float) -> None:
        """Change the default link (loss, latency...) for every pair without an override."""
        self.default = replace(self.default, **changes)

    def partition(self, a: Iterable[str], b: Iterable[str], one_way: bool = False) -> None:
        """Cut traffic from a to b (and b to a unless one_way)."""
        a_set, b_set = list(a), list(b)
        for x in a_set:
            for y in b_set:
                self._blocked.add((x, y))
                if not one_way:
                    self._blocked.add((y, x))

    def isolate(self, address: str) -> None:
        """Cut one address off from every other registered address, both ways."""
        others = [x for x in self._endpoints if x != address]
        self.partition([address], others)

    def heal(self) -> None:
        """Remove every partition and link override."""
        self._blocked.clear()
        self._links.clear()

    def blocked(self, src: str, dest: str) -> bool:
        return (src, dest) in self._blocked

    # -- delivery ----------------------------------------------------------------
    def send_packet(self, src: str, dest: str, data: bytes) -> None:
        """Send a datagram; it may be lost, duplicated, delayed or reordered."""
        self.packets_sent += 1
        n = len(data)
        self.bytes_sent += n
        if n > self.max_packet_bytes:
            self.max_packet_bytes = n
        if (src, dest) in self._blocked:
            self.packets_dropped += 1
            return
        cfg = self._links.get((src, dest), self.default)
        rng = self.rng
        if cfg.loss and rng.random() < cfg.loss:
            self.packets_dropped += 1
            return
        copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
        for _ in range(copies):
            delay = cfg.latency_s + cfg.clog_s
            if cfg.jitter_s:
                delay += rng.random() * cfg.jitter_s
            self.loop.post_at(self.loop.now + delay, self._deliver_packet, src, dest, data)

    def _deliver_packet(self, src: str, dest: str, data: bytes) -> None:
        ep = self._endpoints.get(dest)
        # A partition that started while the packet was in flight still stops it.
        if ep is None or not ep.up or (src, dest) in self._blocked:
            self.packets_dropped += 1
            return
        self.packets_delivered += 1
        ep.on_packet(data, src)

    def send_stream(self, src: str, dest: str, data: bytes) -> None:
        """Send a reliable, ordered message; failure is reported to the sender."""
        self.streams_sent += 1
        self.bytes_sent += len(data)
        pair = (src, dest)
        links = self._links
        cfg = links.get(pair, self.default) if links else self.default
        ep = self._endpoints.get(dest)
        blocked = self._blocked
        if ep is None or not ep.up or (blocked and (pair in blocked or (dest, src) in blocked)):
            self.streams_failed += 1
            self.loop.post_later(cfg.stream_fail_s, self._fail_stream, src, dest)
            return
        loop = self.loop
        at = loop.now + cfg.latency_s + cfg.clog_s + self.rng.random() * cfg.jitter_s
        tails = self._stream_tail
        tail = tails.get(pair)
        if tail is not None and tail > at:
            at = tail
        tails[pair] = at
        # loop.post_at(at, ...) inlined: this runs for every message sent.
        seq = loop._seq = loop._seq + 1
        heappush(loop._heap, (at, seq, self._deliver_stream, (src, dest, data)))

    def _deliver_stream(self, src: str, dest: str, data: bytes) -> None:
        ep = self._endpoints.get(dest)
        blocked = self._blocked
        if ep is None or not ep.up or (blocked and (src, dest) in blocked):
            self.streams_failed += 1
            self._fail_stream(src, dest)
            return
        ep.on_stream(data, src)

    def _fail_stream(self, src: str, dest: str) -> None:
        ep = self._endpoints.get(src)
        if ep is not None and ep.up:
            ep.on_stream_failed(dest)
