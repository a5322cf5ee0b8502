"""The gossip wire format: msgpack arrays with an append-only message-type enum.

A datagram is a *compound packet*: a msgpack array (always the 3-byte array16
header, so its size is known before the messages are chosen) of messages, each a
msgpack array whose first element is the `MsgType`:

    PING      [0, seq, target_name]
    PING_REQ  [1, seq, target_name, target_address, want_nack]
    ACK       [2, seq]
    NACK      [3, seq]
    SUSPECT   [4, incarnation, name, accuser]
    ALIVE     [5, incarnation, name, address, meta]
    DEAD      [6, incarnation, name, accuser]
    LEFT      [7, incarnation, name]

A stream (push-pull) message is one array:

    PUSH_PULL [8, seq, sender_name, sender_address, join, reply,
               [[name, address, incarnation, state, meta], ...]]

The reply echoes the request's seq, which is how the requester matches it (the
replier may know itself under another address than the one we dialled).

Messages are encoded once when queued, so filling a packet is concatenating bytes.
Decoding validates every field against `Limits`; a message that fails is reported
as malformed and skipped, never raised. Unknown message types are skipped too, so a
newer member can add types without breaking older ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

from ringfs.gossip.member import MetaValue

PACKET_HEADER_BYTES = 3
MAX_ADDRESS_BYTES = 300
MAX_UINT63 = 2**63 - 1
MAX_SEQ = 2**32


class MsgType(IntEnum):
    """Message types. Append-only: a number's meaning never changes."""

    PING = 0
    PING_REQ = 1
    ACK = 2
    NACK = 3
    SUSPECT = 4
    ALIVE = 5
    DEAD = 6
    LEFT = 7
    PUSH_PULL = 8


class Malformed(Exception):
    """Remote input that does not decode or validate; the caller drops and counts it."""


@dataclass(frozen=True)
class Limits:
    """Bounds applied to everything decoded from the network."""

    max_name_bytes: int = 128
    max_meta_bytes: int = 512
    max_meta_entries: int = 32
    max_packet_messages: int = 256
    max_members: int = 4096
    max_stream_bytes: int = 4 * 1024 * 1024


class Ping(NamedTuple):
    seq: int
    target: str


class PingReq(NamedTuple):
    seq: int
    target: str
    target_address: str
    want_nack: bool


class Ack(NamedTuple):
    seq: int


class Nack(NamedTuple):
    seq: int


class Suspect(NamedTuple):
    incarnation: int
    name: str
    accuser: str


class Alive(NamedTuple):
    incarnation: int
    name: str
    address: str
    meta: dict[str, MetaValue]


class Dead(NamedTuple):
    incarnation: int
    name: str
    accuser: str


class Left(NamedTuple):
    incarnation: int
    name: str


class StateEntry(NamedTuple):
    name: str
    address: str
    incarnation: int
    state: int
    meta: dict[str, MetaValue]


class PushPull(NamedTuple):
    seq: int
    name: str
    address: str
    join: bool
    reply: bool
    states: list[Any]
    """Raw entries; see `parse_state_entry`."""


Message = Ping | PingReq | Ack | Nack | Suspect | Alive | Dead | Left


# -- encoding --------------------------------------------------------------------


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def encode_ping(seq: int, target: str) -> bytes:
    return _pack((0, seq, target))


def encode_ping_req(seq: int, target: str, target_address: str, want_nack: bool) -> bytes:
    return _pack((1, seq, target, target_address, want_nack))


def encode_ack(seq: int) -> bytes:
    return _pack((2, seq))


def encode_nack(seq: int) -> bytes:
    return _pack((3, seq))


def encode_suspect(incarnation: int, name: str, accuser: str) -> bytes:
    return _pack((4, incarnation, name, accuser))


def encode_alive(incarnation: int, name: str, address: str, meta: dict[str, MetaValue]) -> bytes:
    return _pack((5, incarnation, name, address, meta))


def encode_dead(incarnation: int, name: str, accuser: str) -> bytes:
    return _pack((6, incarnation, name, accuser))


def encode_left(incarnation: int, name: str) -> bytes:
    return _pack((7, incarnation, name))


def encode_push_pull(
    seq: int, name: str, address: str, join: bool, reply: bool, states: list[StateEntry]
) -> bytes:
    return _pack((8, seq, name, address, join, reply, states))


def build_packet(parts: list[bytes]) -> bytes:
    """A compound datagram from already-encoded messages."""
    n = len(parts)
    return b"\xdc" + n.to_bytes(2, "big") + b"".join(parts)


def meta_size(meta: dict[str, MetaValue]) -> int:
    """Upper bound of the encoded size of a metadata map, the quantity
    `max_meta_bytes` bounds (computed without encoding: it runs on every decode)."""
    n = 3
    for key, val in meta.items():
        n += 5 + (len(key) if key.isascii() else len(key.encode()))
        if type(val) is str:
            n += 5 + (len(val) if val.isascii() else len(val.encode()))
        else:
            n += 9
    return n


# -- validation -------------------------------------------------------------------


def _uint(v: object, bound: int = MAX_UINT63) -> int:
    if type(v) is not int or not 0 <= v <= bound:
        raise Malformed("expected a bounded unsigned integer")
    return v


def _name(v: object, limits: Limits) -> str:
    if type(v) is not str or not v or len(v) > limits.max_name_bytes:
        raise Malformed("bad member name")
    if not v.isascii() and len(v.encode()) > limits.max_name_bytes:
        raise Malformed("member name too long")
    return v


def valid_address(v: object) -> bool:
    """True for a "host:port" string with a port in 1..65535."""
    if type(v) is not str or not 3 <= len(v) <= MAX_ADDRESS_BYTES:
        return False
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536)


def _address(v: object) -> str:
    if not valid_address(v):
        raise Malformed("bad address")
    return v  # type: ignore[return-value]


def check_meta(v: object, limits: Limits) -> dict[str, MetaValue]:
    """Validate a metadata map: str keys; str, int or float values; bounded size."""
    if type(v) is not dict or len(v) > limits.max_meta_entries:
        raise Malformed("bad metadata map")
    for key, val in v.items():
        if type(key) is not str or type(val) not in (str, int, float):
            raise Malformed("bad metadata entry")
        if type(val) is int and not -(2**63) <= val < 2**64:
            raise Malformed("metadata integer out of range")
    if v and meta_size(v) > limits.max_meta_bytes:
        raise Malformed("metadata too large")
    return v


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise Malformed("expected a boolean")
    return v


def _parse(raw: list[Any], limits: Limits) -> Message | None:
    t = raw[0]
    n = len(raw)
    if type(t) is not int:
        raise Malformed("message type is not an integer")
    if t == 0 and n == 3:
        return Ping(_uint(raw[1], MAX_SEQ), _name(raw[2], limits))
    if t == 2 and n == 2:
        return Ack(_uint(raw[1], MAX_SEQ))
    if t == 4 and n == 4:
        return Suspect(_uint(raw[1]), _name(raw[2], limits), _name(raw[3], limits))
    if t == 5 and n == 5:
        return Alive(
            _uint(raw[1]), _name(raw[2], limits), _address(raw[3]), check_meta(raw[4], limits)
        )
    if t == 6 and n == 4:
        return Dead(_uint(raw[1]), _name(raw[2], limits), _name(raw[3], limits))
    if t == 7 and n == 3:
        return Left(_uint(raw[1]), _name(raw[2], limits))
    if t == 1 and n == 5:
        return PingReq(
            _uint(raw[1], MAX_SEQ), _name(raw[2], limits), _address(raw[3]), _bool(raw[4])
        )
    if t == 3 and n == 2:
        return Nack(_uint(raw[1], MAX_SEQ))
    if 0 <= t <= 8:
        raise Malformed("known message type with the wrong number of fields")
    return None  # a type from a newer version: skip it


def _unpack(data: bytes) -> Any:
    try:
        # msgpack bounds every string/array/map by len(data) by default.
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for garbage; all mean malformed
        raise Malformed(f"undecodable msgpack: {type(exc).__name__}") from None


def decode_packet(data: bytes, limits: Limits) -> tuple[list[Message], int]:
    """The messages of a compound datagram and how many were malformed (skipped).
    Raises `Malformed` only when the datagram as a whole does not decode."""
    obj = _unpack(data)
    if type(obj) is not list or not obj or len(obj) > limits.max_packet_messages:
        raise Malformed("a packet is a non-empty bounded array of messages")
    out: list[Message] = []
    bad = 0
    for raw in obj:
        if type(raw) is not list or not raw:
            bad += 1
            continue
        try:
            msg = _parse(raw, limits)
        except Malformed:
            bad += 1
            continue
        if msg is not None:
            out.append(msg)
    return out, bad


def decode_push_pull(data: bytes, limits: Limits) -> PushPull:
    """A push-pull message. Its state entries are only checked for shape here; the
    receiver validates with `parse_state_entry` the few that would change its view,
    since a large cluster's state is mostly what the receiver already knows."""
    if len(data) > limits.max_stream_bytes:
        raise Malformed("stream message too large")
    obj = _unpack(data)
    if type(obj) is not list or len(obj) != 7 or obj[0] != MsgType.PUSH_PULL:
        raise Malformed("not a push-pull message")
    _, seq, name, address, join, reply, states = obj
    if type(states) is not list or len(states) > limits.max_members:
        raise Malformed("bad state list")
    return PushPull(
        _uint(seq, MAX_SEQ),
        _name(name, limits),
        _address(address),
        _bool(join),
        _bool(reply),
        states,
    )


def parse_state_entry(raw: object, limits: Limits) -> StateEntry:
    """Validate one [name, address, incarnation, state, meta] entry of a push-pull."""
    if type(raw) is not list or len(raw) != 5:
        raise Malformed("bad state entry")
    return StateEntry(
        _name(raw[0], limits),
        _address(raw[1]),
        _uint(raw[2]),
        _uint(raw[3], 3),
        check_meta(raw[4], limits),
    )
