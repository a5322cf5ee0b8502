"""Messages between nodes: the replication and membership traffic.

Peers use the client framing (wire.py) on connections whose HELLO names the
sending node (`"peer": NAME`). After it, each frame is

    [3, sender, type, body]          sender: node name, type: PeerMsg, body: map

Connections are one-way: a node sends on the connection it opened and receives
on the ones others opened, so a reply travels on the replier's own connection.
Messages from unknown senders or of unknown types are dropped and counted; a
peer can never crash a node. PeerMsg is append-only.

A node sends everything one step of its work produced for one peer as one frame:
a single message as above, several as a BATCH frame

    [3, sender, 3, {"msgs": [[type, body], ...]}]

whose messages are handled in order as if they had come one frame each. Each
message is msgpack-encoded once when it is queued (`pack_message`); a frame is
then put together from those bytes (`peer_frame`) without encoding them again.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

from ringfs.wire import encode_frame, pack

PEER = 3
_LEN = struct.Struct(">I")


class PeerMsg(IntEnum):
    """Peer message types. Append-only; numbers never change meaning."""

    JOIN = 1
    """{name, address, meta}: a node announces itself to a seed."""
    MEMBERS = 2
    """{members: [[name, address, meta], ...]}: what the sender knows of the cluster."""
    BATCH = 3
    """{msgs: [[type, body], ...]}: several messages in one frame, handled in order."""
    REPLICA_PUT = 10
    """{id, key, state, hint_for?}: merge `state` into the replica; ack when durable (id > 0)."""
    REPLICA_PUT_ACK = 11
    """{id, ok, reason?}: the write is durable (ok) or was refused."""
    REPLICA_GET = 12
    """{id, key, hint_for?}: send back the replica's state of key."""
    REPLICA_GET_REPLY = 13
    """{id, state?, ok, reason?}: the state (nil when absent)."""
    REPLICA_REAP = 14
    """{key, state}: drop the key if its state is still exactly this tombstone."""
    FORWARD = 15
    """{id, op, args}: coordinate this client request (the sender is not a replica)."""
    FORWARD_REPLY = 16
    """{id, ok, body}: the result map, or the error map, of a forwarded request."""
    GOSSIP = 20
    """{data}: a gossip stream message (push-pull), opaque to everything but gossip."""
    AAE_REQUEST = 30
    """{id, step, ring, n, ...}: one step of an anti-entropy exchange (ringfs/repair.py)."""
    AAE_REPLY = 31
    """{id, ok, reason?, ...}: the peer's answer to that step."""
    CHUNK_STORE = 40
    """{id, hash, data, hint_for?, repair?}: verify and store a chunk; ack when durable (id > 0)."""
    CHUNK_STORE_ACK = 41
    """{id, ok, reason?}: the chunk is durable (ok) or was refused."""
    CHUNK_HAVE = 42
    """{id, items: [[hash, hint_for], ...]}: which of these chunks are held here."""
    CHUNK_HAVE_REPLY = 43
    """{id, sizes}: per item the size of the durable copy held, -1 when none."""
    CHUNK_FETCH = 44
    """{id, hash, hint_for?}: send the chunk's bytes."""
    CHUNK_FETCH_REPLY = 45
    """{id, data}: the bytes held (nil when absent); the asker verifies them."""
    FILE_REFS = 46
    """{id, hashes}: which of these chunks do live manifests held here reference (GC)."""
    FILE_REFS_REPLY = 47
    """{id, referenced}: the referenced subset."""
    FILE_LIST = 48
    """{id, prefix, after, limit}: names of manifests held here, in order."""
    FILE_LIST_REPLY = 49
    """{id, names: [[name, skeleton], ...], more}: names with their version skeletons."""


def encode_peer(sender: str, msg: PeerMsg, body: dict[str, Any], *, bulk: bool = False) -> bytes:
    """One complete peer frame (`bulk`: see encode_frame)."""
    return encode_frame([PEER, sender, int(msg), body], bulk=bulk)


def pack_message(msg: int, body: dict[str, Any]) -> bytes:
    """One message, msgpack-encoded as [type, body], ready for `peer_frame`."""
    return pack([msg, body])


def frame_prefix(sender: str) -> bytes:
    """The start of every peer frame body `sender` sends: a 4-array, PEER, sender."""
    return b"\x94" + pack(PEER) + pack(sender)


_BATCH_KEY = pack(int(PeerMsg.BATCH)) + b"\x81" + pack("msgs")


def peer_frame(prefix: bytes, packed: list[bytes]) -> bytes:
    """One complete frame carrying the `pack_message` outputs in `packed` (at least one).

    msgpack arrays are their header followed by their elements, so the frame is
    spliced from the encoded messages: one message [type, body] becomes
    [3, sender, type, body], several become a BATCH.
    """
    if len(packed) == 1:
        body = prefix + packed[0][1:]  # drop the message's own 2-array header
    else:
        n = len(packed)
        if n < 16:
            head = bytes((0x90 | n,))
        elif n < 1 << 16:
            head = b"\xdc" + n.to_bytes(2, "big")
        else:
            head = b"\xdd" + n.to_bytes(4, "big")
        body = b"".join((prefix, _BATCH_KEY, head, *packed))
    return _LEN.pack(len(body)) + body


def parse_peer(obj: Any) -> tuple[str, int, dict[str, Any]] | None:
    """(sender, type, body) of a peer frame, or None when it is not one."""
    if (type(obj) is list and len(obj) == 4 and obj[0] == PEER and type(obj[1]) is str
            and type(obj[2]) is int and type(obj[3]) is dict):
        return obj[1], obj[2], obj[3]
    return None
