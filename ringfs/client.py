"""Clients: `AsyncClient` for trio programs and `Client` for plain blocking scripts.

Both speak the protocol of docs/protocol.md. A client holds one connection per
node it has used and pipelines every concurrent request over it (ids match
replies to requests, in any order). Each request has a deadline. Failures are
retried with exponential backoff and full jitter, moving to the next node, when
retrying is safe: always when the request provably did not run (no connection,
OVERLOADED, SHUTTING_DOWN), and after a lost connection or a timeout only for
reads. A write whose fate is unknown is reported, never silently repeated: a
repeated write would add a sibling.

`Client` runs an `AsyncClient` on a private trio thread, so both share one
implementation; a `Client` may be used from several threads at once.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from ringfs import fileclient
from ringfs.config import parse_address
from ringfs.errors import (
    NOT_EXECUTED,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    RequestTimeout,
    RingfsError,
    Unavailable,
    error_from_wire,
)
from ringfs.fileclient import FileInfo, PutFileResult, Source
from ringfs.wire import (
    ERROR,
    PROTOCOL_VERSION,
    RESPONSE,
    FrameDecoder,
    Limits,
    Op,
    WireError,
    encode_request,
)

T = TypeVar("T")

Key = bytes | str
Connector = Callable[[str], Awaitable[trio.abc.Stream]]
"""Opens a byte stream to a node address; TCP by default, replaceable in tests."""


async def _tcp_connect(address: str) -> trio.abc.Stream:
    host, port = parse_address(address)
    return await trio.open_tcp_stream(host, port)


def _key(key: Key) -> bytes:
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"a str key must be valid Unicode text: {exc}") from None
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise LocalProtocolError(f"keys are bytes or str, not {type(key).__name__}")


def _value(value: bytes | bytearray | memoryview) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise LocalProtocolError(f"values are bytes, not {type(value).__name__}")


@dataclass(frozen=True)
class GetResult:
    """What a get found: every sibling value and the context to write back with."""

    key: bytes
    values: list[bytes]
    """Every sibling; empty when the key is absent or deleted."""
    context: bytes
    """Opaque causal context; pass it to put/delete to supersede what this get saw."""

    @property
    def found(self) -> bool:
        return bool(self.values)

    @property
    def value(self) -> bytes | None:
        """The value when there is exactly one, None when absent; raises if there are siblings."""
        if not self.values:
            return None
        if len(self.values) > 1:
            raise LocalProtocolError(
                f"key has {len(self.values)} siblings; read .values and resolve them")
        return self.values[0]


class _NotSent(Exception):
    """The request never left this client: always safe to retry."""


class _Lost(Exception):
    """The request was sent but its reply is unknown: retry only if idempotent."""


@dataclass(eq=False)
class _Pending:
    event: trio.Event = field(default_factory=trio.Event)
    reply: Any = None
    failure: Exception | None = None


class _Connection:
    """One TCP connection to one node, with requests pipelined over it."""

    def __init__(self, address: str, stream: trio.abc.Stream, max_frame_bytes: int,
                 on_close: Callable[[_Connection], None] | None = None) -> None:
        self.address = address
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_bytes)
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1)
        self.send_lock = trio.StrictFIFOLock()
        self.broken: Exception | None = None
        self.node_name: str | None = None
        self.limits: Limits | None = None
        self._on_close = on_close

    async def reader(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(256 * 1024)
                if not data:
                    raise _Lost(f"{self.address} closed the connection")
                for body in self.decoder.feed_or_raise(data):
                    self._deliver(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(_Lost(f"connection to {self.address} lost: {exc}"))
        except (WireError, RemoteProtocolError, _Lost) as exc:
            self._fail(_Lost(str(exc)))
        finally:
            self._fail(_Lost(f"connection to {self.address} closed"))
            await self.close()
            if self._on_close is not None:
                self._on_close(self)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    def _deliver(self, body: Any) -> None:
        if type(body) is not list or len(body) != 3 or body[0] not in (RESPONSE, ERROR):
            raise RemoteProtocolError(f"{self.address} sent a malformed frame")
        rid = body[1]
        p = self.pending.pop(rid, None) if type(rid) is int else None
        if p is None:
            if body[0] == ERROR and rid is None:
                # A connection-level error (e.g. too many connections): fail everything.
                err = body[2] if isinstance(body[2], dict) else {}
                raise _Lost(f"{self.address}: {err.get('name')}: {err.get('message')}")
            return  # a reply to a request we gave up on
        p.reply = body
        p.event.set()

    def _fail(self, exc: Exception) -> None:
        if self.broken is None:
            self.broken = exc
        for p in self.pending.values():
            p.failure = exc
            p.event.set()
        self.pending.clear()

    async def request(self, op: int, args: dict[str, Any], deadline: float) -> dict[str, Any]:
        if self.broken is not None:
            raise _NotSent(str(self.broken))
        rid = next(self.ids)
        frame = encode_request(rid, op, args, bulk=op == Op.CHUNK_PUT)
        p = _Pending()
        self.pending[rid] = p
        try:
            await self._send(frame, deadline)
            with trio.move_on_at(deadline):
                await p.event.wait()
        finally:
            # Every way out (answered, failed, timed out, cancelled by the caller) leaves
            # nothing behind; a reply arriving later is dropped as one nobody waits for.
            self.pending.pop(rid, None)
        if not p.event.is_set():
            raise RequestTimeout(f"no reply from {self.address} in time", node=self.address)
        if p.failure is not None:
            raise p.failure
        body = p.reply
        if body[0] == ERROR:
            err = body[2] if isinstance(body[2], dict) else {}
            details = {k: v for k, v in err.items()
                       if type(k) is str and k not in ("code", "name", "message")}
            code = err.get("code")
            raise error_from_wire(code if type(code) is int else int(ErrorCode.INTERNAL),
                                  str(err.get("message", "")), details)
        result = body[2]
        if not isinstance(result, dict):
            raise RemoteProtocolError(f"{self.address} sent a result that is not a map")
        return result

    async def _send(self, frame: bytes, deadline: float) -> None:
        """Put one whole frame on the wire, or fail saying whether any of it left.

        Waiting for the lock behind other requests sends nothing, so a deadline met
        there fails only this request. Once part of a frame may be on the wire, an
        interruption (deadline or the caller's cancellation) leaves the stream out of
        step with the node: the connection is failed and closed.
        """
        sending = False
        try:
            with trio.move_on_at(deadline) as scope:
                async with self.send_lock:
                    if self.broken is not None:  # failed while this request queued
                        raise _NotSent(str(self.broken))
                    # A deadline met on the way here sends nothing: say so before the
                    # first byte can leave.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    sending = True
                    await self.stream.send_all(frame)
                    sending = False
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            sending = False
            self._fail(_Lost(str(exc)))
            raise _Lost(f"connection to {self.address} lost while sending") from None
        finally:
            if sending:
                self._fail(_Lost("send interrupted"))
                await self.close()
        if scope.cancelled_caught:
            if sending:
                raise RequestTimeout(f"timed out sending to {self.address}")
            raise RequestTimeout(f"timed out waiting to send to {self.address}",
                                 executed=False)


class AsyncClient:
    """A trio client for a ringfs cluster. Use as `async with AsyncClient(...) as c:`."""

    def __init__(
        self,
        nodes: str | Sequence[str],
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        retries: int = 4,
        backoff_base_s: float = 0.02,
        backoff_max_s: float = 1.0,
        max_frame_bytes: int = Limits().max_frame_bytes,
        rng: random.Random | None = None,
        connect: Connector | None = None,
    ) -> None:
        addrs = [nodes] if isinstance(nodes, str) else list(nodes)
        if not addrs:
            raise LocalProtocolError("a client needs at least one node address")
        for a in addrs:
            try:
                parse_address(a)
            except ValueError as exc:
                raise LocalProtocolError(str(exc)) from None
        if not (_positive(timeout_s) and _positive(connect_timeout_s)):
            raise LocalProtocolError("timeouts must be positive numbers of seconds")
        if type(retries) is not int or not 0 <= retries <= 1000:
            raise LocalProtocolError("retries must be an integer from 0 to 1000")
        if not (_positive(backoff_base_s, zero=True) and _positive(backoff_max_s, zero=True)):
            raise LocalProtocolError("backoff times must be finite numbers of seconds >= 0")
        self.nodes = addrs
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_frame_bytes = max_frame_bytes
        self._rng = rng or random.Random()
        self._connect_fn = connect or _tcp_connect
        self._conns: dict[str, _Connection] = {}
        self._live: set[_Connection] = set()  # every connection not yet closed
        self._connecting: dict[str, trio.Event] = {}
        self._calls: set[trio.CancelScope] = set()  # the requests in flight
        self._next = 0
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        # The connections' readers end as their streams close. The block's own
        # exception is not handed to the nursery: it never ran inside one of the
        # client's tasks, and the caller should see it as raised, not in a group.
        await self._nursery_cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close every connection. Requests in flight fail with Unavailable, later ones
        with LocalProtocolError; the code around them is not cancelled."""
        self._closed = True
        for cs in list(self._calls):
            cs.cancel()
        for c in list(self._live):
            c._fail(_Lost("client closed"))
            await c.close()
        self._live.clear()
        self._conns.clear()

    # -- public API ----------------------------------------------------------------
    async def get(self, key: Key, *, r: int | None = None,
                  timeout_s: float | None = None) -> GetResult:
        """Every sibling of `key` and the context to write back with; `r` replies needed."""
        k = _key(key)
        args: dict[str, Any] = {"key": k}
        if r is not None:
            args["r"] = _quorum(r, "r")
        res = await self._call(Op.GET, args, safe=True, timeout_s=timeout_s)
        values = res.get("values")
        ctx = res.get("context", b"")
        if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values) \
                or not isinstance(ctx, bytes):
            raise RemoteProtocolError("GET result has the wrong shape")
        return GetResult(k, values, ctx)

    async def put(self, key: Key, value: bytes, context: bytes | None = None, *,
                  w: int | None = None, timeout_s: float | None = None) -> bytes:
        """Store `value`; with `context` from a get it supersedes what that get saw.

        Succeeds once `w` replicas made it durable. Returns the context of the new
        version when it is the key's only value, else b"" (read to see the siblings).
        """
        args: dict[str, Any] = {"key": _key(key), "value": _value(value)}
        if context is not None:
            args["context"] = _context(context)
        if w is not None:
            args["w"] = _quorum(w, "w")
        res = await self._call(Op.PUT, args, safe=False, timeout_s=timeout_s)
        return bytes(res.get("context", b""))

    async def delete(self, key: Key, context: bytes | None = None, *,
                     w: int | None = None, timeout_s: float | None = None) -> bytes:
        """Delete `key` (a tombstone superseding what `context`, or the node, has seen)."""
        args: dict[str, Any] = {"key": _key(key)}
        if context is not None:
            args["context"] = _context(context)
        if w is not None:
            args["w"] = _quorum(w, "w")
        res = await self._call(Op.DELETE, args, safe=False, timeout_s=timeout_s)
        return bytes(res.get("context", b""))

    async def whereis(self, key: Key, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The key's preference list and, per replica, whether it holds the key."""
        return await self._call(Op.WHEREIS, {"key": _key(key)}, safe=True, timeout_s=timeout_s)

    async def ping(self, *, timeout_s: float | None = None) -> None:
        await self._call(Op.PING, {}, safe=True, timeout_s=timeout_s)

    async def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The status map of the first node that answers."""
        return await self._call(Op.STATUS, {}, safe=True, timeout_s=timeout_s)

    async def leave(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Ask the node to leave the cluster for good, handing its data over first.

        Only a client given exactly that node's address may ask: a retry must never
        move on to another node. Returns its handoff progress; STATUS shows it until
        the node stops.
        """
        if len(self.nodes) != 1:
            raise LocalProtocolError(
                f"leave() is sent to one node only; this client has {len(self.nodes)} "
                "addresses: use a client given just the address of the node to leave")
        return await self._call(Op.LEAVE, {}, safe=True, timeout_s=timeout_s)

    # -- files (ringfs/fileclient.py does the streaming) ------------------------------
    async def put_file(self, name: str, src: Source, **options: Any) -> PutFileResult:
        """Upload a file from a path or a binary file object, streaming, under `name`.

        Sends only the chunks the cluster does not hold yet (the result says how many
        it skipped), and makes the file visible only once every chunk is durable on W
        replicas. Options: chunk_size, meta, context, w, size and sha256 (expected
        values, checked before anything is committed), progress(done, total), parallel.
        """
        return await fileclient.put_file(self, name, src, **options)

    async def get_file(self, name: str, dest: Source, **options: Any) -> FileInfo:
        """Download `name` into a path (written to a temporary name, moved into place once
        verified) or a binary file object. Options: offset, length, progress, parallel."""
        return await fileclient.get_file(self, name, dest, **options)

    async def stat_file(self, name: str, *, r: int | None = None) -> FileInfo | None:
        """The file's manifest (the version get_file reads, with `versions` > 1 when
        concurrent uploads left siblings), or None when there is no such file."""
        return await fileclient.stat_file(self, name, r=r)

    async def list_files(self, prefix: str = "") -> list[str]:
        """Names of the files whose name starts with `prefix`, in order."""
        return await fileclient.list_files(self, prefix)

    async def delete_file(self, name: str, context: bytes | None = None, *,
                          w: int | None = None) -> bytes:
        """Delete a file (its manifest); its chunks are garbage-collected later."""
        return await fileclient.delete_file(self, name, context, w=w)

    async def chunk_have(self, hashes: Sequence[bytes], *, w: int | None = None) -> list[bool]:
        """Whether each chunk is durably held by at least `w` replicas."""
        args: dict[str, Any] = {"hashes": list(hashes)}
        if w is not None:
            args["w"] = _quorum(w, "w")
        res = await self._call(Op.CHUNK_HAVE, args, safe=True, timeout_s=None)
        held = res.get("held")
        if not isinstance(held, list) or len(held) != len(hashes):
            raise RemoteProtocolError("CHUNK_HAVE result has the wrong shape")
        return [h is True for h in held]

    async def chunk_put(self, digest: bytes, data: bytes, *, w: int | None = None) -> None:
        """Store one chunk under its SHA-256 `digest` (idempotent, so retried freely)."""
        args: dict[str, Any] = {"hash": digest, "data": data}
        if w is not None:
            args["w"] = _quorum(w, "w")
        await self._call(Op.CHUNK_PUT, args, safe=True, timeout_s=None)

    async def chunk_get(self, digest: bytes, *, offset: int = 0,
                        length: int | None = None) -> bytes:
        """The bytes of one chunk (a verified copy), or `length` of them from `offset`."""
        args: dict[str, Any] = {"hash": digest}
        if offset:
            args["offset"] = offset
        if length is not None:
            args["length"] = length
        res = await self._call(Op.CHUNK_GET, args, safe=True, timeout_s=None)
        data = res.get("data")
        if not isinstance(data, bytes):
            raise RemoteProtocolError("CHUNK_GET result has the wrong shape")
        return data

    # -- machinery -----------------------------------------------------------------
    async def _call(self, op: int, args: dict[str, Any], *, safe: bool,
                    timeout_s: float | None) -> dict[str, Any]:
        if self._closed:
            raise LocalProtocolError("client is closed")
        if self._nursery is None:
            raise LocalProtocolError("use the client inside `async with AsyncClient(...)`")
        if timeout_s is not None and not _positive(timeout_s):
            raise LocalProtocolError("timeout_s must be a positive number of seconds")
        deadline = trio.current_time() + (timeout_s if timeout_s is not None else self.timeout_s)
        with trio.CancelScope() as scope:
            self._calls.add(scope)
            try:
                return await self._attempts(op, args, safe, deadline)
            finally:
                self._calls.discard(scope)
        raise Unavailable("client closed with the request in flight"
                          + ("" if safe else "; its outcome is unknown"))

    async def _attempts(self, op: int, args: dict[str, Any], safe: bool,
                        deadline: float) -> dict[str, Any]:
        attempt = 0
        while True:
            address = self.nodes[self._next % len(self.nodes)]
            try:
                conn = await self._connection(address, deadline)
                return await conn.request(op, args, deadline)
            except RingfsError as exc:
                retry = (exc.code in NOT_EXECUTED or exc.details.get("executed") is False
                         or (safe and exc.code == ErrorCode.TIMEOUT))
                last: Exception = exc
            except _NotSent as exc:
                retry, last = True, exc
            except _Lost as exc:
                retry, last = safe, exc
            if not retry or attempt >= self.retries or trio.current_time() >= deadline:
                if isinstance(last, RingfsError):
                    raise last
                if isinstance(last, _NotSent):
                    raise Unavailable(f"no node reachable: {last}") from None
                raise Unavailable(f"outcome unknown, connection lost: {last}") from None
            attempt += 1
            self._next += 1  # try the next node
            cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** min(attempt, 60)))
            delay = min(self._rng.uniform(0, cap), max(0.0, deadline - trio.current_time()))
            await trio.sleep(delay)

    async def _connection(self, address: str, deadline: float) -> _Connection:
        c = self._conns.get(address)
        if c is not None and c.broken is None:
            return c
        ev = self._connecting.get(address)
        if ev is not None:
            with trio.move_on_at(deadline):
                await ev.wait()
            c = self._conns.get(address)
            if c is not None and c.broken is None:
                return c
            raise _NotSent(f"could not connect to {address}")
        ev = self._connecting[address] = trio.Event()
        try:
            return await self._connect(address, min(deadline,
                                                    trio.current_time() + self.connect_timeout_s))
        finally:
            del self._connecting[address]
            ev.set()

    async def _connect(self, address: str, deadline: float) -> _Connection:
        assert self._nursery is not None
        c: _Connection | None = None
        try:
            with trio.move_on_at(deadline):
                try:
                    stream = await self._connect_fn(address)
                except OSError as exc:
                    raise _NotSent(f"cannot connect to {address}: {exc.strerror or exc}") \
                        from None
                c = _Connection(address, stream, self.max_frame_bytes, self._live.discard)
                self._live.add(c)
                self._nursery.start_soon(c.reader)
                try:
                    hello = await c.request(Op.HELLO, {"versions": [PROTOCOL_VERSION],
                                                       "client": "ringfs-python"}, deadline)
                except (_Lost, RingfsError) as exc:
                    raise _NotSent(f"handshake with {address} failed: {exc}") from None
                c.node_name = str(hello.get("node"))
                lim = hello.get("limits")
                if isinstance(lim, dict):
                    try:
                        c.limits = Limits(**{k: v for k, v in lim.items()
                                             if k in Limits.__dataclass_fields__})
                    except (TypeError, ValueError):
                        c.limits = None
                if self._closed:
                    raise _NotSent("client closed")
                self._conns[address] = c
                return c
            raise _NotSent(f"timed out connecting to {address}")
        except BaseException:
            if c is not None:  # a connection that never served: close it and its reader
                c._fail(_Lost(f"handshake with {address} did not complete"))
                self._live.discard(c)
                await c.close()
            raise


def _positive(x: object, *, zero: bool = False) -> bool:
    """A positive (or, with `zero`, non-negative) finite number of seconds, not a bool."""
    return (isinstance(x, int | float) and not isinstance(x, bool)
            and (x >= 0 if zero else x > 0) and x < math.inf)


def _quorum(q: int, name: str) -> int:
    if type(q) is not int or not 1 <= q <= 16:
        raise LocalProtocolError(f"{name} must be an integer from 1 to N")
    return q


def _context(ctx: bytes) -> bytes:
    if not isinstance(ctx, bytes | bytearray):
        raise LocalProtocolError("context must be the bytes a get returned")
    return bytes(ctx)


class _Runner:
    """The trio thread behind a `Client`, kept apart so the thread never holds the
    Client itself alive: a Client dropped without close() is collected, and its
    finalizer stops the thread."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.token: trio.lowlevel.TrioToken | None = None
        self.ready = threading.Event()
        self.stop: trio.Event | None = None
        self.error: BaseException | None = None
        self.active = 0  # calls running on the thread
        self.drained: trio.Event | None = None
        self.thread = threading.Thread(target=self.run, name="ringfs-client", daemon=True)

    def run(self) -> None:
        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            self.stop = trio.Event()
            async with self.client:
                self.ready.set()
                await self.stop.wait()
                # Fail the calls in flight (they raise Unavailable in their callers'
                # threads) and let them return before the run ends.
                await self.client.aclose()
                while self.active:
                    self.drained = trio.Event()
                    await self.drained.wait()

        try:
            trio.run(main)
        except BaseException as exc:  # surface start-up failures to the constructor
            self.error = exc
            self.ready.set()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self.client._closed:  # (closing: calls that start now would outlive the run)
            raise LocalProtocolError("client is closed")
        self.active += 1
        try:
            return await fn(*args, **kwargs)
        finally:
            self.active -= 1
            if not self.active and self.drained is not None:
                self.drained.set()

    def request_stop(self) -> None:
        """Ask the thread to finish; callable from any thread, the client's own too."""
        token, stop = self.token, self.stop
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop.set)


class Client:
    """A blocking client, for scripts: `with Client("127.0.0.1:7001") as c: c.put(...)`.

    It runs an AsyncClient on a private thread, so it shares its connection reuse,
    pipelining (across caller threads), timeouts and retries. Calls may come from
    several threads at once; close() fails those still in flight with Unavailable.
    """

    def __init__(self, nodes: str | Sequence[str], **options: Any) -> None:
        self._async = AsyncClient(nodes, **options)
        self._runner = _Runner(self._async)  # (the thread holds the runner, not self)
        self._runner.thread.start()
        self._runner.ready.wait()
        if self._runner.error is not None:
            raise self._runner.error
        self._finalizer = weakref.finalize(self, self._runner.request_stop)

    def _do(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        runner = self._runner
        if runner.token is None or not runner.thread.is_alive():
            raise LocalProtocolError("client is closed")
        if threading.current_thread() is runner.thread:
            raise LocalProtocolError("a Client cannot be called from its own thread "
                                     "(for example from a put_file progress callback)")
        async def call() -> T:
            return await runner.call(fn, *args, **kwargs)

        try:
            return trio.from_thread.run(call, trio_token=runner.token)
        except (trio.RunFinishedError, trio.Cancelled):  # the run ended under the call
            raise LocalProtocolError("client is closed") from None

    def get(self, key: Key, *, r: int | None = None,
            timeout_s: float | None = None) -> GetResult:
        return self._do(self._async.get, key, r=r, timeout_s=timeout_s)

    def put(self, key: Key, value: bytes, context: bytes | None = None, *,
            w: int | None = None, timeout_s: float | None = None) -> bytes:
        return self._do(self._async.put, key, value, context, w=w, timeout_s=timeout_s)

    def delete(self, key: Key, context: bytes | None = None, *,
               w: int | None = None, timeout_s: float | None = None) -> bytes:
        return self._do(self._async.delete, key, context, w=w, timeout_s=timeout_s)

    def whereis(self, key: Key, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._do(self._async.whereis, key, timeout_s=timeout_s)

    def ping(self, *, timeout_s: float | None = None) -> None:
        self._do(self._async.ping, timeout_s=timeout_s)

    def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._do(self._async.status, timeout_s=timeout_s)

    def leave(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._do(self._async.leave, timeout_s=timeout_s)

    def put_file(self, name: str, src: Source, **options: Any) -> PutFileResult:
        """See AsyncClient.put_file; `progress` is called on the client's thread."""
        return self._do(self._async.put_file, name, src, **options)

    def get_file(self, name: str, dest: Source, **options: Any) -> FileInfo:
        """See AsyncClient.get_file."""
        return self._do(self._async.get_file, name, dest, **options)

    def stat_file(self, name: str, *, r: int | None = None) -> FileInfo | None:
        return self._do(self._async.stat_file, name, r=r)

    def list_files(self, prefix: str = "") -> list[str]:
        return self._do(self._async.list_files, prefix)

    def delete_file(self, name: str, context: bytes | None = None, *,
                    w: int | None = None) -> bytes:
        return self._do(self._async.delete_file, name, context, w=w)

    def close(self) -> None:
        """Close connections and stop the client thread; calls in flight fail."""
        self._finalizer.detach()
        runner = self._runner
        runner.request_stop()
        if runner.thread.is_alive() and threading.current_thread() is not runner.thread:
            runner.thread.join(timeout=10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AsyncClient", "Client", "FileInfo", "GetResult", "PutFileResult"]
