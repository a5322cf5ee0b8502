"""Errors: the numbered codes of the wire protocol and the exceptions that carry them.

Two families, as in h11: `LocalProtocolError` is raised when *this* side misuses
the protocol or the API (a bug or bad argument in the caller); `RemoteProtocolError`
when the *other* side sent something that breaks it. `RingfsError` carries a
code from `ErrorCode` as sent in error frames; its subclasses name the common ones.
Codes are append-only: a code's number and meaning never change.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """Error codes carried in error frames. Append-only; see docs/protocol.md."""

    BAD_FRAME = 1
    """The frame is not a msgpack array of the documented shape. The connection is closed."""
    FRAME_TOO_LARGE = 2
    """The length prefix exceeds max_frame_bytes. The connection is closed."""
    HANDSHAKE_REQUIRED = 3
    """The first request on a connection must be HELLO. The connection is closed."""
    UNSUPPORTED_VERSION = 4
    """No protocol version in common. The connection is closed."""
    UNKNOWN_OP = 5
    """The op number is not one this node knows."""
    BAD_REQUEST = 6
    """A field is missing, of the wrong type or out of range."""
    KEY_TOO_LARGE = 7
    """The key is empty or longer than max_key_bytes."""
    VALUE_TOO_LARGE = 8
    """The value is longer than max_value_bytes."""
    BAD_CONTEXT = 9
    """The causal context is not one this cluster produced."""
    QUORUM_NOT_MET = 10
    """Fewer replicas answered than R or W required; details say how many."""
    TIMEOUT = 11
    """The node gave up waiting for replicas within the request timeout."""
    OVERLOADED = 12
    """The node refuses new work for now; the request was not executed. Retry later."""
    TOO_MANY_SIBLINGS = 13
    """The write would leave more siblings than max_siblings; read, resolve, write back."""
    INTERNAL = 14
    """A bug in the node; the request may or may not have been executed."""
    SHUTTING_DOWN = 15
    """The node is stopping; the request was not executed."""
    STORAGE_ERROR = 16
    """The node's disk failed (full, I/O error); the write was not acknowledged."""
    DUPLICATE_REQUEST_ID = 17
    """A request id is reused while an earlier request with it is still in flight."""
    UNAVAILABLE = 18
    """Not enough nodes reachable to serve the request; clients raise it when none answers."""
    CHECKSUM_MISMATCH = 19
    """Bytes do not match the SHA-256 they were sent or stored with; nothing was stored."""
    MISSING_CHUNKS = 20
    """A file's chunks are not durably held by enough replicas (or no good copy was found)."""
    BAD_MANIFEST = 21
    """A file commit is inconsistent: size, chunk size, chunk list or metadata."""


# Codes after which the request is known not to have run, so any op may be retried.
NOT_EXECUTED = frozenset(
    {
        ErrorCode.OVERLOADED,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.HANDSHAKE_REQUIRED,
    }
)


class RingfsError(Exception):
    """Base of every ringfs error; `code` is the wire error code when there is one."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class LocalProtocolError(RingfsError):
    """This side broke the protocol or misused the API."""

    code = ErrorCode.BAD_REQUEST


class RemoteProtocolError(RingfsError):
    """The other side sent something that breaks the protocol."""

    code = ErrorCode.BAD_FRAME


class QuorumNotMet(RingfsError):
    """Fewer replicas answered than the request needed; `details` has replied and needed."""

    code = ErrorCode.QUORUM_NOT_MET


class RequestTimeout(RingfsError):
    """No answer within the request timeout."""

    code = ErrorCode.TIMEOUT


class Unavailable(RingfsError):
    """No node could be reached, or the outcome of a write is unknown."""

    code = ErrorCode.UNAVAILABLE


class ChecksumMismatch(RingfsError):
    """Bytes did not match their SHA-256: a chunk sent or read, or a whole file read back."""

    code = ErrorCode.CHECKSUM_MISMATCH


class MissingChunks(RingfsError):
    """Chunks of a file are not held by enough replicas; `details["missing"]` says which."""

    code = ErrorCode.MISSING_CHUNKS


class FileNotFound(RingfsError):
    """No live version of the named file (raised by clients; nodes answer found=false)."""

    code = ErrorCode.BAD_REQUEST


class ServerError(RingfsError):
    """An error frame from a node whose code has no more specific class here."""


_BY_CODE: dict[ErrorCode, type[RingfsError]] = {
    ErrorCode.QUORUM_NOT_MET: QuorumNotMet,
    ErrorCode.TIMEOUT: RequestTimeout,
    ErrorCode.CHECKSUM_MISMATCH: ChecksumMismatch,
    ErrorCode.MISSING_CHUNKS: MissingChunks,
}


def error_from_wire(code: int, message: str, details: dict[str, Any] | None = None) -> RingfsError:
    """Build the exception a client raises for an error frame."""
    try:
        ec = ErrorCode(code)
    except ValueError:
        return ServerError(f"unknown error code {code}: {message}", code=ErrorCode.INTERNAL)
    cls = _BY_CODE.get(ec, ServerError)
    return cls(message, code=ec, **(details or {}))
