"""A live node under hostile input: every bad frame gets an error frame or a closed
connection, other clients keep being served, and claimed sizes cost no memory."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfs.wire import ERROR, RESPONSE, FrameDecoder, Op, encode_frame, encode_request
from tests.integration.procs import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("badinput"))
    yield n
    assert n.stop() == 0, n.log_text()


class Conn:
    """A blocking raw connection that speaks frames."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.dec = FrameDecoder(1 << 30)
        self.rid = 0

    def call(self, op: int, args: dict[str, object]) -> list[object]:
        self.rid += 1
        self.sock.sendall(encode_request(self.rid, op, args))
        while True:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            bodies = self.dec.feed(data)
            if bodies:
                return bodies[0]  # type: ignore[no-any-return]

    def hello(self) -> None:
        assert self.call(Op.HELLO, {"versions": [1]})[0] == RESPONSE

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def canary(node: NodeProcess) -> Iterator[Conn]:
    c = Conn(("127.0.0.1", node.port))
    c.hello()
    yield c
    c.close()


def _check_canary(canary: Conn, tag: bytes) -> None:
    ok = canary.call(Op.PUT, {"key": b"canary", "value": tag})
    assert ok[0] == RESPONSE, ok
    got = canary.call(Op.GET, {"key": b"canary"})
    assert got[0] == RESPONSE and got[2]["values"] == [tag], got  # type: ignore[index]


valid_requests = st.builds(
    lambda rid, op, args: encode_request(rid, op, args),
    st.integers(0, 2**64 - 1),
    st.integers(0, 20) | st.integers(-5, 2**40),
    st.dictionaries(st.sampled_from(["key", "value", "context", "x"]),
                    st.binary(max_size=40) | st.integers(-(2**63), 2**64 - 1)
                    | st.text(max_size=5) | st.none(),
                    max_size=4),
)
garbage = st.binary(max_size=300)
huge_prefix = st.builds(lambda n, tail: struct.pack(">I", n) + tail,
                        st.integers(8 * 1024 * 1024 + 1, 2**32 - 1), st.binary(max_size=20))
wrong_shapes = st.builds(encode_frame, st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.text(max_size=10), st.binary(max_size=10),
    st.lists(st.integers(-(2**63), 2**64 - 1) | st.none() | st.binary(max_size=4), max_size=6),
    st.dictionaries(st.text(max_size=3), st.integers(0, 99), max_size=3),
))
payloads = st.lists(st.one_of(valid_requests, garbage, huge_prefix, wrong_shapes),
                    min_size=1, max_size=5)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads, st.booleans(), st.sampled_from(["eof", "rst", "truncate"]))
def test_hostile_streams(node: NodeProcess, canary: Conn, parts: list[bytes], handshake: bool,
                         ending: str) -> None:
    c = Conn(("127.0.0.1", node.port))
    try:
        if handshake:
            c.hello()
        data = b"".join(parts)
        if ending == "truncate" and len(data) > 1:
            data = data[: len(data) // 2]
        c.sock.sendall(data)
        if ending == "rst":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.sock.close()
        else:
            c.sock.shutdown(socket.SHUT_WR)
            # Read every reply until the node closes: each must be a well-formed frame.
            buf = b""
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            for body in FrameDecoder(1 << 30).feed(buf):
                assert isinstance(body, list) and body[0] in (RESPONSE, ERROR), body
                if body[0] == ERROR:
                    assert set(body[2]) >= {"code", "name", "message"}
    finally:
        c.close()
    _check_canary(canary, msgpack.packb(len(parts)))


def test_claimed_sizes_cost_no_memory(node: NodeProcess, canary: Conn) -> None:
    before = node.rss_bytes()
    socks = []
    for _ in range(64):
        s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        s.sendall(encode_request(1, Op.HELLO, {"versions": [1]}))
        # A frame claiming the maximum size, of which only a few bytes ever arrive.
        s.sendall(struct.pack(">I", 8 * 1024 * 1024) + b"\x94\x00")
        socks.append(s)
    _check_canary(canary, b"while-held")
    grown = node.rss_bytes() - before
    for s in socks:
        s.close()
    # 64 connections claiming 8 MiB each would be 512 MiB if buffers were preallocated.
    assert grown < 16 * 1024 * 1024, f"node grew {grown} bytes"
    _check_canary(canary, b"after")


def test_frame_too_large_gets_error_then_close(node: NodeProcess) -> None:
    c = Conn(("127.0.0.1", node.port))
    c.hello()
    c.sock.sendall(struct.pack(">I", 2**31))
    body = None
    while body is None:
        data = c.sock.recv(65536)
        assert data
        bodies = c.dec.feed(data)
        body = bodies[0] if bodies else None
    assert body[0] == ERROR and body[2]["name"] == "FRAME_TOO_LARGE"
    assert c.sock.recv(65536) == b""
    c.close()


def test_idle_connections_cannot_exhaust_the_nodes_descriptors(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """With an open-file limit too low for max_connections, the node serves as many
    connections as fit and refuses the rest with OVERLOADED; its own files (the
    store's writes) and the connections it has keep working."""
    limit = 600  # fits (600 - 256) // 2 = 172 connections, not the default 1024
    n = NodeProcess(tmp_path_factory.mktemp("nofile"), extra=("--engine", "log"), nofile=limit)
    held: list[socket.socket] = []
    try:
        first = Conn(("127.0.0.1", n.port))
        first.hello()
        for _ in range(400):  # idle connections that never say HELLO
            held.append(socket.create_connection(("127.0.0.1", n.port), timeout=5))
        # Writes still reach the store, and the first connection is still served.
        for i in range(50):
            assert first.call(Op.PUT, {"key": b"k%d" % i, "value": b"v"})[0] == RESPONSE
        assert first.call(Op.GET, {"key": b"k49"})[2]["values"] == [b"v"]
        # Once the node has taken every connection, those past the limit were told
        # OVERLOADED ([ERROR, nil, {code: 12}]) and closed, the others wait in silence.
        deadline = time.monotonic() + 30
        while True:
            st = first.call(Op.STATUS, {})[2]
            if st["connections"] + st["counters"].get("connections_refused", 0) >= 401:
                break
            assert time.monotonic() < deadline, f"the node took no more connections: {st}"
        refused = 0
        for s in held:
            s.setblocking(False)
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            if not data:  # the error frame can be lost to the reset of a closed socket
                refused += 1
                continue
            body = FrameDecoder(1 << 20).feed(data)[0]
            assert body[0] == ERROR and body[2]["code"] == 12, body
            refused += 1
        assert 400 - refused <= (limit - 256) // 2
        for s in held:
            s.close()
        held.clear()
        while first.call(Op.STATUS, {})[2]["connections"] > 1:
            assert time.monotonic() < deadline + 30  # the node notices the closes in time
        late = Conn(("127.0.0.1", n.port))
        late.hello()
        late.close()
        first.close()
        assert "open-file limit" in n.log_text()
    finally:
        for s in held:
            s.close()
        assert n.stop() == 0, n.log_text()
