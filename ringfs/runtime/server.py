"""The trio shell around a Node: sockets, worker-thread syncs and the one timer.

It owns no protocol logic. Connections over TCP are read by one poller task
from an epoll set of their sockets (on Linux): it splits frames, hands them to
the node and sends the replies ready at once, serving every ready connection per
turn instead of waking a task per request. Each connection also has a writer
task that sends whatever replies queued later, many per send when requests are
pipelined (a reply for an idle connection is sent at once, without waking the
writer). Other streams (and platforms without epoll) get a reader task each.
Syncs run on a thread of their own; while one runs, writes keep arriving and the next
sync covers all of them (group commit). Every node call is followed by
`_dispatch()`, which carries out the node's effects and re-arms the timer if the
node's next deadline moved earlier.

A misbehaving client can cost the node its own connection and nothing more:
every connection handler catches everything, logs, counts and closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import itertools
import logging
import math
import os
import queue
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ringfs.config import NodeConfig, format_address, parse_address
from ringfs.errors import ErrorCode
from ringfs.gossip import Keyring, KeyringError, load_keyring_file, load_keys
from ringfs.node import (
    GC_THRESHOLDS,
    ClientReply,
    CloseConnection,
    Datagram,
    Node,
    PeerSend,
    RequestSync,
)
from ringfs.storage.engine import EPOCH_FILE, StorageEngine
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Op,
    WireError,
    encode_error,
    encode_request,
)

log = logging.getLogger("ringfs.server")

RECEIVE_BYTES = 256 * 1024
PEER_CONNECT_TIMEOUT_S = 2.0
PEER_QUEUE_BYTES = 64 * 1024 * 1024
"""Frames queued for one peer beyond this are dropped and the peer reported unreachable."""
MERGE_IDLE_S = 0.5
"""How often an idle node asks its engine whether a merge is due."""
MAINTENANCE_SYNC_BYTES = 1024 * 1024
"""Unsynced merge and hint output after which the maintenance task fsyncs it on a worker
thread (the engine would otherwise fsync it on the event loop at 2 MiB)."""
LEAVE_SPREAD_S = 5.0
"""After a requested leave, how long the node keeps running while the announcement spreads."""
MAX_UNSENT_REPLY_BYTES = 8 * 1024 * 1024
"""A connection whose client does not read its replies stops being read past this."""
POLL_BATCH = 256
"""Ready connections the poller serves per turn before yielding to other tasks."""
SPIN_START_S = 10e-6
"""The first busy-polling window the poller tries once sleeping has proved too slow."""


class SpinWindow:
    """How long the poller keeps polling its set, when it finds it empty, before it
    sleeps (adaptive busy polling, by the rule of KVM's halt polling).

    Sleeping costs a wake-up: the kernel must notice the request, switch the thread
    back in and, on a virtual machine, bring the idle core back, many microseconds
    of latency on every request of a client that sends one request at a time.
    Polling for a few microseconds instead catches the next request without
    sleeping when it comes that soon. The window adapts to what the node sees:
    after a sleep that a longer window would have avoided (the gap was at most
    `limit`) it doubles, from SPIN_START_S up to `limit`; after a gap longer than
    `limit` it halves, to 0 below SPIN_START_S. A node whose gaps are long (idle,
    or waiting on peers) does not poll at all; one that polls wastes at most
    `window` per empty turn. A limit of 0 turns busy polling off.
    """

    __slots__ = ("limit", "window")

    def __init__(self, limit_s: float) -> None:
        self.limit = limit_s
        self.window = 0.0

    def slept(self, gap_s: float) -> None:
        """The set stayed empty for `gap_s`, polling window included, and the poller
        slept until the next event."""
        if gap_s > self.limit:
            window = self.window / 2
            self.window = window if window >= SPIN_START_S else 0.0
        elif gap_s > self.window:
            self.window = min(self.limit, max(2 * self.window, SPIN_START_S))


def next_epoch(data_dir: str) -> int:
    """Bump and durably record the actor epoch kept in `data_dir`; returns the new one.

    Every run of a node stamps its writes with a fresh epoch, so a dot issued before
    a crash is never issued again (see ringfs/node.py).
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, EPOCH_FILE)
    epoch = 0
    try:
        with open(path) as f:
            text = f.read().strip()
        epoch = int(text) if text.isdigit() else 0
    except FileNotFoundError:
        pass
    epoch += 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{epoch}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return epoch


def open_engine(config: NodeConfig) -> StorageEngine:
    """The engine the config names, opened on the node's data directory."""
    if config.engine == "memory":
        return MemoryEngine()
    from ringfs.storage.logstore import LogStore

    os.makedirs(config.data_dir, exist_ok=True)
    return LogStore(config.data_dir)


@dataclass(eq=False)
class _PeerLink:
    """This node's outbound connection to one peer, with the frames waiting for it."""

    address: str
    queue: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    wake: trio.Event = field(default_factory=trio.Event)


MAX_PARTIAL_FRAME_BYTES = 256 * 1024 * 1024
"""Most bytes of unfinished frames the node holds for all its connections together (at
least twice the frame limit): every connection may hold up to a frame, and a thousand
of them as many gigabytes. A connection whose unfinished frame would pass it is
answered OVERLOADED and closed; its complete frames were served."""


SLOW_FRAME_MIN_BYTES_PER_S = 64 * 1024
"""While unfinished frames hold more than half of MAX_PARTIAL_FRAME_BYTES, a connection
whose unfinished frame arrives slower than this, over SLOW_FRAME_WINDOW_S, is answered
OVERLOADED and closed: a few senders that start large frames and then trickle them
(or stop) would otherwise keep the budget full and every other large frame refused.
Without that pressure a slow link is left alone, however slow."""

SLOW_FRAME_WINDOW_S = 10.0
"""How long a connection's pace is watched before it is judged."""

SLOW_FRAME_CHECK_S = 1.0
"""How often the connections holding unfinished frames are looked at."""

SLOW_FRAME_MIN_HELD = 64 * 1024
"""Connections holding less of an unfinished frame are not judged: refusing them would
free next to nothing (max_connections of them hold a quarter of the budget at most)."""

CLOSING_SEND_PIECE = 64 * 1024
"""The per-connection writer sends more than this in pieces of this size, so that a
connection closed during a long send has its time renewed as the client reads."""

CLOSING_SEND_S = 10.0
"""How long a connection the node is closing (after a fatal error or a refusal) may go
without taking any of the replies and error frame it is owed: one that stops reading
them would otherwise stay open for good, holding its socket and buffers."""


FD_RESERVE = 256
"""Descriptors kept free of client connections: the store's files, peer links,
listeners, the sync thread's pipe, log files."""


def fit_open_files(max_connections: int) -> int:
    """Raise the soft open-file limit to fit `max_connections` (two descriptors each:
    the socket and the poller's duplicate of it) and FD_RESERVE; returns how many
    connections fit, fewer (and logged) when the hard limit stops it. Running out of
    descriptors would fail the store's writes and every accept, not just one client."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max_connections + FD_RESERVE
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and soft < need:
        new = need if hard == unlimited else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit to %d: %s", new, exc)
    if soft == unlimited or soft >= need:
        return max_connections
    fit = max(1, (soft - FD_RESERVE) // 2)
    log.warning("the open-file limit (%d) fits %d client connections, not max_connections = "
                "%d; raise it (ulimit -n %d) to serve them all", soft, fit, max_connections, need)
    return fit


@dataclass(eq=False)
class _Connection:
    conn_id: int
    stream: trio.abc.Stream
    out: list[bytes] = field(default_factory=list)
    wake: trio.Event = field(default_factory=trio.Event)
    drained: trio.Event = field(default_factory=trio.Event)
    closing: bool = False
    reading_done: bool = False
    reader_scope: trio.CancelScope | None = None
    scope: trio.CancelScope | None = None
    """Of everything serving it (reader and writer): its deadline bounds a close."""

    unsent: int = 0
    sending: bool = False
    raw: socket.socket | None = None
    """A dup of the connection's socket, driven directly (None: use `stream`)."""
    decoder: FrameDecoder | None = None
    """Splits what the poller reads from `raw` into frames."""
    read_done: trio.Event = field(default_factory=trio.Event)
    """Set by the poller when it stops reading `raw` (end of stream, error, closing)."""
    paused: bool = False
    """The poller skips `raw` until the replies owed on it drain (backpressure)."""
    partial: int = 0
    """Bytes of an unfinished frame its decoder holds (in NodeServer._partial_bytes)."""
    shed: bool = False
    """Its unfinished frame would have passed MAX_PARTIAL_FRAME_BYTES: refuse it."""
    received: int = 0
    """Bytes read from it."""
    watch: tuple[float, int] | None = None
    """While it holds an unfinished frame: when the window its pace is judged over
    began, and `received` then (see SLOW_FRAME_MIN_BYTES_PER_S); None between frames
    and while the node waits on its own work for it."""
    held: list[Any] = field(default_factory=list)
    """Requests read but not yet served: one read stopped being served when the
    replies waiting to be sent passed MAX_UNSENT_REPLY_BYTES. Nothing more is read
    until they are served."""

    def push(self, frame: bytes) -> None:
        if self.closing:
            return  # the error frame that closes the connection must be the last one
        self.out.append(frame)
        self.unsent += len(frame)
        self.wake.set()


class NodeServer:
    """Serves one Node over TCP until cancelled."""

    def __init__(self, config: NodeConfig, engine: StorageEngine | None = None,
                 *, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self._engine = engine
        self.node: Node | None = None
        self.address: tuple[str, int] | None = None
        self._conns: dict[int, _Connection] = {}
        self._max_connections = config.max_connections
        self._partial_bytes = 0  # all connections' unfinished frames
        self._partial_budget = max(MAX_PARTIAL_FRAME_BYTES, 2 * config.limits.max_frame_bytes)
        self._ids = itertools.count(1)
        self._sync_wanted = trio.Event()
        self._sync_queue: list[int] = []
        self._timer_rearm = trio.Event()
        self._deadline = math.inf
        self._clock = clock or trio.current_time
        self._peers: dict[str, _PeerLink] = {}
        self._nursery: trio.Nursery | None = None
        self._departing = False
        self._udp: socket.socket | None = None
        self._resolved: dict[str, tuple[str, int]] = {}
        self.keyring: Keyring | None = None
        self._epoll: select.epoll | None = None
        """The poller's epoll set (None until serving, or where the platform has none)."""
        self._polled: dict[int, _Connection] = {}
        """Connections in the poller's set, by socket descriptor."""

    # -- lifecycle -----------------------------------------------------------------
    async def serve(
        self,
        *,
        listen: bool = True,
        task_status: trio.TaskStatus[tuple[str, int] | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the store, start the node and (unless listen=False) accept connections.

        `task_status.started` receives the bound (host, port), or None without a
        listener; streams can then be handed to `handle_stream` directly (tests do).
        """
        self._max_connections = fit_open_files(self.config.max_connections)
        engine = self._engine if self._engine is not None else open_engine(self.config)
        self._engine = engine
        listeners: list[trio.SocketListener] = []
        try:
            config = self.config
            if listen:
                host, port = parse_address(self.config.listen, allow_port_zero=True)
                listeners = await trio.open_tcp_listeners(port, host=host)
                sockname = listeners[0].socket.getsockname()
                self.address = (sockname[0], sockname[1])
                # Peers must be told the port actually bound, not ":0".
                config = dataclasses.replace(config, listen=format_address(host, sockname[1]))
            udp_sock: trio.socket.SocketType | None = None
            if listen and config.gossip != "off":
                assert self.address is not None
                # Gossip shares the port number of the TCP listener: one HOST:PORT names a node.
                family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
                raw = socket.socket(family, socket.SOCK_DGRAM)
                raw.setblocking(False)
                raw.bind(self.address)
                self._udp = raw
                udp_sock = trio.socket.from_stdlib_socket(raw)
            if config.keyring_file:
                self.keyring = load_keyring_file(config.keyring_file)
            epoch = next_epoch(config.data_dir) if config.engine == "log" else 1
            self.node = Node(config, engine, random.Random(), self._clock(), epoch=epoch,
                             keyring=self.keyring)
            if self.address is not None:
                log.info("node %s listening on %s:%d (tcp%s)", config.name, *self.address,
                         "+udp" if udp_sock is not None else "")
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._dispatch()
                if hasattr(select, "epoll"):
                    self._epoll = select.epoll()
                    nursery.start_soon(self._poller)
                nursery.start_soon(self._maintenance)
                nursery.start_soon(self._watch_slow_frames)
                if udp_sock is not None:
                    nursery.start_soon(self._udp_receiver, udp_sock)
                nursery.start_soon(self._syncer)
                nursery.start_soon(self._timer)
                if listeners:
                    nursery.start_soon(self._accept_loop, listeners, nursery)
                task_status.started(self.address)
        finally:
            with trio.CancelScope(shield=True):
                for ln in listeners:
                    await ln.aclose()
                if self._udp is not None:
                    self._udp.close()
                if self._epoll is not None:
                    self._epoll.close()
                    self._epoll = None
                    self._polled.clear()
                try:
                    engine.close()
                except Exception as exc:
                    log.error("closing the store failed: %s", exc)
                log.info("node %s stopped", self.config.name)

    async def _accept_loop(self, listeners: list[trio.SocketListener],
                           nursery: trio.Nursery) -> None:
        async def accept_on(ln: trio.SocketListener) -> None:
            while True:
                try:
                    stream = await ln.accept()
                except OSError as exc:
                    # EMFILE and friends: back off instead of spinning or dying.
                    log.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self.handle_stream, stream)

        async with trio.open_nursery() as inner:
            for ln in listeners:
                inner.start_soon(accept_on, ln)

    # -- effects -------------------------------------------------------------------
    def _dispatch(self, hold_peers: bool = False) -> None:
        """Carry out the node's effects and re-arm the timer. `hold_peers`: a partial
        dispatch, followed by a full one within the same turn of the poller: messages
        for peers stay queued in the node and the timer and departure checks wait."""
        node = self.node
        assert node is not None
        for eff in node.drain_outbox(hold_peers=hold_peers):
            if type(eff) is ClientReply:
                c = self._conns.get(eff.conn)
                if c is not None:
                    if c.raw is not None and not c.out and not c.sending and not c.closing:
                        self._send_now(c, c.raw, eff.frame)
                    else:
                        c.push(eff.frame)
            elif type(eff) is RequestSync:
                self._sync_queue.append(eff.seq)
                self._sync_wanted.set()
            elif type(eff) is Datagram:
                self._send_datagram(eff.address, eff.data)
            elif type(eff) is PeerSend:
                self._send_peer(eff.address, eff.frame)
            elif type(eff) is CloseConnection:
                c = self._conns.get(eff.conn)
                if c is not None:
                    self._close_soon(c)
        if hold_peers:
            return
        dl = node.next_deadline()
        if dl is not None and dl < self._deadline:
            self._timer_rearm.set()
        if node.departed and not self._departing and self._nursery is not None:
            self._departing = True
            self._nursery.start_soon(self._depart)

    @staticmethod
    def _send_now(c: _Connection, raw: socket.socket, frame: bytes) -> None:
        """Send a reply on an idle connection at once, without waking its writer task;
        what the socket does not take is left to the writer."""
        try:
            n = raw.send(frame)
        except BlockingIOError:
            n = 0
        except OSError:
            n = 0  # the writer meets the error again and closes the connection
        if n < len(frame):
            c.push(frame[n:])
        else:
            c.drained.set()

    async def _depart(self) -> None:
        """A requested leave finished: let the announcement spread, then stop serving."""
        node = self.node
        assert node is not None and self._nursery is not None
        with trio.move_on_after(LEAVE_SPREAD_S):
            while node.leave_pending:
                await trio.sleep(0.05)
        log.info("node %s left the cluster; stopping", node.name)
        self._nursery.cancel_scope.cancel()

    # -- gossip --------------------------------------------------------------------
    async def _udp_receiver(self, sock: trio.socket.SocketType) -> None:
        node = self.node
        assert node is not None
        while True:
            try:
                data, addr = await sock.recvfrom(65536)
            except OSError as exc:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED
                node.counters["udp_errors"] += 1
                log.debug("udp receive: %s", exc)
                continue
            try:
                node.receive_datagram(data, format_address(addr[0], addr[1]), self._clock())
            except Exception:
                node.counters["internal_errors"] += 1
                log.exception("handling a datagram failed")
            self._dispatch()

    def _send_datagram(self, address: str, data: bytes) -> None:
        sock = self._udp
        if sock is None:
            return
        dest = self._resolved.get(address)
        if dest is None:
            host, port = parse_address(address)
            dest = self._resolved[address] = (host, port)
        try:
            sock.sendto(data, dest)
        except OSError as exc:
            # UDP may drop; a full buffer or an unreachable host is just a lost packet.
            assert self.node is not None
            self.node.counters["udp_send_errors"] += 1
            if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.ENETUNREACH,
                                 errno.EHOSTUNREACH):
                log.debug("udp send to %s: %s", address, exc)

    async def leave(self, timeout_s: float = 2.0) -> None:
        """Announce a graceful leave and wait (bounded) until it has been disseminated."""
        node = self.node
        if node is None or node.gossip is None:
            return
        node.leave(self._clock())
        self._dispatch()
        with trio.move_on_after(timeout_s):
            while node.leave_pending:
                await trio.sleep(0.05)

    def reload_keyring(self) -> None:
        """Re-read the keyring file: install new keys, switch primary, drop removed ones."""
        if self.keyring is None or not self.config.keyring_file:
            log.warning("no keyring file configured; nothing to reload")
            return
        try:
            keys = load_keys(self.config.keyring_file)
        except (OSError, KeyringError, ValueError) as exc:
            log.error("keyring reload failed, keeping the old keys: %s", exc)
            return
        for k in keys:
            if k not in self.keyring.keys:
                self.keyring.install(k)
        self.keyring.use(keys[0])
        for k in list(self.keyring.keys):
            if k not in keys:
                self.keyring.remove(k)
        log.info("keyring reloaded: %d key(s)", len(keys))

    # -- peers ---------------------------------------------------------------------
    def _send_peer(self, address: str, frame: bytes) -> None:
        link = self._peers.get(address)
        if link is None:
            link = self._peers[address] = _PeerLink(address)
            assert self._nursery is not None
            self._nursery.start_soon(self._peer_sender, link)
        if link.queued_bytes + len(frame) > PEER_QUEUE_BYTES:
            assert self.node is not None
            self.node.counters["peer_queue_overflow"] += 1
            self.node.peer_unreachable(address, self._clock())
            return
        link.queue.append(frame)
        link.queued_bytes += len(frame)
        link.wake.set()

    async def _peer_sender(self, link: _PeerLink) -> None:
        """Keep one connection to a peer and send what is queued for it, in order.

        Whatever goes wrong with the link (refused, reset, a bug) costs the frames
        queued on it, which the node learns of as `peer_unreachable`, and nothing more.
        """
        node = self.node
        assert node is not None
        while True:
            await link.wake.wait()
            link.wake = trio.Event()
            if not link.queue:
                continue
            try:
                await self._peer_session(link)
            except Exception as exc:
                expected = _only_transport_errors(exc)
                if not expected:
                    log.warning("peer link to %s failed: %r", link.address, exc)
                else:
                    log.debug("peer %s unreachable: %r", link.address, exc)
                lost = len(link.queue)
                link.queue.clear()
                link.queued_bytes = 0
                node.counters["peer_frames_dropped"] += lost
                node.peer_unreachable(link.address, self._clock())
                self._dispatch()
                # Reconnect on the next message, but not in a tight loop.
                await trio.sleep(0.2)

    async def _peer_session(self, link: _PeerLink) -> None:
        host, port = parse_address(link.address)
        hello = encode_request(1, Op.HELLO, {"versions": [PROTOCOL_VERSION],
                                            "peer": self.config.name})
        with trio.fail_after(PEER_CONNECT_TIMEOUT_S):
            stream = await trio.open_tcp_stream(host, port)
        async with stream, trio.open_nursery() as inner:
            inner.start_soon(self._drain_peer_replies, stream, link.address)
            await stream.send_all(hello)
            # Send on a dup of the socket directly, as the client connections do: trio's
            # send_all yields to the scheduler after every send even when it completed.
            raw = socket.socket(fileno=os.dup(stream.socket.fileno()))
            try:
                raw.setblocking(False)
                send = raw.send
                wait_writable = trio.lowlevel.wait_writable
                queue = link.queue
                while True:
                    if queue:
                        data = memoryview(b"".join(queue) if len(queue) > 1 else queue[0])
                        queue.clear()
                        link.queued_bytes = 0
                        while data:
                            try:
                                n = send(data)
                            except BlockingIOError:
                                n = 0
                            data = data[n:]
                            if data:
                                await wait_writable(raw)
                    else:
                        await link.wake.wait()
                        link.wake = trio.Event()
            finally:
                raw.close()

    async def _drain_peer_replies(self, stream: trio.SocketStream, address: str) -> None:
        """Read what a peer sends back on our connection (HELLO reply, errors) and log it."""
        decoder = FrameDecoder(self.config.limits.max_frame_bytes)
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise _PeerClosed(address)
            for body in decoder.feed(data):
                if type(body) is list and len(body) == 3 and body[0] == 2:
                    log.warning("peer %s refused our connection: %r", address, body[2])
                    raise _PeerClosed(address)

    async def _syncer(self) -> None:
        node = self.node
        engine = self._engine
        assert node is not None and engine is not None
        per_write = self.config.durability.kind == "always"
        # An engine whose sync never touches a disk (the memory engine) is synced inline.
        blocking = getattr(engine, "sync_blocks", True)
        sync_thread = _SyncThread() if blocking else None
        try:
            await self._sync_loop(node, engine, per_write, sync_thread)
        finally:
            if sync_thread is not None:
                sync_thread.close()

    async def _sync_loop(self, node: Node, engine: StorageEngine, per_write: bool,
                         sync_thread: _SyncThread | None) -> None:
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            # Group commit: one fsync covers every write issued before it starts.
            # Under `always` each requested write gets an fsync of its own.
            rounds = len(self._sync_queue) if per_write else 1
            self._sync_queue.clear()
            for _ in range(max(rounds, 1)):
                try:
                    if sync_thread is not None:
                        durable = await sync_thread.run(engine.sync)
                    else:
                        durable = engine.sync()
                        await trio.lowlevel.checkpoint()
                except Exception as exc:  # any failure to sync leaves durability unknown
                    node.on_sync_failed(f"{type(exc).__name__}: {exc}", self._clock())
                else:
                    node.on_sync_complete(durable, self._clock())
                self._dispatch()

    async def _maintenance(self) -> None:
        """Background compaction: one bounded merge step at a time, between requests."""
        engine = self._engine
        node = self.node
        assert engine is not None and node is not None
        while True:
            if node.read_only_reason is not None:
                await trio.sleep(MERGE_IDLE_S)  # a failed store takes no more maintenance
                continue
            try:
                busy = engine.maybe_merge()
            except Exception:
                node.counters["merge_failures"] += 1
                log.exception("merge step failed; will retry")
                busy = False
            # Merge and hint output is fsynced here, off the event loop, once enough has
            # piled up or a finished hint or merge waits for it.
            if engine.maintenance_sync_wanted(MAINTENANCE_SYNC_BYTES):
                try:
                    await trio.to_thread.run_sync(engine.sync_maintenance)
                    busy = True  # a finished merge may now go on at once
                except Exception:
                    node.counters["merge_failures"] += 1
                    log.exception("fsync of merge output failed")
                    busy = False
            # A step is a few milliseconds of work; yield to requests between steps.
            await trio.sleep(0.001 if busy else MERGE_IDLE_S)

    async def _timer(self) -> None:
        node = self.node
        assert node is not None
        while True:
            dl = node.next_deadline()
            self._deadline = dl if dl is not None else math.inf
            self._timer_rearm = trio.Event()
            with trio.move_on_at(self._deadline):
                await self._timer_rearm.wait()
                continue
            node.handle_timer(self._clock())
            self._dispatch()

    # -- connections ---------------------------------------------------------------
    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes; never raises."""
        node = self.node
        assert node is not None
        if len(self._conns) >= self._max_connections:
            node.counters["connections_refused"] += 1
            with trio.move_on_after(1):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(encode_error(None, ErrorCode.OVERLOADED,
                                                       "too many connections"))
            await stream.aclose()
            return
        conn_id = next(self._ids)
        c = _Connection(conn_id, stream)
        self._conns[conn_id] = c
        node.client_connected(conn_id, self._clock())
        try:
            raw = None
            if isinstance(stream, trio.SocketStream) and self._epoll is not None:
                # Fast path: the poller reads a dup of the socket along with every other
                # connection's, and replies are sent on it directly; trio only waits.
                raw = socket.socket(fileno=os.dup(stream.socket.fileno()))
                raw.setblocking(False)
                c.raw = raw
            async with trio.open_nursery() as nursery:
                c.scope = nursery.cancel_scope
                if raw is not None:
                    nursery.start_soon(self._raw_writer, c, raw)
                else:
                    nursery.start_soon(self._writer, c)
                try:
                    if raw is not None:
                        await self._polled_reader(c, raw)
                    else:
                        await self._reader(c)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    c.closing = True
                finally:
                    c.reading_done = True
                    c.wake.set()
                    self._drop_partial(c)  # (at the end of input it can never finish)
                    if c.closing:
                        self._close_soon(c)
        except Exception:
            node.counters["connection_bugs"] += 1
            log.exception("connection %d failed", conn_id)
        finally:
            c.raw = None
            if raw is not None:
                raw.close()
            self._conns.pop(conn_id, None)
            node.client_disconnected(conn_id, self._clock())
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _reader(self, c: _Connection) -> None:
        node = self.node
        assert node is not None
        decoder = c.decoder = FrameDecoder(self.config.limits.max_frame_bytes)
        max_inflight = self.config.max_inflight_per_connection
        stream = c.stream
        with trio.CancelScope() as scope:
            c.reader_scope = scope
            closing = False
            while not closing and not c.closing:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data or c.closing:  # (closed while this task waited to run)
                    self._drop_partial(c)  # (its rest will never come: not judged)
                    break
                closing = self._handle_input(c, decoder, data, self._clock())
                while True:
                    if c.out:
                        c.wake.set()
                    if closing:
                        break
                    await self._backpressure(c, max_inflight)
                    if not c.held or c.closing:
                        break
                    closing = self._serve_held(c, self._clock())
        await self._finish_input(c)

    def _handle_input(self, c: _Connection, decoder: FrameDecoder,
                      data: bytes | bytearray, now: float, hold_peers: bool = False) -> bool:
        """Hand every complete frame in `data` to the node (as arrived at `now`) and
        queue the replies ready now, holding back the requests past the unsent-reply
        limit (`_serve`); a broken stream queues its error frame last and marks the
        connection closing. Returns whether the connection is closing.
        `hold_peers`: see `_dispatch`."""
        node = self.node
        assert node is not None
        c.received += len(data)
        bodies = decoder.feed(data)
        if decoder.buffered != c.partial:
            self._count_partial(c, decoder.buffered)
        if len(bodies) == 1:  # (the common case: nothing after it to hold back)
            frame = node.client_request(c.conn_id, bodies[0], now)
            if frame is not None:
                c.out.append(frame)
                c.unsent += len(frame)
        elif bodies:
            self._serve(c, bodies, now)
        if not hold_peers or node.has_effects:  # (most requests queue none)
            self._dispatch(hold_peers)
        if (decoder.error is not None or c.shed) and not c.closing and not c.held:
            # (after any requests held back: they came before the break)
            exc = decoder.error or WireError(
                ErrorCode.OVERLOADED, "the node holds too many unfinished frames; send it "
                "again later", fatal=True)
            self._close_with_error(c, exc.code, exc.message)
        return c.closing

    def _close_with_error(self, c: _Connection, code: ErrorCode, message: str) -> None:
        """Queue a connection-level error frame (nil id), the last frame `c` gets, and
        close it (`_close_soon`)."""
        node = self.node
        assert node is not None
        node.counters[f"error_{code.name.lower()}"] += 1
        frame = encode_error(None, code, message)
        c.out.append(frame)
        c.unsent += len(frame)
        self._close_soon(c)

    def _close_soon(self, c: _Connection) -> None:
        """`c` is closing: read no more from it, drop its unfinished frame, and give it
        CLOSING_SEND_S to take what it is owed (renewed while it takes some)."""
        c.closing = True
        self._drop_partial(c)
        c.wake.set()
        if c.scope is not None:
            c.scope.deadline = min(c.scope.deadline, trio.current_time() + CLOSING_SEND_S)

    def _still_closing(self, c: _Connection) -> None:
        """A closing connection took some of what it is owed: renew its time."""
        if c.scope is not None:
            c.scope.deadline = trio.current_time() + CLOSING_SEND_S

    def _drop_partial(self, c: _Connection) -> None:
        if c.decoder is not None:
            c.decoder.discard()
        self._partial_bytes -= c.partial
        c.partial = 0
        c.watch = None

    def _count_partial(self, c: _Connection, held: int) -> None:
        """Account for the bytes of an unfinished frame `c` now holds; one that grows
        past the node's budget for them is refused (`c.shed`)."""
        grew = held > c.partial
        self._partial_bytes += held - c.partial
        c.partial = held
        if not held:
            c.watch = None  # a frame ended: the next one is judged on its own
        if grew and self._partial_bytes > self._partial_budget:
            self._partial_bytes -= held
            c.partial = 0  # (dropped with the connection, which closes)
            c.shed = True

    async def _watch_slow_frames(self) -> None:
        node = self.node
        assert node is not None
        while True:
            await trio.sleep(SLOW_FRAME_CHECK_S)
            if self._partial_bytes:
                try:
                    self._refuse_slow_frames(self._clock())
                except Exception:
                    node.counters["connection_bugs"] += 1
                    log.exception("judging the pace of unfinished frames failed")

    def _refuse_slow_frames(self, now: float) -> None:
        """Judge the pace of every connection holding an unfinished frame, and while
        unfinished frames crowd the budget refuse the slow ones, slowest first, until
        they hold no more than half of it. Not judged: a connection the node stopped
        reading while it works on the requests already read (a client that does not
        read its replies is judged: that pause is its own doing)."""
        node = self.node
        assert node is not None
        max_inflight = self.config.max_inflight_per_connection
        slow: list[tuple[float, int, _Connection]] = []
        for c in list(self._conns.values()):
            if (c.partial < SLOW_FRAME_MIN_HELD or c.closing
                    or node.inflight(c.conn_id) >= max_inflight):
                c.watch = None
                continue
            if c.watch is None:
                c.watch = (now, c.received)
                continue
            since, received = c.watch
            if now - since < SLOW_FRAME_WINDOW_S:
                continue
            pace = (c.received - received) / (now - since)
            if pace < SLOW_FRAME_MIN_BYTES_PER_S:
                slow.append((pace, c.conn_id, c))
            else:
                c.watch = (now, c.received)
        slow.sort()
        for _pace, _id, c in slow:
            if self._partial_bytes <= self._partial_budget // 2:
                c.watch = (now, c.received)  # (judged again over a new window)
                continue
            self._refuse_slow(c)

    def _refuse_slow(self, c: _Connection) -> None:
        """Answer OVERLOADED (nil id), drop the unfinished frame and close."""
        node = self.node
        assert node is not None
        node.counters["slow_frames_refused"] += 1
        self._close_with_error(c, ErrorCode.OVERLOADED, "the node holds too many unfinished "
                               "frames and this one arrives too slowly; send it again later")
        if c.reader_scope is not None:
            c.reader_scope.cancel()

    def _serve(self, c: _Connection, bodies: list[Any], now: float) -> None:
        """Hand `bodies` to the node and queue the replies ready now. Once the replies
        waiting to be sent pass MAX_UNSENT_REPLY_BYTES, the rest are held in `c.held`:
        a few bytes of GETs can ask for megabytes each."""
        node = self.node
        assert node is not None
        request = node.client_request
        conn_id = c.conn_id
        out = c.out
        for i, body in enumerate(bodies):
            frame = request(conn_id, body, now)
            if frame is not None:
                out.append(frame)
                c.unsent += len(frame)
                if c.unsent > MAX_UNSENT_REPLY_BYTES and i + 1 < len(bodies):
                    c.held = bodies[i + 1:]
                    node.counters["requests_held"] += 1
                    return

    def _serve_held(self, c: _Connection, now: float) -> bool:
        """Serve the requests `_serve` held back (some may be held again); returns
        whether the connection is closing."""
        bodies, c.held = c.held, []
        assert c.decoder is not None
        self._serve(c, bodies, now)
        return self._handle_input(c, c.decoder, b"", now)  # (nothing new: the rest of a turn)

    async def _backpressure(self, c: _Connection, max_inflight: int) -> None:
        """Stop reading while too many replies are outstanding or the client is not
        reading what was already sent (until the connection closes, or the poller
        stopped reading it: `_unpoll` wakes the wait)."""
        node = self.node
        assert node is not None
        while ((node.inflight(c.conn_id) >= max_inflight or c.unsent > MAX_UNSENT_REPLY_BYTES)
               and not c.closing and not c.read_done.is_set()):
            if node.inflight(c.conn_id) >= max_inflight:
                c.watch = None  # (the node's own wait: not counted against its pace)
            c.drained = trio.Event()
            await c.drained.wait()

    async def _finish_input(self, c: _Connection) -> None:
        """End of input: wait (bounded) for replies still awaiting a sync."""
        node = self.node
        assert node is not None
        with trio.move_on_after(self.config.request_timeout_s):
            while node.inflight(c.conn_id) and not c.closing:
                c.drained = trio.Event()
                await c.drained.wait()

    async def _polled_reader(self, c: _Connection, sock: socket.socket) -> None:
        """Hand `sock` to the poller and wait until it stops reading it."""
        c.decoder = FrameDecoder(self.config.limits.max_frame_bytes)
        fd = sock.fileno()
        ep = self._epoll
        assert ep is not None
        with trio.CancelScope() as scope:
            c.reader_scope = scope
            self._polled[fd] = c
            ep.register(fd, select.EPOLLIN)
            try:
                await c.read_done.wait()
            finally:
                self._unpoll(c, fd)
        await self._finish_input(c)

    def _unpoll(self, c: _Connection, fd: int) -> None:
        if self._polled.get(fd) is c:
            del self._polled[fd]
            if self._epoll is not None:
                with contextlib.suppress(OSError):  # not in the set while paused
                    self._epoll.unregister(fd)
        c.read_done.set()
        c.drained.set()  # a task waiting to resume reading stops waiting

    async def _poller(self) -> None:
        """Read every client and peer connection from one epoll set.

        trio waits on the set's descriptor only while no connection is ready; under
        load each turn serves every ready connection (up to POLL_BATCH) and yields
        once, instead of a task switch, an epoll re-arm and a wake-up per request.
        Messages for peers go out at the end of the turn, and then the replies, one
        send after another: a client process asleep in its own poll is woken by the
        first and finds the rest ready when it runs, instead of being woken (and
        rescheduled on its core) once per reply while the node is still serving.
        Level-triggered: data left unread is reported again on the next turn. An
        empty set is polled a little longer before trio is asked to sleep on it
        (SpinWindow).
        """
        node = self.node
        assert node is not None
        ep = self._epoll
        assert ep is not None
        poll = ep.poll
        epfd = ep.fileno()
        polled = self._polled
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        spin = SpinWindow(self.config.poll_spin_us * 1e-6)
        clock_now = self._clock
        clock = time.perf_counter
        yield_cpu = os.sched_yield
        while True:
            ready = poll(0, POLL_BATCH)
            if not ready:
                window = spin.window
                if window:
                    # Busy polling (SpinWindow); a process waiting for this core gets it.
                    end = clock() + window
                    while True:
                        yield_cpu()
                        ready = poll(0, POLL_BATCH)
                        if ready or clock() >= end:
                            break
                if not ready:
                    asleep = clock()
                    await wait_readable(epfd)
                    if spin.limit:
                        spin.slept(clock() - asleep + window)
                    continue
            served: list[tuple[_Connection, int, bool]] = []
            now = clock_now()  # one reading for the turn: it takes a fraction of a ms
            for fd, _events in ready:
                c = polled.get(fd)
                if c is not None and not c.paused:
                    try:
                        closing = self._read_ready(c, fd, now)
                    except Exception:
                        self._connection_bug(c, fd)
                    else:
                        if closing is not None:
                            served.append((c, fd, closing))
            # Messages for peers from every connection served this turn, in one frame
            # per peer: fewer frames to split and hand over on the receiving nodes.
            self._dispatch()
            for c, fd, closing in served:
                try:
                    self._reply_ready(c, fd, closing)
                except Exception:
                    self._connection_bug(c, fd)
            await checkpoint()

    def _connection_bug(self, c: _Connection, fd: int) -> None:
        """As in a connection's own task: a bug costs this connection only."""
        node = self.node
        assert node is not None
        node.counters["connection_bugs"] += 1
        log.exception("connection %d failed", c.conn_id)
        c.closing = True
        self._unpoll(c, fd)

    def _read_ready(self, c: _Connection, fd: int, now: float) -> bool | None:
        """Hand what one ready connection sent to the node. Returns None when nothing
        was read (the connection may be unpolled), else whether the connection is
        closing; its replies wait in `c.out` for `_reply_ready`."""
        sock = c.raw
        decoder = c.decoder
        assert sock is not None and decoder is not None
        if c.closing:
            self._unpoll(c, fd)
            return None
        try:
            data = sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return None
        except OSError:
            c.closing = True
            self._unpoll(c, fd)
            return None
        if not data:
            self._drop_partial(c)  # (its rest will never come: not judged)
            self._unpoll(c, fd)
            return None
        # What the node sends to peers goes out once per turn (see _poller).
        return self._handle_input(c, decoder, data, now, hold_peers=True)

    def _reply_ready(self, c: _Connection, fd: int, closing: bool) -> None:
        """Send the replies a served connection is owed, stop reading it if it is
        closing, and pause it while too many replies are outstanding."""
        sock = c.raw
        assert sock is not None
        out = c.out
        if out and not c.sending:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            try:
                n = sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                c.closing = True
                self._unpoll(c, fd)
                return
            if n < len(data):
                out.insert(0, data[n:])
                c.unsent = len(data) - n
                c.wake.set()
            else:
                c.unsent = 0
        elif out:
            c.wake.set()
        if closing:
            self._unpoll(c, fd)
            return
        if self._polled.get(fd) is not c:
            return  # no longer read (not expected within a turn): nothing to pause
        node = self.node
        assert node is not None
        max_inflight = self.config.max_inflight_per_connection
        if (node.inflight(c.conn_id) >= max_inflight or c.unsent > MAX_UNSENT_REPLY_BYTES
                or c.held):
            # Stop reading until the replies owed drain; a task waits for that. Out of
            # the set rather than masked: a hang-up would be reported even when masked.
            c.paused = True
            if node.inflight(c.conn_id) >= max_inflight:
                c.watch = None  # (the node's own wait: not counted against its pace)
            assert self._epoll is not None
            self._epoll.unregister(fd)
            assert self._nursery is not None
            self._nursery.start_soon(self._resume_when_drained, c, fd, max_inflight)

    async def _resume_when_drained(self, c: _Connection, fd: int, max_inflight: int) -> None:
        while True:
            await self._backpressure(c, max_inflight)
            if not c.held or c.closing or self._polled.get(fd) is not c:
                break
            closing = self._serve_held(c, self._clock())
            if c.out:
                c.wake.set()  # the writer task sends them
            if closing:
                self._unpoll(c, fd)
                return
        c.paused = False
        if self._polled.get(fd) is c and self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)  # closing: read and unpolled at once

    async def _raw_writer(self, c: _Connection, sock: socket.socket) -> None:
        wait_writable = trio.lowlevel.wait_writable
        while True:
            await c.wake.wait()
            c.wake = trio.Event()
            while c.out and not c.sending:
                c.sending = True
                data = memoryview(b"".join(c.out))
                c.out.clear()
                try:
                    while data:
                        try:
                            n = sock.send(data)
                        except BlockingIOError:
                            n = 0
                        c.unsent -= n  # the bytes in `data` count until they are sent
                        data = data[n:]
                        if n and c.closing:
                            self._still_closing(c)
                        if data:
                            await wait_writable(sock)
                except OSError:
                    c.closing = True
                    if c.reader_scope is not None:
                        c.reader_scope.cancel()
                    return
                finally:
                    c.sending = False
            c.drained.set()
            if (c.closing or c.reading_done) and not c.out:
                if c.closing and c.reader_scope is not None:
                    c.reader_scope.cancel()
                return

    async def _writer(self, c: _Connection) -> None:
        node = self.node
        assert node is not None
        stream = c.stream
        while True:
            await c.wake.wait()
            c.wake = trio.Event()
            if c.out:
                data = b"".join(c.out) if len(c.out) > 1 else c.out[0]
                c.out.clear()
                try:
                    if len(data) <= CLOSING_SEND_PIECE:
                        await stream.send_all(data)
                        c.unsent -= len(data)  # counted until sent
                    else:  # in pieces: one sent renews the time of a closing connection
                        for i in range(0, len(data), CLOSING_SEND_PIECE):
                            piece = data[i:i + CLOSING_SEND_PIECE]
                            await stream.send_all(piece)
                            c.unsent -= len(piece)
                            if c.closing:
                                self._still_closing(c)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The peer is gone: stop reading from it too.
                    c.closing = True
                    if c.reader_scope is not None:
                        c.reader_scope.cancel()
                    return
            c.drained.set()
            if (c.closing or c.reading_done) and not c.out:
                if c.closing and c.reader_scope is not None:
                    c.reader_scope.cancel()
                return


class _SyncThread:
    """A thread of its own for the engine's fsyncs (group commit).

    Handing a job over and hearing back through a pipe costs about a third of the
    CPU of `trio.to_thread.run_sync` here (49 against 111-163 µs a round trip), and
    a busy node syncs hundreds of times a second. One job at a time. Waiting for a
    job cannot be cancelled, as with `trio.to_thread.run_sync`: the engine must not
    be closed under a running sync. The thread alone closes the pipe's write end,
    so no descriptor it writes to can have been reused.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        self._result: tuple[bool, Any] = (True, None)
        self._busy = False
        self._thread = threading.Thread(target=self._work, name="ringfs-sync", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            while True:
                fn = self._jobs.get()
                if fn is None:
                    return
                try:
                    self._result = (True, fn())
                except BaseException as exc:  # handed back to the caller, raised there
                    self._result = (False, exc)
                try:
                    os.write(self._wfd, b"\0")
                except OSError:
                    return  # the node is shutting down
        finally:
            os.close(self._wfd)

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self._busy:
            raise RuntimeError("one sync at a time")
        self._busy = True
        try:
            self._jobs.put(fn)
            with trio.CancelScope(shield=True):
                while True:
                    try:
                        os.read(self._rfd, 1)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(self._rfd)
        finally:
            self._busy = False
        ok, value = self._result
        self._result = (True, None)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._jobs.put(None)
        os.close(self._rfd)


class _PeerClosed(Exception):
    """A peer closed or refused our outbound connection."""


_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                     trio.TooSlowError, _PeerClosed)


def _only_transport_errors(exc: BaseException) -> bool:
    """Whether `exc` (or every leaf of an exception group) is an ordinary network failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_transport_errors(e) for e in exc.exceptions)
    return isinstance(exc, _TRANSPORT_ERRORS)


def serve_config(config: NodeConfig) -> Any:
    """Entry point for `ringfs node`: run a NodeServer until SIGINT or SIGTERM."""
    import signal

    async def main() -> None:
        server = NodeServer(config)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                async def serve_then_stop(task_status: trio.TaskStatus[Any]) -> None:
                    await server.serve(task_status=task_status)
                    nursery.cancel_scope.cancel()  # the node left the cluster (LEAVE)

                await nursery.start(serve_then_stop)

                async def watch() -> None:
                    async for sig in signals:
                        if sig == signal.SIGHUP:
                            server.reload_keyring()
                            continue
                        log.info("received %s, leaving the cluster and shutting down",
                                 signal.Signals(sig).name)
                        await server.leave()
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch)

    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(main)
