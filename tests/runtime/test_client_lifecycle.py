"""The client's connections under timeouts, cancellation and closing.

A request that never left must fail alone; one cut off part-way through its frame
must take its connection down with it (the node can no longer find the next
frame); nothing a request leaves behind may outlive it; and closing a client, or
dropping a blocking one, must leave no tasks, sockets or threads running.
Everything on trio's autojump clock except the blocking Client, which has its own
thread and trio run and so talks to a real socket.
"""

from __future__ import annotations

import gc
import socket
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from ringfs.client import AsyncClient, Client
from ringfs.config import Durability, NodeConfig
from ringfs.errors import (
    ErrorCode,
    LocalProtocolError,
    RequestTimeout,
    RingfsError,
    ServerError,
    Unavailable,
)
from ringfs.runtime.server import NodeServer
from ringfs.wire import ERROR, FrameDecoder, Op, encode_frame, encode_response


class SlowStream(trio.abc.Stream):
    """A stream to a node whose sends take `send_s` seconds; with `stall`, a send puts
    half its bytes on the wire, then waits an hour before the rest."""

    def __init__(self, inner: trio.abc.Stream, send_s: float = 0.0) -> None:
        self.inner = inner
        self.send_s = send_s
        self.stall = False
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.stall:
            half = len(data) // 2
            await self.inner.send_all(data[:half])
            await trio.sleep(3600)
            await self.inner.send_all(data[half:])
            return
        await trio.sleep(self.send_s)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


@pytest.fixture
async def server(nursery: trio.Nursery) -> NodeServer:
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("none")))
    await nursery.start(partial(srv.serve, listen=False))
    return srv


def slow_connector(srv: NodeServer, nursery: trio.Nursery,
                   streams: list[SlowStream]) -> Callable[[str], Any]:
    async def connect(address: str) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(srv.handle_stream, server_side)
        s = SlowStream(client_side)
        streams.append(s)
        return s

    return connect


@pytest.fixture
async def slow(server: NodeServer, nursery: trio.Nursery
               ) -> AsyncIterator[tuple[AsyncClient, list[SlowStream]]]:
    """A client with one connection open, and the streams it opened."""
    streams: list[SlowStream] = []
    async with AsyncClient("n1:1", connect=slow_connector(server, nursery, streams)) as c:
        await c.ping()
        yield c, streams


async def test_a_request_timing_out_before_it_is_sent_fails_alone(
    autojump_clock: MockClock, slow: tuple[AsyncClient, list[SlowStream]]
) -> None:
    c, streams = slow
    streams[0].send_s = 1.0  # each send now holds the connection's send lock 1 s
    results: dict[str, Any] = {}

    async def put() -> None:
        results["put"] = await c.put("k", b"v")

    async def ping() -> None:
        try:
            await c.ping(timeout_s=0.5)  # queued behind the put's send all along
        except RingfsError as exc:
            results["ping"] = exc

    async with trio.open_nursery() as n:
        n.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(ping)
    assert isinstance(results["ping"], RequestTimeout)
    assert results["ping"].details.get("executed") is False
    assert isinstance(results["put"], bytes)  # the put went through
    streams[0].send_s = 0.0
    assert (await c.get("k")).values == [b"v"]
    assert len(streams) == 1 and not streams[0].closed  # the connection survived


async def test_a_send_cut_off_by_the_caller_takes_its_connection_down(
    autojump_clock: MockClock, slow: tuple[AsyncClient, list[SlowStream]]
) -> None:
    c, streams = slow
    streams[0].stall = True
    with trio.move_on_after(1):  # the caller gives up with half the frame sent
        await c.put("k", b"x" * 1000)
    # The node still waits for the rest of that frame: the next request must go over
    # a new connection, not be read as the missing half.
    assert streams[0].closed
    await c.put("k2", b"v")
    assert (await c.get("k2")).values == [b"v"]
    assert len(streams) == 2
    assert all(not conn.pending for conn in c._conns.values())


async def test_requests_cancelled_by_their_callers_leave_nothing_behind(
    autojump_clock: MockClock, slow: tuple[AsyncClient, list[SlowStream]]
) -> None:
    c, streams = slow
    streams[0].send_s = 1.0
    async with trio.open_nursery() as outer:
        outer.start_soon(c.put, "k", b"v")  # holds the send lock for a second
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as n:
            for i in range(50):  # queued behind the put, then cancelled
                n.start_soon(partial(c.get, f"k{i}", timeout_s=10))
            await trio.sleep(0.5)
            n.cancel_scope.cancel()
    conn = c._conns["n1:1"]
    assert conn.pending == {} and conn.broken is None
    streams[0].send_s = 0.0
    assert (await c.get("k")).values == [b"v"]
    assert len(streams) == 1


async def test_a_failed_handshake_closes_its_connection(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    opened: list[SlowStream] = []

    async def silent(address: str) -> trio.abc.Stream:
        a, b = trio.testing.memory_stream_pair()
        nursery.start_soon(b.receive_some)  # accepts the HELLO, never answers
        s = SlowStream(a)
        opened.append(s)
        return s

    async with AsyncClient("n1:1", connect=silent, timeout_s=1, retries=3) as c:
        for _ in range(5):
            with pytest.raises(Unavailable):
                await c.ping()
        assert len(opened) >= 5 and all(s.closed for s in opened)
        assert not c._live and not c._conns


async def test_the_blocks_own_exceptions_come_out_as_raised(
    autojump_clock: MockClock, server: NodeServer, nursery: trio.Nursery
) -> None:
    connect = slow_connector(server, nursery, [])
    with pytest.raises(ServerError) as ei:
        async with AsyncClient("n1:1", connect=connect) as c:
            await c.put("", b"v")  # an empty key: refused by the node
    assert ei.value.code == ErrorCode.KEY_TOO_LARGE
    with pytest.raises(KeyError):
        async with AsyncClient("n1:1", connect=connect) as c:
            await c.ping()
            raise KeyError("the caller's own")


async def test_closing_inside_the_block_fails_calls_without_cancelling_the_caller(
    autojump_clock: MockClock, server: NodeServer, nursery: trio.Nursery
) -> None:
    streams: list[SlowStream] = []
    reached = False
    failures: list[BaseException] = []

    async def scenario() -> None:
        nonlocal reached
        async with AsyncClient("n1:1", connect=slow_connector(server, nursery, streams)) as c:
            await c.ping()
            streams[0].send_s = 3600  # a put that would wait an hour

            async def put() -> None:
                try:
                    await c.put("k", b"v", timeout_s=7200)
                except RingfsError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as n:
                n.start_soon(put)
                await trio.testing.wait_all_tasks_blocked()
                await c.aclose()
            await trio.sleep(1)  # the block goes on after aclose
            reached = True
            with pytest.raises(LocalProtocolError, match="closed"):
                await c.ping()

    try:
        await scenario()
    except BaseException as exc:  # a Cancelled escaping is the failure
        pytest.fail(f"the caller's block was cut short: {exc!r}")
    assert reached
    assert len(failures) == 1 and isinstance(failures[0], Unavailable)
    assert "outcome is unknown" in str(failures[0])


async def test_error_details_the_client_cannot_name_are_dropped(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    async def odd(address: str) -> trio.abc.Stream:
        a, b = trio.testing.memory_stream_pair()

        async def serve() -> None:
            dec = FrameDecoder(1 << 20)
            while data := await b.receive_some():
                for body in dec.feed(data):
                    if body[2] == Op.HELLO:
                        await b.send_all(encode_response(body[1], {"node": "x", "version": 1}))
                    else:
                        await b.send_all(encode_frame([ERROR, body[1], {
                            "code": int(ErrorCode.BAD_CONTEXT), "message": "odd",
                            b"raw": 1, "hint": "kept"}]))

        nursery.start_soon(serve)
        return a

    async with AsyncClient("n1:1", connect=odd) as c:
        with pytest.raises(ServerError) as ei:
            await c.get("k")
    assert ei.value.details == {"hint": "kept"}


async def test_client_argument_checks(autojump_clock: MockClock) -> None:
    for bad in ({"timeout_s": 0}, {"timeout_s": float("nan")}, {"timeout_s": True},
                {"backoff_base_s": -1}, {"backoff_max_s": float("inf")}, {"retries": -1},
                {"retries": 10**6}, {"connect_timeout_s": -2}):
        with pytest.raises(LocalProtocolError):
            AsyncClient("n1:1", **bad)
    for addr in ("::1", "fe80::1", "2001:db8::7001"):
        with pytest.raises(LocalProtocolError):
            AsyncClient(addr)
    async with AsyncClient(["a:1", "b:2"], connect=None) as c:
        with pytest.raises(LocalProtocolError, match="one node"):
            await c.leave()
        with pytest.raises(LocalProtocolError):
            await c.ping(timeout_s=0)
        with pytest.raises(LocalProtocolError, match="Unicode"):
            await c.get("\udc80")


# -- the blocking Client, on its own thread and trio run --------------------------

def _silent_listener() -> tuple[socket.socket, threading.Event]:
    """A TCP listener that accepts connections and never answers a byte."""
    ln = socket.socket()
    ln.bind(("127.0.0.1", 0))
    ln.listen(16)
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = ln.accept()
            except OSError:
                return
            held.append(conn)
            accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    return ln, accepted


def test_a_dropped_client_stops_its_thread() -> None:
    c = Client("127.0.0.1:1")
    runner = c._runner
    assert runner.thread.is_alive()
    del c
    gc.collect()
    runner.thread.join(timeout=10)
    assert not runner.thread.is_alive()


def test_closing_a_client_fails_other_threads_calls_with_ringfs_errors() -> None:
    ln, accepted = _silent_listener()
    try:
        c = Client(f"127.0.0.1:{ln.getsockname()[1]}", timeout_s=60, connect_timeout_s=60)
        outcomes: list[BaseException | None] = []

        def call() -> None:
            try:
                c.get("k")
                outcomes.append(None)
            except BaseException as exc:  # whatever escapes is the finding
                outcomes.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        assert accepted.wait(10)  # the calls are in flight: the handshake hangs
        c.close()
        for t in threads:
            t.join(10)
        assert len(outcomes) == 4
        assert all(isinstance(e, RingfsError) for e in outcomes), outcomes
        with pytest.raises(LocalProtocolError, match="closed"):
            c.ping()
    finally:
        ln.close()
