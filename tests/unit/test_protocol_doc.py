"""docs/protocol.md cannot drift: its byte examples and tables are checked against the code.

Every example in the document is a fenced block tagged ```hex preceded by an HTML
comment ``<!-- example: NAME -->``. Each line of a block is hex byte pairs,
optionally followed by ``#`` and an annotation. The frames are rebuilt here with
ringfs.wire's encoders and real Nodes answering the documented requests, and each
block must equal them byte for byte. The op, error-code, peer-message, limits,
settings, STATUS and WHEREIS tables are checked against the code too.
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ringfs.config import Durability, NodeConfig
from ringfs.errors import ErrorCode
from ringfs.membership import Member
from ringfs.node import ClientReply, Node, RequestSync
from ringfs.peer import PeerMsg
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import (
    PROTOCOL_VERSION,
    RESPONSE,
    SUPPORTED_VERSIONS,
    FrameDecoder,
    Limits,
    Op,
    encode_error,
    encode_request,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

_EXAMPLE = re.compile(
    r"<!--\s*example:\s*([a-z0-9-]+)\s*-->\s*\n```hex\n(.*?)\n```", re.DOTALL
)
_HEX_PAIR = re.compile(r"^[0-9a-f]{2}$")


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _parse_hex(name: str, block: str) -> bytes:
    out = bytearray()
    for lineno, line in enumerate(block.splitlines(), 1):
        code = line.split("#", 1)[0]
        for tok in code.split():
            assert _HEX_PAIR.match(tok), f"example {name}, line {lineno}: bad hex token {tok!r}"
            out.append(int(tok, 16))
    return bytes(out)


def doc_examples() -> dict[str, bytes]:
    """Every hex example in the document, by name."""
    found: dict[str, bytes] = {}
    for m in _EXAMPLE.finditer(_doc()):
        name = m.group(1)
        assert name not in found, f"example {name} appears twice in {DOC.name}"
        found[name] = _parse_hex(name, m.group(2))
    return found


# -- the frames the code produces for the documented conversations ---------------------

HELLO_ARGS = {"versions": [1], "client": "demo/1.0"}
KEY = b"color"
UNKNOWN_OP = 99
FILE_NAME = "hello.txt"
FILE_DATA = b"hello, ringfs!"
SECOND_MEMBER = Member("n2", "127.0.0.1:7002")
"""A member the node believes up but that never answers (nothing delivers to it)."""

assert UNKNOWN_OP not in set(Op), "pick an op number the node does not serve"


def _decode(frame: bytes) -> Any:
    (body,) = FrameDecoder(1 << 30).feed(frame)
    return body


def make_node(durability: str, *others: Member) -> Node:
    """Node n1 with default settings; a ring of itself alone (N=1) unless `others` join."""
    node = Node(
        NodeConfig(name="n1", durability=Durability.parse(durability)),
        MemoryEngine(),
        random.Random(0),
        0.0,
    )
    for m in others:
        node.membership.upsert(m)
    node.client_connected(1, 0.0)
    return node


def drive(node: Node, frame: bytes, now: float = 0.0) -> bytes:
    """Hand one encoded request frame to `node` on connection 1 as the server does.

    Syncs the node asks for complete at once; peers never answer. When the reply
    is not ready, time moves to the node's next deadline, as its timer would.
    Returns the one reply frame.
    """
    (body,) = FrameDecoder(node.limits.max_frame_bytes).feed(frame)
    replies: list[bytes] = []
    reply = node.client_request(1, body, now)
    if reply is not None:
        replies.append(reply)
    while True:
        effects = node.drain_outbox()
        replies += [e.frame for e in effects if isinstance(e, ClientReply) and e.conn == 1]
        if any(isinstance(e, RequestSync) for e in effects):
            node.on_sync_complete(node.engine.sync(), now)
            continue
        if replies:
            break
        deadline = node.next_deadline()
        assert deadline is not None and deadline > now, "no reply and nothing left to wait for"
        now = deadline
        node.handle_timer(now)
    assert len(replies) == 1, f"expected one reply, got {len(replies)}"
    return replies[0]


def conversation(durability: str = "none") -> dict[str, bytes]:
    """The example conversations of the document: request and reply frames, by name."""
    frames: dict[str, bytes] = {}
    node = make_node(durability)  # the main conversation: a one-node ring

    def exchange(name: str, req_id: int, op: int, args: dict[str, Any]) -> bytes:
        frames[f"{name}-request"] = req = encode_request(req_id, op, args)
        frames[f"{name}-response"] = reply = drive(node, req)
        return reply

    exchange("hello", 1, Op.HELLO, HELLO_ARGS)
    exchange("ping", 2, Op.PING, {})
    # Two clients that both read the key as absent (empty context) write concurrently.
    exchange("put", 3, Op.PUT, {"key": KEY, "value": b"red", "context": b""})
    exchange("put-sibling", 4, Op.PUT, {"key": KEY, "value": b"blue", "context": b""})
    got = msgpack.unpackb(exchange("get", 5, Op.GET, {"key": KEY})[4:], raw=False)
    exchange("delete", 6, Op.DELETE, {"key": KEY, "context": got[2]["context"]})
    exchange("get-deleted", 7, Op.GET, {"key": KEY})
    exchange("whereis", 8, Op.WHEREIS, {"key": KEY})
    frames["unknown-op-request"] = req = encode_request(9, UNKNOWN_OP, {})
    frames["unknown-op-error"] = drive(node, req)

    # A one-chunk file: check, send the chunk, commit, stat, read a range, list, delete.
    digest = hashlib.sha256(FILE_DATA).digest()
    exchange("chunk-have", 10, Op.CHUNK_HAVE, {"hashes": [digest]})
    exchange("chunk-put", 11, Op.CHUNK_PUT, {"hash": digest, "data": FILE_DATA})
    exchange("file-commit", 12, Op.FILE_COMMIT, {
        "name": FILE_NAME, "size": len(FILE_DATA), "sha256": digest, "chunk_size": 1048576,
        "chunks": digest, "meta": {"type": "text/plain"}, "mtime": 1700000000.0,
        "context": b""})
    stat = msgpack.unpackb(exchange("file-stat", 13, Op.FILE_STAT, {"name": FILE_NAME})[4:],
                           raw=False)
    exchange("chunk-get", 14, Op.CHUNK_GET, {"hash": digest, "offset": 7, "length": 6})
    exchange("file-list", 15, Op.FILE_LIST, {"prefix": "hello"})
    exchange("file-delete", 16, Op.FILE_DELETE, {"name": FILE_NAME,
                                                 "context": stat[2]["context"]})

    # A length prefix one above the limit: the server answers as the decoder dictates.
    limit = node.limits.max_frame_bytes
    frames["frame-too-large-request"] = prefix = struct.pack(">I", limit + 1)
    decoder = FrameDecoder(limit)
    assert decoder.feed(prefix) == [], "an oversized length prefix was accepted"
    exc = decoder.error
    assert exc is not None and exc.fatal and exc.req_id is None
    frames["frame-too-large-error"] = encode_error(None, exc.code, exc.message)

    # The quorum example: n1 knows a second member that never answers; W=2 cannot be met.
    pair = make_node(durability, SECOND_MEMBER)
    drive(pair, encode_request(1, Op.HELLO, HELLO_ARGS))
    frames["quorum-put-request"] = req = encode_request(
        2, Op.PUT, {"key": KEY, "value": b"red", "w": 2})
    frames["quorum-put-error"] = drive(pair, req)
    return frames


# -- the tests -------------------------------------------------------------------------


def test_document_has_examples() -> None:
    assert DOC.is_file(), f"{DOC} is missing"
    assert doc_examples(), "no <!-- example: NAME --> ```hex blocks found"


def test_every_example_is_checked_and_every_frame_is_shown() -> None:
    assert sorted(doc_examples()) == sorted(conversation())


@pytest.mark.parametrize("name", sorted(conversation()))
def test_example_bytes_match_the_code(name: str) -> None:
    shown = doc_examples().get(name)
    want = conversation()[name]
    assert shown is not None, f"example {name} is missing from {DOC.name}"
    if shown != want:
        at = next((i for i, (a, b) in enumerate(zip(shown, want, strict=False)) if a != b),
                  min(len(shown), len(want)))
        pytest.fail(
            f"example {name} in {DOC.name} differs from what the code sends, "
            f"first at byte {at}.\n doc:  {shown.hex(' ')}\n code: {want.hex(' ')}\n"
            "Update the document (section 9) if the change is intended."
        )


def test_examples_are_well_formed_frames() -> None:
    for name, frame in doc_examples().items():
        (length,) = struct.unpack(">I", frame[:4])
        if name == "frame-too-large-request":
            assert len(frame) == 4 and length > Limits().max_frame_bytes
            continue
        assert length == len(frame) - 4, f"example {name}: length prefix disagrees with body"
        msgpack.unpackb(frame[4:], raw=False)


@pytest.mark.parametrize("durability", ["group", "always"])
def test_durable_policy_sends_the_same_bytes(durability: str) -> None:
    """When acks wait for syncs they come later but are byte-for-byte the same."""
    assert conversation(durability) == conversation("none")


def test_quorum_error_carries_its_details() -> None:
    body = _decode(conversation()["quorum-put-error"])
    assert body[2]["code"] == ErrorCode.QUORUM_NOT_MET
    assert {k: body[2][k] for k in ("replied", "needed", "addressed")} == {
        "replied": 1, "needed": 2, "addressed": 2}


def _table_rows(first_col: str) -> list[list[str]]:
    """Rows of every markdown table whose header starts with `first_col`."""
    rows: list[list[str]] = []
    in_table = False
    for line in _doc().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_col:
            in_table = True
            continue
        if in_table and not set(cells[0]) <= set("-: "):
            rows.append(cells)
    return rows


def test_op_table_matches_enum() -> None:
    rows = {(int(r[0]), r[1]) for r in _table_rows("Op")}
    assert rows == {(int(op), op.name) for op in Op}


def test_error_table_matches_enum() -> None:
    rows = {(int(r[0]), r[1]) for r in _table_rows("Code")}
    assert rows == {(int(code), code.name) for code in ErrorCode}


def test_peer_message_table_matches_enum() -> None:
    rows = {(int(r[0]), r[1]) for r in _table_rows("Type")}
    assert rows == {(int(t), t.name) for t in PeerMsg}


def test_limits_table_matches_defaults() -> None:
    rows = {r[0]: r[1] for r in _table_rows("Limit")}
    defaults = Limits().to_wire()
    assert set(rows) == set(defaults)
    for name, value in defaults.items():
        assert rows[name].replace(",", "").split()[0] == str(value), name


def test_settings_table_matches_defaults() -> None:
    rows = _table_rows("Setting")
    assert rows, "no Setting table"
    config = NodeConfig(name="n1")
    for row in rows:
        default = getattr(config, row[0])
        shown = row[1].strip("`").split()[0]
        if isinstance(default, Durability):
            assert shown == str(default), row[0]
        elif isinstance(default, tuple):
            assert shown == "none" and default == (), row[0]
        else:
            assert float(shown.replace(",", "")) == float(default), row[0]


def _field_paths(obj: dict[str, Any], opaque: frozenset[str], prefix: str = "") -> set[str]:
    """Dotted paths of every field of a result map; `name[]` for the maps in a list."""
    paths: set[str] = set()
    for k, v in obj.items():
        path = f"{prefix}{k}"
        paths.add(path)
        if k in opaque:
            continue
        if isinstance(v, dict):
            paths |= _field_paths(v, opaque, f"{path}.")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                paths |= _field_paths(item, opaque, f"{path}[].")
    return paths


def test_status_table_lists_every_field() -> None:
    node = make_node("group", SECOND_MEMBER)
    rows = {r[0] for r in _table_rows("STATUS field")}
    assert rows == _field_paths(node.status(0.0), frozenset({"counters", "meta"}))


def test_whereis_table_lists_every_field() -> None:
    """Including `error`, which only a replica that failed has."""
    node = make_node("none", SECOND_MEMBER)
    node.client_request(1, [0, 1, int(Op.HELLO), {"versions": [1]}], 0.0)
    node.client_request(1, [0, 2, int(Op.WHEREIS), {"key": KEY}], 0.0)
    address = node.membership.address_of(SECOND_MEMBER.name)
    assert address is not None
    node.peer_unreachable(address, 0.0)
    bodies = [_decode(e.frame) for e in node.drain_outbox() if isinstance(e, ClientReply)]
    (result,) = [b[2] for b in bodies if b[0] == RESPONSE]
    assert any("error" in r for r in result["replicas"])
    rows = {r[0] for r in _table_rows("WHEREIS field")}
    assert rows == _field_paths(result, frozenset())


def test_versions_documented() -> None:
    assert PROTOCOL_VERSION == 1 and SUPPORTED_VERSIONS == (1,), (
        "a new protocol version needs docs/protocol.md updated (and these examples)"
    )
