"""Client and server together over in-memory streams, on trio's autojump clock.

Every test takes `autojump_clock`: timeouts and backoffs cost no wall time.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from ringfs.client import AsyncClient
from ringfs.config import Durability, NodeConfig
from ringfs.errors import ErrorCode, LocalProtocolError, ServerError, Unavailable
from ringfs.runtime import server as server_module
from ringfs.runtime.server import NodeServer
from ringfs.wire import ERROR, RESPONSE, FrameDecoder, Op, encode_request


@pytest.fixture
async def server(nursery: trio.Nursery) -> NodeServer:
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("group")))
    await nursery.start(partial(srv.serve, listen=False))
    return srv


def connector(srv: NodeServer, nursery: trio.Nursery) -> Callable[[str], object]:
    async def connect(address: str) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(srv.handle_stream, server_side)
        return client_side

    return connect


@pytest.fixture
async def client(server: NodeServer, nursery: trio.Nursery) -> AsyncIterator[AsyncClient]:
    async with AsyncClient("n1:7001", connect=connector(server, nursery)) as c:  # type: ignore[arg-type]
        yield c


async def test_put_get_delete(autojump_clock: MockClock, client: AsyncClient) -> None:
    await client.put("k", b"v1")
    r = await client.get(b"k")
    assert r.values == [b"v1"] and r.value == b"v1"
    await client.put("k", b"v2", r.context)
    assert (await client.get("k")).values == [b"v2"]
    await client.delete("k")
    r = await client.get("k")
    assert not r.found and r.value is None


async def test_siblings_through_the_client(autojump_clock: MockClock, client: AsyncClient) -> None:
    await client.put("k", b"base")
    ctx = (await client.get("k")).context
    await client.put("k", b"a", ctx)
    await client.put("k", b"b", ctx)
    r = await client.get("k")
    assert sorted(r.values) == [b"a", b"b"]
    with pytest.raises(LocalProtocolError):
        _ = r.value
    await client.put("k", b"merged", r.context)
    assert (await client.get("k")).values == [b"merged"]


async def test_an_lww_key_reads_as_its_newest_write(autojump_clock: MockClock,
                                                    nursery: trio.Nursery) -> None:
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("group"),
                                lww_prefixes=("lww/",)))
    await nursery.start(partial(srv.serve, listen=False))
    async with AsyncClient("n1:7001", connect=connector(srv, nursery)) as c:  # type: ignore[arg-type]
        for key in ("lww/k", "k"):
            await c.put(key, b"base")
            ctx = (await c.get(key)).context
            await c.put(key, b"a", ctx)
            await c.put(key, b"b", ctx)  # concurrent with "a": neither saw the other
        assert (await c.get("lww/k")).values == [b"b"]
        assert sorted((await c.get("k")).values) == [b"a", b"b"]
        await c.put("lww/k", b"blind")
        assert (await c.get("lww/k")).values == [b"blind"]


async def test_many_concurrent_requests_share_one_connection(
    autojump_clock: MockClock, client: AsyncClient
) -> None:
    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(client.put, f"k{i}", b"v%d" % i)
    results: dict[int, bytes] = {}

    async def read(i: int) -> None:
        results[i] = (await client.get(f"k{i}")).values[0]

    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(read, i)
    assert results == {i: b"v%d" % i for i in range(200)}
    assert len(client._conns) == 1


async def test_server_errors_surface_with_codes(
    autojump_clock: MockClock, client: AsyncClient
) -> None:
    with pytest.raises(ServerError) as ei:
        await client.put("k" * 5000, b"v")
    assert ei.value.code == ErrorCode.KEY_TOO_LARGE
    await client.ping()  # the connection survived


async def test_responses_out_of_order_on_one_connection(
    autojump_clock: MockClock, server: NodeServer, nursery: trio.Nursery
) -> None:
    stream = await connector(server, nursery)("n1:7001")  # type: ignore[misc]
    dec = FrameDecoder(1 << 20)
    await stream.send_all(encode_request(1, Op.HELLO, {"versions": [1]}))
    # A put waits for its group-commit sync; a get pipelined after it answers first.
    await stream.send_all(
        encode_request(2, Op.PUT, {"key": b"k", "value": b"v"})
        + encode_request(3, Op.GET, {"key": b"nothing"})
    )
    ids: list[int] = []
    while len(ids) < 3:
        ids.extend(body[1] for body in dec.feed(await stream.receive_some()))
    assert ids == [1, 3, 2]


async def test_request_timeout_against_a_silent_node(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    async def silent(address: str) -> trio.abc.Stream:
        a, b = trio.testing.memory_stream_pair()
        nursery.start_soon(b.receive_some)  # accepts bytes, never answers
        return a

    async with AsyncClient("n1:7001", connect=silent, timeout_s=2.0) as c:
        start = trio.current_time()
        with pytest.raises(Unavailable):  # the handshake never completes
            await c.get("k")
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)


async def test_retry_with_backoff_until_a_node_accepts(
    autojump_clock: MockClock, server: NodeServer, nursery: trio.Nursery
) -> None:
    attempts: list[tuple[str, float]] = []
    good = connector(server, nursery)

    async def flaky(address: str) -> trio.abc.Stream:
        attempts.append((address, trio.current_time()))
        if len(attempts) < 3:
            raise OSError(111, "Connection refused")
        return await good(address)  # type: ignore[no-any-return, operator]

    async with AsyncClient(["a:1", "b:2"], connect=flaky, retries=4) as c:
        await c.put("k", b"v")
    assert [a for a, _ in attempts] == ["a:1", "b:2", "a:1"]
    gaps = [t2 - t1 for (_, t1), (_, t2) in itertools.pairwise(attempts)]
    assert all(g <= 0.02 * 2 ** (i + 1) + 1e-9 for i, g in enumerate(gaps))


async def test_unknown_outcome_of_a_write_is_not_retried(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    attempts = 0

    async def dies_after_handshake(address: str) -> trio.abc.Stream:
        nonlocal attempts
        attempts += 1
        a, b = trio.testing.memory_stream_pair()

        async def serve() -> None:
            dec = FrameDecoder(1 << 20)
            while True:
                data = await b.receive_some()
                for body in dec.feed(data):
                    if body[2] == Op.HELLO:
                        from ringfs.wire import encode_response

                        await b.send_all(encode_response(body[1], {"node": "x", "version": 1}))
                    else:
                        await b.aclose()  # the write arrived; its reply never will
                        return

        nursery.start_soon(serve)
        return a

    async with AsyncClient("n1:7001", connect=dies_after_handshake, retries=5) as c:
        with pytest.raises(Unavailable, match="outcome unknown"):
            await c.put("k", b"v")
        assert attempts == 1
        with pytest.raises(Unavailable):
            await c.get("k")  # reads are retried: one connection per attempt
        assert attempts > 2


async def test_client_validates_arguments(autojump_clock: MockClock) -> None:
    with pytest.raises(LocalProtocolError):
        AsyncClient([])
    with pytest.raises(LocalProtocolError):
        AsyncClient("no-port")
    async with AsyncClient("n1:1", connect=None) as c:
        with pytest.raises(LocalProtocolError):
            await c.put(5, b"v")  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            await c.put("k", "text")  # type: ignore[arg-type]


async def test_a_write_refused_as_not_executed_is_retried(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    """UNAVAILABLE with details executed=false (no primary up, ring views differing)
    left nothing written: the client tries again; without the flag it does not."""
    answers: list[int] = []

    def node(flag: bool) -> Any:
        async def connect(address: str) -> trio.abc.Stream:
            a, b = trio.testing.memory_stream_pair()

            async def serve() -> None:
                from ringfs.wire import encode_error, encode_response

                dec = FrameDecoder(1 << 20)
                while True:
                    for body in dec.feed(await b.receive_some()):
                        if body[2] == Op.HELLO:
                            await b.send_all(encode_response(body[1], {"node": "x"}))
                        elif len(answers) < 2:
                            answers.append(body[1])
                            details = {"executed": False} if flag else {}
                            await b.send_all(encode_error(body[1], ErrorCode.UNAVAILABLE,
                                                          "not a primary", **details))
                        else:
                            await b.send_all(encode_response(body[1], {"context": b"",
                                                                       "siblings": 1}))

            nursery.start_soon(serve)
            return a
        return connect

    async with AsyncClient("n1:7001", connect=node(True), retries=4) as c:
        await c.put("k", b"v")
    assert len(answers) == 2
    answers.clear()
    async with AsyncClient("n1:7001", connect=node(False), retries=4) as c:
        with pytest.raises(ServerError):
            await c.put("k", b"v")
    assert len(answers) == 1


async def test_a_node_whose_data_directory_is_removed_refuses_writes_and_stops_cleanly(
        tmp_path: Path) -> None:
    """Writes after the directory is gone can never be durable: the first sync finds
    out, the node turns read-only, and shutting down still works (real threads and
    clock: the syncs run on the runtime's sync thread)."""
    data = tmp_path / "data"
    srv = NodeServer(NodeConfig(name="n1", engine="log", data_dir=str(data),
                                durability=Durability("group")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(srv.serve, listen=False))
            async with AsyncClient("n1:7001", connect=connector(srv, nursery),  # type: ignore[arg-type]
                                   retries=0) as c:
                await c.put(b"before", b"1")
                shutil.rmtree(data)
                codes = []
                for i in range(3):
                    with pytest.raises(ServerError) as ei:
                        await c.put(b"after%d" % i, b"2")
                    codes.append(ei.value.code)
                assert set(codes) == {ErrorCode.STORAGE_ERROR}
                assert srv.node is not None and srv.node.read_only_reason is not None
                assert (await c.get(b"before")).values == [b"1"]  # reads still work
            nursery.cancel_scope.cancel()  # and the node stops without an error


async def test_requests_for_large_replies_wait_while_the_client_does_not_read(
    autojump_clock: MockClock, server: NodeServer, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The per-connection reader's side of the rule test_poller.py checks for the
    # poller: a lockstep stream takes a reply only when the client reads it.
    limit = 256 * 1024
    monkeypatch.setattr(server_module, "MAX_UNSENT_REPLY_BYTES", limit)
    client_side, server_side = trio.testing.lockstep_stream_pair()
    nursery.start_soon(server.handle_stream, server_side)
    value = b"x" * (64 * 1024)
    dec = FrameDecoder(1 << 24)

    async def read(count: int) -> list[Any]:
        got: list[Any] = []
        while len(got) < count:
            got.extend(dec.feed(await client_side.receive_some()))
        return got

    await client_side.send_all(encode_request(1, Op.HELLO, {"versions": [1]})
                               + encode_request(2, Op.PUT, {"key": b"big", "value": value}))
    await read(2)
    await client_side.send_all(b"".join(encode_request(i, Op.GET, {"key": b"big"})
                                        for i in range(3, 303)))
    await trio.testing.wait_all_tasks_blocked()
    assert server.node is not None
    (c,) = server._conns.values()
    assert server.node.counters["get"] <= limit // len(value) + 2
    assert c.held and c.unsent <= limit + len(value) + 1024
    got = await read(300)
    assert [body[1] for body in got] == list(range(3, 303))
    assert all(body[2]["values"] == [value] for body in got)


async def test_unfinished_frames_have_a_node_wide_budget(
    autojump_clock: MockClock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every connection may hold up to a frame before it is whole; together they are
    # held to a budget, past which the connection that would pass it is refused.
    from ringfs.wire import ERROR, RESPONSE, Limits

    monkeypatch.setattr(server_module, "MAX_PARTIAL_FRAME_BYTES", 64 * 1024)
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("none"),
                                limits=Limits(max_frame_bytes=512 * 1024,
                                              max_value_bytes=400 * 1024)))
    await nursery.start(partial(srv.serve, listen=False))
    value = b"x" * 350_000
    frame = encode_request(2, Op.PUT, {"key": b"k", "value": value})
    streams = []
    for _ in range(4):
        client_side, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(srv.handle_stream, server_side)
        await client_side.send_all(encode_request(1, Op.HELLO, {"versions": [1]})
                                   + frame[:300_000])
        streams.append(client_side)
    await trio.testing.wait_all_tasks_blocked()
    # The budget is twice the frame limit, 1 MiB: the fourth would pass it.
    assert srv._partial_bytes == 3 * 300_000

    async def bodies(stream: trio.abc.Stream) -> list[Any]:
        dec, got = FrameDecoder(1 << 20), []
        while data := await stream.receive_some():
            got.extend(dec.feed(data))
            if any(b[1] != 1 for b in got):
                break
        return got

    refused = await bodies(streams[3])
    assert refused[0][0] == RESPONSE  # HELLO
    assert refused[1][0] == ERROR and refused[1][2]["name"] == "OVERLOADED"
    assert await streams[3].receive_some() == b""  # and closed
    await streams[0].send_all(frame[300_000:])  # the others finish their frames
    done = await bodies(streams[0])
    assert done[1][:2] == [RESPONSE, 2], done[1]
    await trio.testing.wait_all_tasks_blocked()
    assert srv._partial_bytes == 2 * 300_000
    for s in streams:
        await s.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert srv._partial_bytes == 0


# -- unfinished frames that crawl while they crowd the budget ---------------------------

SLOW_HELLO = encode_request(1, Op.HELLO, {"versions": [1]})


def slow_put(rid: int, size: int = 350_000) -> bytes:
    return encode_request(rid, Op.PUT, {"key": b"k%d" % rid, "value": b"x" * size})


@pytest.fixture
async def crowded_server(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
                         ) -> NodeServer:
    """A node whose budget for unfinished frames is 1 MiB (twice a 512 KiB frame
    limit), judging paces against 4 KiB/s."""
    from ringfs.wire import Limits

    monkeypatch.setattr(server_module, "MAX_PARTIAL_FRAME_BYTES", 64 * 1024)
    monkeypatch.setattr(server_module, "SLOW_FRAME_MIN_BYTES_PER_S", 4 * 1024)
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("none"),
                                limits=Limits(max_frame_bytes=512 * 1024,
                                              max_value_bytes=400 * 1024)))
    await nursery.start(partial(srv.serve, listen=False))
    return srv


async def open_sending(srv: NodeServer, nursery: trio.Nursery, first: bytes,
                       lockstep: bool = False) -> trio.abc.Stream:
    client_side, server_side = (trio.testing.lockstep_stream_pair() if lockstep
                                else trio.testing.memory_stream_pair())
    nursery.start_soon(srv.handle_stream, server_side)
    await client_side.send_all(SLOW_HELLO + first)
    return client_side


async def frames_after_hello(stream: trio.abc.Stream) -> list[Any]:
    """Reply frames other than HELLO's, up to the first one (or the end of stream)."""
    dec, got = FrameDecoder(1 << 24), []
    while not got and (data := await stream.receive_some()):
        got.extend(body for body in dec.feed(data) if body[1] != 1)
    return got


def refused(frames: list[Any]) -> bool:
    return bool(frames) and frames[0][0] == ERROR and frames[0][2]["name"] == "OVERLOADED"


async def test_slow_unfinished_frames_are_refused_only_while_they_crowd_the_budget(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
) -> None:
    # Senders that start large frames and stop (or trickle) would keep the budget for
    # unfinished frames full; while they fill more than half of it, connections whose
    # frames move slower than the minimum pace over a window are refused, slowest
    # first. A sender that keeps its frame coming, and any sender while there is
    # room, is left alone.
    srv = crowded_server
    assert srv.node is not None
    window = server_module.SLOW_FRAME_WINDOW_S
    frame = slow_put(2)
    with trio.fail_after(20 * window):
        # Alone, a frame may take as long as it likes: the budget (1 MiB) has room.
        lone = await open_sending(srv, nursery, frame[:300_000])
        await trio.sleep(5 * window)
        await lone.send_all(frame[300_000:])
        assert (await frames_after_hello(lone))[0][:2] == [RESPONSE, 2]

        # Two stalled senders and a steady one fill more than half of it.
        stalled = [await open_sending(srv, nursery, frame[:300_000]) for _ in range(2)]
        long_frame = slow_put(3, 400_000)
        steady = await open_sending(srv, nursery, long_frame[:100_000])
        sent = 100_000
        for _ in range(int(window) + 3):
            await trio.sleep(1)
            await steady.send_all(long_frame[sent:sent + 20_000])  # 20 KB/s: over the pace
            sent += 20_000
        assert sent < len(long_frame)  # (judged while still under way)
        for s in stalled:
            assert refused(await frames_after_hello(s))
            assert await s.receive_some() == b""  # and closed
        assert srv.node.counters["slow_frames_refused"] == 2
        await steady.send_all(long_frame[sent:])
        assert (await frames_after_hello(steady))[0][:2] == [RESPONSE, 3]
    await trio.testing.wait_all_tasks_blocked()
    assert srv._partial_bytes == 0


async def test_a_new_frame_is_judged_on_its_own_pace(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
) -> None:
    # A connection watched during an earlier frame, then idle for long, starts a new
    # frame as others crowd the budget: its pace is that of the new frame, not the
    # bytes of the old one spread over the idle time.
    srv = crowded_server
    with trio.fail_after(600):
        first = slow_put(2)
        x = await open_sending(srv, nursery, first[:300_000])
        await trio.sleep(2.5)  # watched while under way
        await x.send_all(first[300_000:])
        assert (await frames_after_hello(x))[0][:2] == [RESPONSE, 2]
        await trio.sleep(120)
        stalled = [await open_sending(srv, nursery, first[:300_000]) for _ in range(2)]
        second = slow_put(3, 400_000)
        sent = 0
        while sent < len(second):
            await x.send_all(second[sent:sent + 50_000])  # 50 KB/s: over the pace
            sent += 50_000
            await trio.sleep(1)
        assert (await frames_after_hello(x))[0][:2] == [RESPONSE, 3]
        await trio.sleep(20)
    # The stalled two are judged after a window of their own; one going is enough.
    assert srv.node is not None and srv.node.counters["slow_frames_refused"] == 1
    assert sum(not c.closing for c in srv._conns.values()) == 2
    assert len(stalled) == 2


async def test_a_refused_connection_sends_nothing_after_the_error_frame(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
) -> None:
    # The rest of a frame that arrives as the node refuses the connection is not
    # served: the error frame stays the last one.
    with trio.fail_after(600):  # (mock time: a hang fails, it does not stall)
        srv = crowded_server
        assert srv.node is not None
        frame = slow_put(2)
        a = await open_sending(srv, nursery, frame[:-10])
        await trio.testing.wait_all_tasks_blocked()
        (c,) = srv._conns.values()
        srv._partial_budget = 2 * c.partial - 2  # crowded by this one frame
        c.watch = (trio.current_time() - 100, c.received)  # and no progress for 100 s
        await a.send_all(frame[-10:])  # the reader has it, but has not run yet
        srv._refuse_slow_frames(trio.current_time())
        dec, got = FrameDecoder(1 << 24), []
        while data := await a.receive_some():
            got.extend(body for body in dec.feed(data) if body[1] != 1)
        assert len(got) == 1 and refused(got), got
        assert srv.node.counters["put"] == 0


async def test_refused_connections_that_do_not_read_are_closed_and_dropped(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
) -> None:
    # A refused client that never reads the error frame: its connection still closes
    # (CLOSING_SEND_S) and its unfinished frame is dropped at once, so rounds of such
    # clients hold no more than the budget says.
    srv = crowded_server
    frame = slow_put(2)
    clients = []
    with trio.fail_after(600):
        for _ in range(3):
            for _ in range(2):
                clients.append(await open_sending(srv, nursery, frame[:300_000],
                                                  lockstep=True))
            await trio.sleep(server_module.SLOW_FRAME_WINDOW_S + 2)
            held = sum(c.decoder.buffered for c in srv._conns.values() if c.decoder)
            assert held == srv._partial_bytes <= srv._partial_budget // 2
        await trio.sleep(server_module.CLOSING_SEND_S + 1)
    assert srv.node is not None and srv.node.counters["slow_frames_refused"] == 5
    assert len(srv._conns) == 1  # the one left holds half the budget or less


async def test_a_client_that_does_not_read_its_replies_is_judged_too(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not reading replies stops the node reading the connection; that pause is the
    # client's doing, so it does not shelter the frame it left unfinished.
    with trio.fail_after(600):  # (mock time: a hang fails, it does not stall)
        monkeypatch.setattr(server_module, "MAX_UNSENT_REPLY_BYTES", 1_000_000)
        srv = crowded_server
        setup = await open_sending(srv, nursery, slow_put(2))
        assert (await frames_after_hello(setup))[0][:2] == [RESPONSE, 2]
        gets = b"".join(encode_request(10 + i, Op.GET, {"key": b"k2"}) for i in range(4))
        before = set(srv._conns)
        await open_sending(srv, nursery, gets + slow_put(3)[:200_000], lockstep=True)
        await trio.testing.wait_all_tasks_blocked()
        (squatter,) = set(srv._conns) - before
        assert srv._conns[squatter].partial == 200_000  # (its replies, unread, wait)
        for _ in range(2):
            await open_sending(srv, nursery, slow_put(4)[:300_000])
        await trio.sleep(60)
        assert squatter not in srv._conns  # refused (the slowest by a tie: the first) and gone
        assert srv.node is not None and srv.node.counters["slow_frames_refused"] == 2


async def test_a_connection_being_closed_holds_no_unfinished_frame(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
) -> None:
    # A fatal error (here a first request that is not HELLO) closes the connection;
    # the start of a frame read with it can never be served, so it leaves the budget
    # at once, even if the client never reads the error frame; and so does the
    # unfinished frame of a client that half-closes.
    with trio.fail_after(600):  # (mock time: a hang fails, it does not stall)
        srv = crowded_server
        bad = encode_request(1, Op.PING, {}) + slow_put(2)[:250_000]
        for _ in range(4):
            client_side, server_side = trio.testing.lockstep_stream_pair()
            nursery.start_soon(srv.handle_stream, server_side)
            await client_side.send_all(bad)
        await trio.testing.wait_all_tasks_blocked()
        assert srv._partial_bytes == 0
        # (lockstep, unread: the node's replies wait, so the connection stays open)
        half = await open_sending(srv, nursery, slow_put(3)[:300_000], lockstep=True)
        await trio.testing.wait_all_tasks_blocked()
        assert srv._partial_bytes == 300_000
        await half.send_eof()  # type: ignore[attr-defined]
        await trio.testing.wait_all_tasks_blocked()
        assert srv._partial_bytes == 0
        ok = await open_sending(srv, nursery, slow_put(4))
        assert (await frames_after_hello(ok))[0][:2] == [RESPONSE, 4]


async def test_the_slowest_frames_go_first_and_small_ones_are_let_be(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
) -> None:
    # Over the half of the budget by one frame's worth: only the slowest sender goes.
    # A sender holding a few bytes is not judged (refusing it would free nothing).
    with trio.fail_after(600):  # (mock time: a hang fails, it does not stall)
        srv = crowded_server
        assert srv.node is not None
        small = encode_request(5, Op.PUT, {"key": b"s", "value": b"y" * 2_000})
        tiny = await open_sending(srv, nursery, small[:10])
        frames = [slow_put(2 + i, 400_000) for i in range(2)]
        crawling, stalled = [await open_sending(srv, nursery, f[:300_000]) for f in frames]
        sent = 300_000
        for _ in range(int(server_module.SLOW_FRAME_WINDOW_S) + 5):
            await trio.sleep(1)
            await crawling.send_all(frames[0][sent:sent + 1_000])  # 1 KB/s: under the pace
            sent += 1_000
        assert refused(await frames_after_hello(stalled))
        assert srv.node.counters["slow_frames_refused"] == 1
        await crawling.send_all(frames[0][sent:])
        assert (await frames_after_hello(crawling))[0][:2] == [RESPONSE, 2]
        await tiny.send_all(small[10:])  # (stalled as long, first by a tie, but small)
        assert (await frames_after_hello(tiny))[0][:2] == [RESPONSE, 5]


async def test_a_connection_waiting_on_the_node_is_not_judged(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While max_inflight_per_connection of a connection's requests are unanswered the
    # node does not read it, so its unfinished frame cannot move: not its fault.
    with trio.fail_after(600):  # (mock time: a hang fails, it does not stall)
        srv = crowded_server
        assert srv.node is not None
        busy = await open_sending(srv, nursery, slow_put(2)[:300_000])
        await trio.testing.wait_all_tasks_blocked()
        (busy_id,) = srv._conns
        inflight = srv.node.inflight
        monkeypatch.setattr(srv.node, "inflight", lambda conn: 1 << 30 if conn == busy_id
                            else inflight(conn))
        other = await open_sending(srv, nursery, slow_put(3)[:300_000])
        await trio.sleep(60)
        assert refused(await frames_after_hello(other))
        assert busy_id in srv._conns and not srv._conns[busy_id].closing
        monkeypatch.setattr(srv.node, "inflight", inflight)
        await busy.send_all(slow_put(2)[300_000:])
        assert (await frames_after_hello(busy))[0][:2] == [RESPONSE, 2]


async def test_a_half_closed_client_gets_its_replies_whatever_it_left_unfinished(
    autojump_clock: MockClock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rest of a frame can no longer come once the client half-closed: the frame is
    # dropped then, not judged, and the reply to the complete request before it, which
    # waits for a slow sync, still arrives.
    from ringfs.wire import Limits

    async def slow_sync_loop(self: NodeServer, node: Any, engine: Any, per_write: bool,
                             sync_thread: Any) -> None:
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            await trio.sleep(15)  # a slow disk
            self._sync_queue.clear()
            node.on_sync_complete(engine.sync(), self._clock())
            self._dispatch()

    monkeypatch.setattr(server_module, "MAX_PARTIAL_FRAME_BYTES", 64 * 1024)
    monkeypatch.setattr(server_module, "SLOW_FRAME_MIN_BYTES_PER_S", 4 * 1024)
    monkeypatch.setattr(NodeServer, "_sync_loop", slow_sync_loop)
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("group"),
                                request_timeout_s=30,
                                limits=Limits(max_frame_bytes=512 * 1024,
                                              max_value_bytes=400 * 1024)))
    await nursery.start(partial(srv.serve, listen=False))
    with trio.fail_after(600):
        put = encode_request(2, Op.PUT, {"key": b"a", "value": b"v"})
        x = await open_sending(srv, nursery, put + slow_put(3)[:300_000])
        await x.send_eof()  # type: ignore[attr-defined]
        for i in range(2):
            await open_sending(srv, nursery, slow_put(4 + i)[:300_000])
        await trio.testing.wait_all_tasks_blocked()
        assert srv._partial_bytes == 600_000
        assert (await frames_after_hello(x))[0][:2] == [RESPONSE, 2]
        assert trio.current_time() >= 15


@pytest.mark.parametrize("during_send", [False, True])
async def test_a_client_reading_slowly_gets_every_reply_before_a_fatal_error(
    autojump_clock: MockClock, crowded_server: NodeServer, nursery: trio.Nursery,
    during_send: bool,
) -> None:
    # The time a closing connection has is renewed while it takes what it is owed:
    # megabytes of replies read at 64 KiB a second all arrive, the error frame last,
    # also when the error comes while a long send of them is under way.
    srv = crowded_server
    client_side, server_side = trio.testing.lockstep_stream_pair()
    nursery.start_soon(srv.handle_stream, server_side)
    await client_side.send_all(SLOW_HELLO + slow_put(2))
    gets = b"".join(encode_request(10 + i, Op.GET, {"key": b"k2"}) for i in range(10))
    bad = b"\x00\x00\x00\x00"  # a frame of length 0: BAD_FRAME
    dec, got = FrameDecoder(1 << 24), []
    with trio.fail_after(600):
        while len(got) < 2:
            got.extend(dec.feed(await client_side.receive_some()))
        if during_send:
            await client_side.send_all(gets)
            await trio.testing.wait_all_tasks_blocked()  # the replies are being sent
            nursery.start_soon(client_side.send_all, bad)
            await trio.testing.wait_all_tasks_blocked()
        else:
            nursery.start_soon(client_side.send_all, gets + bad)
        while data := await client_side.receive_some(64 * 1024):
            got.extend(dec.feed(data))
            await trio.sleep(1)
    assert [f[1] for f in got] == [1, 2, *range(10, 20), None]
    assert got[-1][0] == ERROR and got[-1][2]["name"] == "BAD_FRAME"
