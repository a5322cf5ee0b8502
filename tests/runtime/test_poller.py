"""The server's poller over real TCP sockets on the loopback interface.

Client connections whose stream is a socket are read by one poller task from an
epoll set (see NodeServer._poller); the in-memory streams of the other runtime
tests take the per-connection reader instead. These tests use the real clock:
every wait is for the kernel, bounded by `fail_after`, never a sleep.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from ringfs.config import Durability, NodeConfig
from ringfs.errors import ErrorCode
from ringfs.runtime import server as server_module
from ringfs.runtime.server import SPIN_START_S, NodeServer, SpinWindow
from ringfs.wire import RESPONSE, FrameDecoder, Op, encode_request

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="the poller needs epoll")

LIMIT_S = 20


async def start(nursery: trio.Nursery, **overrides: Any) -> NodeServer:
    cfg = NodeConfig(name="n1", listen="127.0.0.1:0", gossip="off", log_level="warning",
                     **overrides)
    srv = NodeServer(cfg)
    await nursery.start(srv.serve)
    return srv


@pytest.fixture
async def mem_server(nursery: trio.Nursery) -> NodeServer:
    return await start(nursery, engine="memory", durability=Durability("group"))


async def connect(srv: NodeServer) -> trio.SocketStream:
    assert srv.address is not None
    stream = await trio.open_tcp_stream(*srv.address)
    await stream.send_all(encode_request(0, Op.HELLO, {"versions": [1]}))
    return stream


async def replies(stream: trio.SocketStream, count: int) -> list[Any]:
    """Read `count` reply frames (the HELLO reply excluded once seen)."""
    dec = FrameDecoder(1 << 24)
    out: list[Any] = []
    while len(out) < count:
        data = await stream.receive_some()
        if not data:
            break
        out.extend(body for body in dec.feed(data) if body[1] != 0)
    return out


def puts(ids: range) -> bytes:
    """Pipelined PUT frames, request id i writing key b"k<i>"."""
    return b"".join(encode_request(i, Op.PUT, {"key": b"k%d" % i, "value": b"v"}) for i in ids)


async def test_many_connections_pipelining(mem_server: NodeServer) -> None:
    with trio.fail_after(LIMIT_S):
        streams = [await connect(mem_server) for _ in range(20)]
        results: dict[int, list[Any]] = {}

        async def run(i: int, stream: trio.SocketStream) -> None:
            frames = b"".join(
                encode_request(2 * j + 1, Op.PUT, {"key": b"k%d-%d" % (i, j), "value": b"v%d" % j})
                + encode_request(2 * j + 2, Op.GET, {"key": b"k%d-%d" % (i, j)})
                for j in range(100))
            await stream.send_all(frames)
            results[i] = await replies(stream, 200)

        async with trio.open_nursery() as n:
            for i, s in enumerate(streams):
                n.start_soon(run, i, s)
    for i in range(20):
        got = {body[1]: body for body in results[i]}
        assert sorted(got) == list(range(1, 201))
        for j in range(100):
            assert got[2 * j + 1][0] == RESPONSE
            get = got[2 * j + 2]
            assert get[0] == RESPONSE and get[2]["values"] == [b"v%d" % j]
    for s in streams:
        await s.aclose()


@pytest.fixture
async def slow_sync_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[NodeServer]:
    """A log engine acknowledging puts only after a group-commit sync, and a limit of
    two requests in flight per connection: pipelined puts make the poller pause."""
    srv = await start(nursery, engine="log", data_dir=str(tmp_path),
                      durability=Durability("group"), max_inflight_per_connection=2)
    yield srv


def count_pauses(srv: NodeServer) -> list[int]:
    pauses: list[int] = []
    original: Callable[..., Awaitable[None]] = srv._resume_when_drained

    async def counting(*args: Any) -> None:
        pauses.append(1)
        await original(*args)

    srv._resume_when_drained = counting  # type: ignore[method-assign]
    return pauses


async def test_backpressure_pauses_and_resumes(slow_sync_server: NodeServer) -> None:
    srv = slow_sync_server
    pauses = count_pauses(srv)
    with trio.fail_after(LIMIT_S):
        stream = await connect(srv)
        # Fifty puts in flight: the connection is paused once they are read...
        await stream.send_all(puts(range(1, 51)))
        got = await replies(stream, 50)
        assert pauses, "the connection was never paused"
        # ...and read again once their replies went out: fifty more are answered.
        await stream.send_all(puts(range(51, 101)))
        got += await replies(stream, 50)
    assert sorted(body[1] for body in got) == list(range(1, 101))
    assert all(body[0] == RESPONSE for body in got)
    assert pauses, "the connection was never paused"
    assert srv.node is not None and srv.node.engine.get(b"k100") is not None
    await stream.aclose()


async def test_disconnect_while_paused_leaves_nothing_behind(
        slow_sync_server: NodeServer) -> None:
    srv = slow_sync_server
    pauses = count_pauses(srv)
    with trio.fail_after(LIMIT_S):
        stream = await connect(srv)
        await stream.send_all(puts(range(1, 201)))
        await replies(stream, 1)
        await stream.aclose()
        assert srv._nursery is not None

        def resumers() -> list[str]:
            assert srv._nursery is not None
            return [t.name for t in srv._nursery.child_tasks if "resume" in t.name]

        while srv._conns or srv._polled or resumers():
            await trio.sleep(0.01)  # waits for the server's own tasks, not for time
        assert pauses
        # The node serves the next client as before.
        other = await connect(srv)
        await other.send_all(encode_request(1, Op.GET, {"key": b"k1"}))
        (body,) = await replies(other, 1)
        assert body[0] == RESPONSE
        await other.aclose()


async def test_garbage_closes_only_its_connection(mem_server: NodeServer) -> None:
    with trio.fail_after(LIMIT_S):
        good = await connect(mem_server)
        bad = await connect(mem_server)
        await bad.send_all(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # 0xc1: never valid msgpack
        dec = FrameDecoder(1 << 20)
        frames: list[Any] = []
        while True:
            data = await bad.receive_some()
            if not data:
                break
            frames.extend(dec.feed(data))
        assert frames[-1][0] != RESPONSE
        assert frames[-1][2]["code"] == int(ErrorCode.BAD_FRAME), frames
        await bad.aclose()
        await good.send_all(encode_request(1, Op.PUT, {"key": b"k", "value": b"v"}))
        (body,) = await replies(good, 1)
        assert body[0] == RESPONSE
        await good.aclose()


async def bad_and_good_connection(srv: NodeServer, victim: list[int]) -> list[int]:
    """Open two connections, put the second's id in `victim` and send a GET on each:
    the second must be closed and the first served as usual. Returns the request ids
    the victim received replies for before it was closed."""
    with trio.fail_after(LIMIT_S):
        good = await connect(srv)
        bad = await connect(srv)
        dec = FrameDecoder(1 << 20)
        seen: list[Any] = []
        while not seen:  # the HELLO reply: the connection is registered by now
            seen.extend(dec.feed(await bad.receive_some()))
        victim.append(max(srv._conns))
        await bad.send_all(encode_request(1, Op.GET, {"key": b"k"}))
        while data := await bad.receive_some():
            seen.extend(dec.feed(data))
        await bad.aclose()
        await good.send_all(encode_request(1, Op.GET, {"key": b"k"}))
        (body,) = await replies(good, 1)
        assert body[0] == RESPONSE
    assert srv.node is not None and srv.node.counters["connection_bugs"] == 1
    await good.aclose()
    return [body[1] for body in seen]


async def test_a_bug_while_reading_costs_one_connection(mem_server: NodeServer) -> None:
    srv = mem_server
    original = srv._handle_input
    victim: list[int] = []

    def failing(c: Any, decoder: FrameDecoder, data: bytes | bytearray, now: float,
                **kw: Any) -> bool:
        if c.conn_id in victim:
            raise RuntimeError("injected")
        return original(c, decoder, data, now, **kw)

    srv._handle_input = failing  # type: ignore[method-assign]
    # Closed without answering request 1.
    assert await bad_and_good_connection(srv, victim) == [0]


def raw_connect(srv: NodeServer) -> socket.socket:
    """A plain non-blocking socket, so that the test can send on several connections
    without yielding to the poller in between."""
    assert srv.address is not None
    sock = socket.create_connection(srv.address[:2])
    sock.setblocking(False)
    sock.send(encode_request(0, Op.HELLO, {"versions": [1]}))
    return sock


async def raw_replies(sock: socket.socket, count: int) -> list[Any]:
    dec = FrameDecoder(1 << 20)
    out: list[Any] = []
    while len(out) < count:
        await trio.lowlevel.wait_readable(sock)
        data = sock.recv(65536)
        if not data:
            break
        out.extend(dec.feed(data))
    return out


def readable_now(sock: socket.socket) -> bool:
    """Whether a reply already waits on `sock` (loopback delivers at send)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


async def test_a_turn_serves_every_ready_connection_before_replying(
        mem_server: NodeServer) -> None:
    """Replies go out after every ready connection was served, not one by one: a
    client asleep in its poll is woken once a turn (see NodeServer._poller)."""
    srv = mem_server
    events: list[tuple[str, int]] = []
    read, reply = srv._read_ready, srv._reply_ready
    socks: list[socket.socket] = []
    early: list[int] = []  # per read: how many clients could already read a reply

    def reading(c: Any, fd: int, now: float) -> bool | None:
        events.append(("read", c.conn_id))
        closing = read(c, fd, now)
        early.append(sum(1 for sock in socks if readable_now(sock)))
        return closing

    def replying(c: Any, fd: int, closing: bool) -> None:
        events.append(("reply", c.conn_id))
        reply(c, fd, closing)

    srv._read_ready = reading  # type: ignore[method-assign]
    srv._reply_ready = replying  # type: ignore[method-assign]
    socks.extend(raw_connect(srv) for _ in range(3))
    try:
        with trio.fail_after(LIMIT_S):
            for sock in socks:
                assert [body[1] for body in await raw_replies(sock, 1)] == [0]
            events.clear()
            early.clear()
            for sock in socks:  # no checkpoint in between: all ready at the next turn
                sock.send(encode_request(1, Op.GET, {"key": b"k"}))
            for sock in socks:
                (body,) = await raw_replies(sock, 1)
                assert body[0] == RESPONSE and body[1] == 1
    finally:
        for sock in socks:
            sock.close()
    assert [kind for kind, _ in events] == ["read"] * 3 + ["reply"] * 3, events
    assert sorted(conn for _, conn in events[:3]) == sorted(conn for _, conn in events[3:])
    assert early == [0, 0, 0]  # nothing was sent while the turn was still reading


async def test_a_bug_while_replying_costs_one_connection(mem_server: NodeServer) -> None:
    srv = mem_server
    original = srv._reply_ready
    victim: list[int] = []

    def failing(c: Any, fd: int, closing: bool) -> None:
        if c.conn_id in victim:
            raise RuntimeError("injected")
        original(c, fd, closing)

    srv._reply_ready = failing  # type: ignore[method-assign]
    # Closed, with or without the reply already made.
    assert await bad_and_good_connection(srv, victim) in ([0], [0, 1])


async def test_frames_to_a_peer_arrive_whole_and_in_order(mem_server: NodeServer) -> None:
    """Frames for a peer queued while its link connects, while it is idle and while
    it is busy with a send the socket did not take whole arrive whole and in order."""
    srv = mem_server
    received = bytearray()
    got_all = trio.Event()
    sizes = [10, 8_000_000, 20, 500_000, 7, 8_000_000] + [30 + i for i in range(200)]
    frames = [i.to_bytes(4, "big") + bytes([i % 251]) * (n - 4 if n > 4 else 0)
              for i, n in enumerate(sizes)]
    want = sum(len(f) for f in frames)

    async def fake_peer(stream: trio.SocketStream) -> None:
        await trio.sleep(0.2)  # let the socket buffers fill first
        while len(received) < want + 1:
            data = await stream.receive_some(1 << 20)
            if not data:
                break
            received.extend(data)
            if len(received) >= want:
                got_all.set()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(trio.serve_tcp, fake_peer, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            address = f"127.0.0.1:{port}"
            srv._send_peer(address, frames[0])  # queued while the link connects
            while srv._peers[address].queue:
                await trio.sleep(0.01)  # waits for the link's task, not for time
            for i, frame in enumerate(frames[1:]):
                srv._send_peer(address, frame)
                if i % 3 == 2:
                    await trio.sleep(0)
            while not got_all.is_set() or len(received) < want:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    dec = FrameDecoder(1 << 24)
    hello, *rest = dec.feed(bytes(received[:received.index(frames[0])]))
    assert not rest and hello[2] == int(Op.HELLO)
    assert bytes(received[received.index(frames[0]):]) == b"".join(frames)


# -- busy polling --------------------------------------------------------------------

def test_spin_window_grows_while_gaps_are_short() -> None:
    spin = SpinWindow(50e-6)
    assert spin.window == 0
    seen = []
    for _ in range(4):
        spin.slept(spin.window + 5e-6)  # a window 5 us longer would have caught it
        seen.append(round(spin.window * 1e6, 6))
    assert seen == [10, 20, 40, 50]
    spin.slept(spin.window + 5e-6)  # beyond the limit: no window would do
    assert spin.window == 25e-6


def test_spin_window_shrinks_to_nothing_on_long_gaps() -> None:
    spin = SpinWindow(50e-6)
    spin.window = 50e-6
    seen = []
    for _ in range(4):
        spin.slept(spin.window + 1e-3)
        seen.append(round(spin.window * 1e6, 6))
    assert seen == [25, 12.5, 0, 0]


def test_no_busy_polling_at_limit_zero() -> None:
    spin = SpinWindow(0.0)
    for gap in (0.0, 1e-6, 1e-3):
        spin.slept(gap)
        assert spin.window == 0


@given(st.floats(0, 1e-2), st.lists(st.floats(0, 1e-2), max_size=60))
def test_spin_window_stays_in_bounds(limit: float, gaps: list[float]) -> None:
    spin = SpinWindow(limit)
    for gap in gaps:
        before = spin.window
        spin.slept(gap)
        assert 0 <= spin.window <= limit
        assert spin.window == 0 or spin.window >= min(SPIN_START_S, limit)
        if gap > limit:
            assert spin.window <= before  # a long gap never lengthens the window
        else:
            assert spin.window >= before  # a short one never shortens it


@pytest.mark.parametrize("spin_us", [0, 10_000])
async def test_one_request_at_a_time_from_another_thread(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, spin_us: int) -> None:
    """A client that waits for each reply before sending its next request: with a
    generous window the poller catches requests while polling (it yields the CPU
    as it does), without one it sleeps for each; every reply arrives either way."""
    yields: list[int] = []
    real_yield = os.sched_yield

    def counting_yield() -> None:
        yields.append(1)
        real_yield()

    monkeypatch.setattr(server_module.os, "sched_yield", counting_yield)
    srv = await start(nursery, engine="memory", durability=Durability("group"),
                      poll_spin_us=spin_us)
    assert srv.address is not None
    got: list[Any] = []

    def client() -> None:
        with socket.create_connection(srv.address[:2], timeout=LIMIT_S) as s:
            dec = FrameDecoder(1 << 24)
            s.sendall(encode_request(0, Op.HELLO, {"versions": [1]}))
            pending: list[Any] = []
            while not pending:
                pending.extend(dec.feed(s.recv(65536)))
            for i in range(1, 201):
                if i % 2:
                    s.sendall(encode_request(i, Op.PUT, {"key": b"k%d" % i, "value": b"v%d" % i}))
                else:
                    s.sendall(encode_request(i, Op.GET, {"key": b"k%d" % (i - 1)}))
                reply: list[Any] = []
                while not reply:
                    data = s.recv(65536)
                    if not data:
                        return
                    reply.extend(dec.feed(data))
                got.extend(reply)

    with trio.fail_after(LIMIT_S):
        await trio.to_thread.run_sync(client)
    assert [body[1] for body in got] == list(range(1, 201))
    for body in got:
        assert body[0] == RESPONSE
        if body[1] % 2 == 0:  # each GET reads the PUT sent just before it
            assert body[2]["values"] == [b"v%d" % (body[1] - 1)]
    if spin_us:
        assert yields
    else:
        assert not yields


async def test_requests_for_large_replies_wait_while_the_client_does_not_read(
        mem_server: NodeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few bytes of GETs can ask for megabytes of replies; a client that does not
    read them gets no more than the unsent-reply limit queued (plus a reply), and every
    request is still answered, in order, once it reads."""
    limit = 256 * 1024
    monkeypatch.setattr(server_module, "MAX_UNSENT_REPLY_BYTES", limit)
    srv = mem_server
    assert srv.node is not None
    value = os.urandom(64 * 1024)
    with trio.fail_after(LIMIT_S):
        stream = await connect(srv)
        await stream.send_all(encode_request(1, Op.PUT, {"key": b"big", "value": value}))
        await replies(stream, 1)
        # 300 GETs, about 6 KiB of requests for about 19 MiB of replies, never read.
        await stream.send_all(b"".join(encode_request(i, Op.GET, {"key": b"big"})
                                       for i in range(2, 302)))
        (c,) = srv._conns.values()
        while not getattr(c, "held", None) and srv.node.counters["get"] < 300:
            await trio.sleep(0.01)  # waits for the server's own work, not for time
        await trio.testing.wait_all_tasks_blocked()
        # Served: what the kernel's socket buffers took, and up to the limit more.
        assert srv.node.counters["get"] < 300
        assert c.unsent <= limit + len(value) + 1024
        assert c.held  # the rest wait, unserved
        other = await connect(srv)  # the node serves others meanwhile
        await other.send_all(encode_request(1, Op.PING, {}))
        assert (await replies(other, 1))[0][0] == RESPONSE
        got = await replies(stream, 300)
    assert [body[1] for body in got] == list(range(2, 302))
    assert all(body[0] == RESPONSE and body[2]["values"] == [value] for body in got)
    assert not c.held
    await stream.aclose()
    await other.aclose()


@pytest.mark.parametrize(("soft", "hard", "expect_soft", "expect_fit"), [
    (1024, 1 << 20, 2 * 1024 + 256, 1024),  # raised to what 1024 connections need
    (1024, 1024, 1024, (1024 - 256) // 2),  # the hard limit stops it: fewer fit
    (1 << 20, 1 << 20, 1 << 20, 1024),  # already enough
    (100, 100, 100, 1),  # hardly any room: one connection, and a warning
])
def test_the_open_file_limit_is_fitted_to_max_connections(
        monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, expect_soft: int,
        expect_fit: int) -> None:
    import resource

    limits = {"now": (soft, hard)}

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE and value[1] == hard
        if value[0] > hard:
            raise ValueError("not allowed")
        limits["now"] = value

    monkeypatch.setattr(resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert server_module.fit_open_files(1024) == expect_fit
    assert limits["now"][0] == expect_soft


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_a_node_listens_on_an_ipv6_address(nursery: trio.Nursery) -> None:
    cfg = NodeConfig(name="n1", listen="[::1]:0", gossip="lan", log_level="warning",
                     engine="memory")
    srv = NodeServer(cfg)
    with trio.fail_after(LIMIT_S):
        await nursery.start(srv.serve)
        assert srv.address is not None and srv.address[0] == "::1"
        stream = await connect(srv)
        await stream.send_all(encode_request(1, Op.PING, {}))
        assert (await replies(stream, 1))[0][0] == RESPONSE
        # A datagram from an IPv6 peer names it in brackets, as an address is written.
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"not gossip", ("::1", srv.address[1]))
        await stream.send_all(encode_request(2, Op.PING, {}))
        assert (await replies(stream, 1))[0][0] == RESPONSE
        await stream.aclose()


async def test_slow_unfinished_frames_are_refused_on_polled_connections(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller's side of the rule test_client_server.py checks in full: stalled
    frames that crowd the budget are refused OVERLOADED and closed until they no
    longer fill more than half of it, and the node serves others meanwhile.
    (Windows shortened: real time here.)"""
    from ringfs.wire import ERROR, Limits

    monkeypatch.setattr(server_module, "MAX_PARTIAL_FRAME_BYTES", 64 * 1024)
    monkeypatch.setattr(server_module, "SLOW_FRAME_WINDOW_S", 0.3)
    monkeypatch.setattr(server_module, "SLOW_FRAME_CHECK_S", 0.05)
    srv = await start(nursery, engine="memory", durability=Durability("none"),
                      limits=Limits(max_frame_bytes=512 * 1024, max_value_bytes=400 * 1024))
    assert srv.node is not None
    frame = encode_request(2, Op.PUT, {"key": b"k", "value": b"x" * 350_000})
    streams: list[trio.SocketStream] = []
    try:
        with trio.fail_after(LIMIT_S):
            # Three stalled frames of 300,000 bytes against a budget of 1 MiB: two go.
            for _ in range(3):
                streams.append(await connect(srv))
                await streams[-1].send_all(frame[:300_000])
            other = await connect(srv)
            streams.append(other)
            await other.send_all(encode_request(1, Op.PING, {}))
            assert (await replies(other, 1))[0][0] == RESPONSE
            while srv.node.counters["slow_frames_refused"] < 2:
                await trio.sleep(0.05)  # (the node's own pace: windows of 0.3 s)
            await trio.sleep(3 * server_module.SLOW_FRAME_WINDOW_S)  # and no more than two
            assert srv.node.counters["slow_frames_refused"] == 2
            assert srv._partial_bytes == 300_000
            refused = 0
            for s in streams[:3]:
                with trio.move_on_after(1):
                    got = await replies(s, 1)
                    assert got[0][0] == ERROR and got[0][2]["name"] == "OVERLOADED", got
                    assert await s.receive_some() == b""  # and closed
                    refused += 1
            assert refused == 2
    finally:
        for s in streams:
            await s.aclose()
