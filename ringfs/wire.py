"""The frame codec shared by clients, servers and peers.

A connection carries frames in both directions. A frame is a 4-byte unsigned
big-endian length N followed by N bytes of msgpack (1 <= N <= max_frame_bytes).
The length is checked before any of the body is read or buffered beyond what has
arrived, so a frame that claims a huge size costs nothing but an error.

Every frame body is a msgpack array whose first element says what it is:

    [0, id, op, args]            request: id uint, op uint (Op), args map
    [1, id, result]              response: result map
    [2, id, {code, name, message, ...}]   error; id is nil when no id could be read

Ids are chosen by the requester, unique among its requests in flight on that
connection; responses may come back in any order. The first request on a
connection must be HELLO (version handshake). docs/protocol.md is the full
reference. Enums here are append-only.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from ringfs.errors import ErrorCode

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

REQUEST = 0
RESPONSE = 1
ERROR = 2

_LEN = struct.Struct(">I")
MAX_REQUEST_ID = (1 << 64) - 1


class Op(IntEnum):
    """Request operations. Append-only; numbers never change meaning."""

    HELLO = 0
    PING = 1
    GET = 2
    PUT = 3
    DELETE = 4
    STATUS = 5
    WHEREIS = 6
    CHUNK_HAVE = 7
    CHUNK_PUT = 8
    CHUNK_GET = 9
    FILE_COMMIT = 10
    FILE_STAT = 11
    FILE_DELETE = 12
    FILE_LIST = 13
    LEAVE = 20


@dataclass(frozen=True)
class Limits:
    """Sizes a node accepts from the outside; all in bytes."""

    max_frame_bytes: int = 8 * 1024 * 1024
    """Largest frame body; the length prefix is rejected above this before reading."""
    max_key_bytes: int = 4096
    """Longest key."""
    max_value_bytes: int = 4 * 1024 * 1024
    """Longest value."""
    max_context_bytes: int = 64 * 1024
    """Longest causal context a client may send back."""

    def __post_init__(self) -> None:
        if not 64 <= self.max_frame_bytes <= (1 << 32) - 1:
            raise ValueError("max_frame_bytes must be between 64 and 2**32-1")
        if not 1 <= self.max_key_bytes <= 65535:
            raise ValueError("max_key_bytes must be between 1 and 65535")
        if self.max_value_bytes < 0 or self.max_value_bytes >= self.max_frame_bytes:
            raise ValueError("max_value_bytes must be >= 0 and below max_frame_bytes")
        if self.max_context_bytes < 16:
            # 16: room for a context naming one writer, the least a put can send back.
            raise ValueError("max_context_bytes must be at least 16")

    def to_wire(self) -> dict[str, int]:
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_key_bytes": self.max_key_bytes,
            "max_value_bytes": self.max_value_bytes,
            "max_context_bytes": self.max_context_bytes,
        }


class WireError(Exception):
    """A frame or request that breaks the protocol.

    `fatal` errors mean the byte stream can no longer be trusted: the receiver sends
    the error frame and closes the connection.
    """

    def __init__(self, code: ErrorCode, message: str, *, req_id: int | None = None,
                 fatal: bool = False, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id
        self.fatal = fatal
        self.details = details or {}


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_pack = _packer.pack


def pack(obj: Any) -> bytes:
    """msgpack-encode `obj` (str as str, bytes as bin)."""
    return _pack(obj)  # type: ignore[no-any-return]


_local = threading.local()


def encode_frame(obj: Any, *, bulk: bool = False) -> bytes:
    """One complete frame: length prefix and msgpack body.

    `bulk` is for frames carrying large bin values (file chunks): the body is
    packed into a buffer kept from one call to the next and joined to its prefix
    from there, one allocation and one copy of the chunk fewer. For small frames
    that path is slower (about 0.7 us a frame), so it is asked for explicitly.
    """
    if not bulk:
        body: bytes = _pack(obj)
        return _LEN.pack(len(body)) + body
    packer = getattr(_local, "packer", None)
    if packer is None:  # one per thread: packing, viewing and resetting are separate steps
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    try:
        packer.pack(obj)
        with packer.getbuffer() as view:
            return b"".join((_LEN.pack(len(view)), view))
    finally:
        packer.reset()


def encode_request(req_id: int, op: int, args: dict[str, Any], *, bulk: bool = False) -> bytes:
    return encode_frame([REQUEST, req_id, op, args], bulk=bulk)


def encode_response(req_id: int, result: dict[str, Any], *, bulk: bool = False) -> bytes:
    if bulk:
        return encode_frame([RESPONSE, req_id, result], bulk=True)
    # encode_frame's small-frame path, written out: every reply comes through here.
    body: bytes = _pack([RESPONSE, req_id, result])
    return _LEN.pack(len(body)) + body


def error_body(code: ErrorCode, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": int(code), "name": code.name, "message": message}
    body.update(details)
    return body


def encode_error(req_id: int | None, code: ErrorCode, message: str, **details: Any) -> bytes:
    return encode_frame([ERROR, req_id, error_body(code, message, **details)])


def unpack(body: bytes | bytearray | memoryview, max_len: int) -> Any:
    """Decode one msgpack body, refusing containers longer than the frame could hold."""
    return msgpack.unpackb(
        body,
        raw=False,
        strict_map_key=True,
        max_bin_len=max_len,
        max_str_len=max_len,
        max_array_len=max_len,
        max_map_len=max_len,
        max_ext_len=0,
    )


_GATHER_FRAME_BYTES = 64 * 1024
"""A frame at least this long is collected as a list of received pieces."""


_VIEW_FRAME_BYTES = 64 * 1024
"""Frame bodies at least this long are decoded from a view of the buffer."""


class FrameDecoder:
    """Incremental splitter of a byte stream into decoded frame bodies (sans-IO).

    `feed(data)` returns every body completed by `data`, decoded from msgpack. A
    length prefix above the limit (refused before any of that body is buffered) or
    a body that is not valid msgpack ends the stream: the bodies before it are
    still returned, `error` is set to a fatal WireError, and every later `feed`
    returns nothing. Callers answer the error and close the connection.
    """

    __slots__ = ("_buf", "_held", "_parts", "_want", "buffered", "error", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._parts: list[bytes | memoryview] = []
        """The pieces received of a large frame (_want bytes from its prefix on)."""
        self._held = 0
        self._want = 0
        self.error: WireError | None = None
        self.buffered = 0
        """Bytes held waiting for the rest of a frame (kept by feed: read per request)."""

    def feed(self, data: bytes | bytearray) -> list[Any]:
        if self.error is not None:
            return []
        buf = self._buf
        if not buf and not self._want:
            # The common case, first: exactly one whole small frame, nothing held.
            end = len(data)
            if end >= 4:
                (n,) = _LEN.unpack_from(data, 0)
                if n + 4 == end and 0 < n < _VIEW_FRAME_BYTES and n <= self.max_frame_bytes:
                    try:
                        return [unpack(data[4:], n)]
                    except Exception as exc:  # msgpack raises several unrelated types
                        self._fail_body(exc)
                        return []
        src: bytes | bytearray
        if self._want:
            # A large frame arrives in pieces: keep them and join once when it is
            # whole, rather than growing a buffer (and copying) piece by piece.
            self._parts.append(data if type(data) is bytes else bytes(data))
            self._held += len(data)
            if self._held < self._want:
                self.buffered = self._held
                return []
            src = data = b"".join(self._parts)
            self._parts = []
            self._held = self._want = 0
        elif buf:
            buf += data
            src = buf
        else:
            src = data
        out: list[Any] = []
        pos = 0
        end = len(src)
        limit = self.max_frame_bytes
        unpack_len = _LEN.unpack_from
        pending = 0
        # Large bodies are decoded from a view, not a slice: a slice would copy every
        # body once more (a 1 MiB chunk costs about half a millisecond a copy). Small
        # ones are sliced, which is cheaper than making a view. Every view is released
        # before the buffer is resized.
        view: memoryview | None = None
        try:
            while end - pos >= 4:
                (n,) = unpack_len(src, pos)
                if n > limit or n == 0:
                    self._fail(WireError(
                        ErrorCode.FRAME_TOO_LARGE if n else ErrorCode.BAD_FRAME,
                        f"frame length {n} outside 1..{limit}", fatal=True))
                    return out
                stop = pos + 4 + n
                if stop > end:
                    pending = stop - pos
                    break
                try:
                    if n < _VIEW_FRAME_BYTES:
                        out.append(unpack(src[pos + 4 : stop], n))
                    else:
                        if view is None:
                            view = memoryview(src)
                        # A slice of a view is an export of its own: release it too.
                        with view[pos + 4 : stop] as body:
                            out.append(unpack(body, n))
                except Exception as exc:  # msgpack raises several unrelated types
                    self._fail_body(exc)
                    return out
                pos = stop
        finally:
            if view is not None:
                view.release()
        if pending >= _GATHER_FRAME_BYTES:
            if src is buf:
                self._parts = [bytes(buf[pos:])]
                buf.clear()
            else:
                self._parts = [memoryview(data)[pos:] if type(data) is bytes
                               else bytes(data[pos:])]
            self._held = end - pos
            self._want = pending
        elif src is buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(data[pos:])
        self.buffered = len(self._buf) + self._held
        return out

    def _fail_body(self, exc: Exception) -> None:
        self._fail(WireError(ErrorCode.BAD_FRAME, f"invalid msgpack body: {exc}", fatal=True))

    def _fail(self, error: WireError) -> None:
        self.error = error
        self.discard()

    def discard(self) -> None:
        """Drop what is held of an unfinished frame (the caller reads no more)."""
        self._buf = bytearray()
        self._parts = []
        self._held = self._want = self.buffered = 0

    def feed_or_raise(self, data: bytes | bytearray) -> list[Any]:
        """Like feed, but raise the stream's error (after nothing is left to return)."""
        out = self.feed(data)
        if not out and self.error is not None:
            raise self.error
        return out


def parse_request(obj: Any) -> tuple[int, int, dict[str, Any]]:
    """Check the envelope of a request body; returns (id, op, args)."""
    if type(obj) is not list or len(obj) != 4 or type(obj[0]) is not int or obj[0] != REQUEST:
        rid = obj[1] if type(obj) is list and len(obj) > 1 and _is_id(obj[1]) else None
        raise WireError(ErrorCode.BAD_FRAME, "a request is [0, id, op, args]", req_id=rid,
                        fatal=True)
    _, rid, op, args = obj
    if not _is_id(rid):
        raise WireError(ErrorCode.BAD_FRAME, "request id must be an unsigned 64-bit integer",
                        fatal=True)
    if type(op) is not int or type(args) is not dict:
        raise WireError(ErrorCode.BAD_REQUEST, "op must be an integer and args a map",
                        req_id=rid)
    return rid, op, args


def _is_id(x: Any) -> bool:
    return type(x) is int and 0 <= x <= MAX_REQUEST_ID


# -- field checks shared by every request handler --------------------------------

def field_key(args: dict[str, Any], limits: Limits, rid: int, name: str = "key") -> bytes:
    key = args.get(name)
    if type(key) is not bytes:
        raise WireError(ErrorCode.BAD_REQUEST, f"'{name}' must be bin", req_id=rid)
    if not 0 < len(key) <= limits.max_key_bytes:
        raise WireError(ErrorCode.KEY_TOO_LARGE,
                        f"key must be 1..{limits.max_key_bytes} bytes, got {len(key)}",
                        req_id=rid)
    return key


def field_value(args: dict[str, Any], limits: Limits, rid: int) -> bytes:
    value = args.get("value")
    if type(value) is not bytes:
        raise WireError(ErrorCode.BAD_REQUEST, "'value' must be bin", req_id=rid)
    if len(value) > limits.max_value_bytes:
        raise WireError(ErrorCode.VALUE_TOO_LARGE,
                        f"value is {len(value)} bytes, limit {limits.max_value_bytes}",
                        req_id=rid)
    return value


def field_opt_bytes(args: dict[str, Any], name: str, limit: int, rid: int) -> bytes | None:
    v = args.get(name)
    if v is None:
        return None
    if type(v) is not bytes or len(v) > limit:
        raise WireError(ErrorCode.BAD_REQUEST, f"'{name}' must be bin of at most {limit} bytes",
                        req_id=rid)
    return v


def field_opt_uint(args: dict[str, Any], name: str, lo: int, hi: int, rid: int) -> int | None:
    v = args.get(name)
    if v is None:
        return None
    if type(v) is not int or not lo <= v <= hi:
        raise WireError(ErrorCode.BAD_REQUEST, f"'{name}' must be an integer in {lo}..{hi}",
                        req_id=rid)
    return v
