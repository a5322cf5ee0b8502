"""The sans-IO node, driven directly: handshake, key/value semantics, durability."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringfs.config import Durability, NodeConfig
from ringfs.dvv import DVVSet, decode_stored, encode_context
from ringfs.errors import ErrorCode
from ringfs.lww import STAMP_MAGIC
from ringfs.node import ClientReply, CloseConnection, Node, PeerSend, RequestSync
from ringfs.peer import PeerMsg, encode_peer, frame_prefix, pack_message, peer_frame
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import ERROR, RESPONSE, FrameDecoder, Limits, Op


def decode(frame: bytes) -> Any:
    (body,) = FrameDecoder(1 << 30).feed(frame)
    return body


class Harness:
    def __init__(self, durability: str = "none", **cfg: Any) -> None:
        self.engine = MemoryEngine()
        self.node = Node(NodeConfig(name="n1", durability=Durability.parse(durability),
                                    gossip="off", **cfg),
                         self.engine, random.Random(0), 0.0)
        self.rid = 0
        self.conn = 1
        self.node.client_connected(1, 0.0)
        assert self.call(Op.HELLO, versions=[1])["node"] == "n1"

    def raw(self, body: Any, conn: int = 1) -> Any:
        frame = self.node.client_request(conn, body, 0.0)
        return None if frame is None else decode(frame)

    def call(self, op: int, **args: Any) -> Any:
        self.rid += 1
        body = self.raw([0, self.rid, int(op), args])
        assert body is not None, "reply deferred"
        assert body[0] == RESPONSE, body
        return body[2]

    def error(self, op: int, **args: Any) -> dict[str, Any]:
        self.rid += 1
        body = self.raw([0, self.rid, int(op), args])
        assert body[0] == ERROR, body
        return body[2]  # type: ignore[no-any-return]


def test_handshake_required_first() -> None:
    node = Node(NodeConfig(name="n1"), MemoryEngine(), random.Random(0), 0.0)
    node.client_connected(5, 0.0)
    body = decode(node.client_request(5, [0, 1, int(Op.GET), {"key": b"k"}], 0.0) or b"")
    assert body[2]["code"] == ErrorCode.HANDSHAKE_REQUIRED
    assert node.drain_outbox() == [CloseConnection(5, "the first request on a connection "
                                                      "must be HELLO")]


def test_unsupported_version_closes() -> None:
    node = Node(NodeConfig(name="n1"), MemoryEngine(), random.Random(0), 0.0)
    node.client_connected(1, 0.0)
    body = decode(node.client_request(1, [0, 1, int(Op.HELLO), {"versions": [99]}], 0.0) or b"")
    assert body[2]["code"] == ErrorCode.UNSUPPORTED_VERSION
    assert isinstance(node.drain_outbox()[0], CloseConnection)


def test_put_get_delete_cycle() -> None:
    h = Harness()
    assert h.call(Op.GET, key=b"k") == {"found": False, "values": [], "context": b""}
    ctx = h.call(Op.PUT, key=b"k", value=b"v1")["context"]
    got = h.call(Op.GET, key=b"k")
    assert got["values"] == [b"v1"] and got["context"] == ctx and got["found"]
    h.call(Op.PUT, key=b"k", value=b"v2", context=got["context"])
    assert h.call(Op.GET, key=b"k")["values"] == [b"v2"]
    h.call(Op.DELETE, key=b"k")
    gone = h.call(Op.GET, key=b"k")
    assert gone["values"] == [] and not gone["found"] and gone["context"]
    assert h.engine.get(b"k") is not None and h.engine.get(b"k").tombstone  # type: ignore[union-attr]


_OPS = st.lists(st.tuples(st.sampled_from(["put", "put_ctx", "get", "delete"]),
                          st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=8)),
                max_size=40)


@given(ops=_OPS, durability=st.sampled_from(["none", "interval:1000"]))
def test_a_plain_put_on_a_one_node_ring_takes_the_short_way_to_the_same_result(
        ops: list[tuple[str, bytes, bytes]], durability: str) -> None:
    """`_on_put` hands a put of only a key and a value on a one-node ring straight to
    `_coordinate`; one carrying `w` goes the whole way through `_write`. Every reply
    and every stored state must be the same."""
    short, whole = Harness(durability), Harness(durability)
    contexts: dict[bytes, bytes] = {}
    for op, key, value in ops:
        if op == "put":
            got = [short.call(Op.PUT, key=key, value=value),
                   whole.call(Op.PUT, key=key, value=value, w=1)]
        elif op == "put_ctx":
            ctx = contexts.get(key, b"")
            got = [h.call(Op.PUT, key=key, value=value, context=ctx) for h in (short, whole)]
        elif op == "get":
            got = [h.call(Op.GET, key=key) for h in (short, whole)]
            contexts[key] = got[0]["context"]
        else:
            got = [h.call(Op.DELETE, key=key) for h in (short, whole)]
        assert got[0] == got[1]
    for key in (b"a", b"b", b"c"):
        assert short.engine.get(key) == whole.engine.get(key)


@pytest.mark.parametrize("setting", ["lww", "fault"])
def test_a_plain_put_takes_the_whole_way_where_it_must(setting: str) -> None:
    """A last-write-wins key is stamped, and an injected fault applies, on one node too."""
    if setting == "lww":
        h = Harness(lww_prefixes=("l:",))
        h.call(Op.PUT, key=b"l:k", value=b"v")
        assert h.call(Op.GET, key=b"l:k")["values"] == [b"v"]
        rec = h.engine.get(b"l:k")
        assert rec is not None
        (held,) = decode_stored(rec.meta).values()
        assert held is not None and held.startswith(STAMP_MAGIC) and held.endswith(b"v")
        return
    engine = MemoryEngine()
    node = Node(NodeConfig(name="n1", gossip="off"), engine, random.Random(0), 0.0,
                faults=frozenset({"ignore_context"}))
    node.client_connected(1, 0.0)
    node.client_request(1, [0, 1, int(Op.HELLO), {"versions": [1]}], 0.0)
    for rid in (2, 3):
        node.client_request(1, [0, rid, int(Op.PUT), {"key": b"k", "value": b"v%d" % rid}], 0.0)
    # The defect drops every put's context, so blind puts pile up as siblings.
    body = decode(node.client_request(1, [0, 4, int(Op.GET), {"key": b"k"}], 0.0) or b"")
    assert sorted(body[2]["values"]) == [b"v2", b"v3"]


def test_stale_contexts_make_siblings_and_merged_context_resolves() -> None:
    h = Harness()
    h.call(Op.PUT, key=b"k", value=b"base")
    ctx = h.call(Op.GET, key=b"k")["context"]
    h.call(Op.PUT, key=b"k", value=b"a", context=ctx)
    h.call(Op.PUT, key=b"k", value=b"b", context=ctx)
    got = h.call(Op.GET, key=b"k")
    assert sorted(got["values"]) == [b"a", b"b"]
    h.call(Op.PUT, key=b"k", value=b"ab", context=got["context"])
    assert h.call(Op.GET, key=b"k")["values"] == [b"ab"]


def test_blind_writes_do_not_pile_up_siblings() -> None:
    h = Harness()
    for i in range(100):
        h.call(Op.PUT, key=b"k", value=b"%d" % i)
    assert h.call(Op.GET, key=b"k")["values"] == [b"99"]


def test_sibling_limit() -> None:
    h = Harness(max_siblings=3)
    for v in (b"a", b"b", b"c"):
        h.call(Op.PUT, key=b"k", value=v, context=b"")
    err = h.error(Op.PUT, key=b"k", value=b"d", context=b"")
    assert err["code"] == ErrorCode.TOO_MANY_SIBLINGS
    assert len(h.call(Op.GET, key=b"k")["values"]) == 3


@pytest.mark.parametrize(
    ("op", "args", "code"),
    [
        (Op.GET, {}, ErrorCode.BAD_REQUEST),
        (Op.GET, {"key": "str"}, ErrorCode.BAD_REQUEST),
        (Op.GET, {"key": b""}, ErrorCode.KEY_TOO_LARGE),
        (Op.GET, {"key": b"x" * 33}, ErrorCode.KEY_TOO_LARGE),
        # Quorums are checked on a one-node ring too (its reads and writes go a
        # short way when the request names nothing but the key and value).
        (Op.GET, {"key": b"k", "r": 4}, ErrorCode.BAD_REQUEST),
        (Op.GET, {"key": b"k", "r": "1"}, ErrorCode.BAD_REQUEST),
        (Op.PUT, {"key": b"k", "value": b"", "w": 0}, ErrorCode.BAD_REQUEST),
        (Op.PUT, {"key": b"k"}, ErrorCode.BAD_REQUEST),
        (Op.PUT, {"key": b"k", "value": b"x" * 65}, ErrorCode.VALUE_TOO_LARGE),
        (Op.PUT, {"key": b"k", "value": b"", "context": b"\xc1"}, ErrorCode.BAD_CONTEXT),
        (Op.PUT, {"key": b"k", "value": b"", "context": msgpack.packb([["n", 0]])},
         ErrorCode.BAD_CONTEXT),
        (Op.PUT, {"key": b"k", "value": b"", "context": 5}, ErrorCode.BAD_REQUEST),
        (Op.HELLO, {"versions": [1]}, ErrorCode.BAD_REQUEST),
        (999, {}, ErrorCode.UNKNOWN_OP),
    ],
)
def test_bad_requests_get_errors_and_the_node_keeps_going(op: int, args: dict[str, Any],
                                                          code: ErrorCode) -> None:
    h = Harness(limits=Limits(max_key_bytes=32, max_value_bytes=64))
    assert h.error(op, **args)["code"] == code
    assert h.node.drain_outbox() == []  # not fatal: the connection stays open
    h.call(Op.PUT, key=b"k", value=b"ok")
    assert h.call(Op.GET, key=b"k")["values"] == [b"ok"]


@given(st.binary(max_size=64) | st.lists(st.integers() | st.binary(max_size=4), max_size=6))
def test_arbitrary_bodies_never_raise(body: Any) -> None:
    h = Harness()
    out = h.raw(body)
    assert out is None or out[0] in (RESPONSE, ERROR)


def test_group_commit_acks_only_after_sync() -> None:
    h = Harness("group")
    for i in range(3):
        h.rid += 1
        assert h.raw([0, h.rid, int(Op.PUT), {"key": b"k%d" % i, "value": b"v"}]) is None
    effects = h.node.drain_outbox()
    assert [e for e in effects if isinstance(e, RequestSync)] == [RequestSync(1), RequestSync(2),
                                                                  RequestSync(3)]
    assert h.node.inflight(1) == 3
    h.node.on_sync_complete(2, 0.0)
    replies = h.node.drain_outbox()
    assert [decode(r.frame)[1] for r in replies if isinstance(r, ClientReply)] == [2, 3]
    h.node.on_sync_complete(3, 0.0)
    assert len(h.node.drain_outbox()) == 1 and h.node.inflight(1) == 0


def test_duplicate_inflight_request_id() -> None:
    h = Harness("group")
    assert h.raw([0, 42, int(Op.PUT), {"key": b"k", "value": b"v"}]) is None
    err = h.raw([0, 42, int(Op.PUT), {"key": b"k", "value": b"w"}])
    assert err[2]["code"] == ErrorCode.DUPLICATE_REQUEST_ID


def test_sync_failure_makes_node_read_only_and_fails_pending() -> None:
    h = Harness("group")
    h.rid += 1
    assert h.raw([0, h.rid, int(Op.PUT), {"key": b"k", "value": b"v"}]) is None
    h.node.drain_outbox()
    h.node.on_sync_failed("EIO", 0.0)
    (reply,) = h.node.drain_outbox()
    assert isinstance(reply, ClientReply)
    assert decode(reply.frame)[2]["code"] == ErrorCode.STORAGE_ERROR
    assert h.error(Op.PUT, key=b"k", value=b"v")["code"] == ErrorCode.STORAGE_ERROR
    assert h.call(Op.GET, key=b"k")["values"] == [b"v"]  # reads still served
    assert h.call(Op.STATUS)["read_only"]


def test_disconnect_drops_replies_but_keeps_the_write() -> None:
    h = Harness("group")
    h.rid += 1
    h.raw([0, h.rid, int(Op.PUT), {"key": b"k", "value": b"v"}])
    h.node.drain_outbox()
    h.node.client_disconnected(1, 0.0)
    h.node.on_sync_complete(1, 0.0)
    assert h.node.drain_outbox() == []
    assert h.engine.get(b"k") is not None


def test_interval_policy_acks_at_once_and_syncs_on_timer() -> None:
    h = Harness("interval:100")
    h.call(Op.PUT, key=b"k", value=b"v")
    assert h.node.drain_outbox() == []
    assert h.node.next_deadline() == pytest.approx(0.1)
    h.node.handle_timer(0.1)
    assert h.node.drain_outbox() == [RequestSync(1)]
    assert h.node.next_deadline() == pytest.approx(0.2)


def test_storage_error_on_write_is_reported() -> None:
    class FullEngine(MemoryEngine):
        def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
            raise OSError(28, "No space left on device")

    node = Node(NodeConfig(name="n1", durability=Durability("none")), FullEngine(),
                random.Random(0), 0.0)
    node.client_connected(1, 0.0)
    node.client_request(1, [0, 1, int(Op.HELLO), {"versions": [1]}], 0.0)
    body = decode(node.client_request(1, [0, 2, int(Op.PUT), {"key": b"k", "value": b"v"}], 0.0)
                  or b"")
    assert body[2]["code"] == ErrorCode.STORAGE_ERROR
    assert "No space" in body[2]["message"]


peer_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.binary(max_size=8)
    | st.text(max_size=8),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "key", "state", "hint_for", "ok", "op", "args", "members",
                         "name", "address", "meta", "body"]), ch, max_size=6),
    max_leaves=12,
)


@given(st.lists(st.tuples(st.integers(0, 25), peer_values), max_size=8))
def test_arbitrary_peer_messages_never_raise(msgs: list[tuple[int, Any]]) -> None:
    h = Harness()
    h.node.client_connected(2, 0.0)
    assert h.node.client_request(2, [0, 1, 0, {"versions": [1], "peer": "n2"}], 0.0)
    for mtype, body in msgs:
        assert h.node.client_request(2, [3, "n2", mtype, body], 0.0) is None
        assert h.node.client_request(2, [3, "spoofed", mtype, body], 0.0) is None
    h.node.handle_timer(1e9)
    h.node.check_invariants()
    h.call(Op.PUT, key=b"still", value=b"serving")
    assert h.call(Op.GET, key=b"still")["values"] == [b"serving"]


def test_peer_frame_of_one_message_is_the_plain_frame_and_of_several_a_batch() -> None:
    prefix = frame_prefix("n1")
    get = pack_message(PeerMsg.REPLICA_GET, {"id": 1, "key": b"k"})
    ack = pack_message(PeerMsg.REPLICA_PUT_ACK, {"id": 2, "ok": True})
    assert peer_frame(prefix, [get]) == encode_peer("n1", PeerMsg.REPLICA_GET,
                                                    {"id": 1, "key": b"k"})
    for n in (2, 15, 16, 70_000):
        msgs = [get, ack] * (n // 2)
        assert decode(peer_frame(prefix, msgs)) == [3, "n1", PeerMsg.BATCH, {"msgs": [
            [PeerMsg.REPLICA_GET, {"id": 1, "key": b"k"}],
            [PeerMsg.REPLICA_PUT_ACK, {"id": 2, "ok": True}]] * (n // 2)}]


def test_a_batch_is_handled_in_order_and_its_replies_share_one_frame() -> None:
    h = Harness()
    node = h.node
    node.client_connected(2, 0.0)
    node.client_request(2, [0, 1, 0, {"versions": [1], "peer": "n2"}], 0.0)
    node.client_request(2, [3, "n2", int(PeerMsg.JOIN),
                            {"name": "n2", "address": "10.0.0.2:7001", "meta": {}}], 0.0)
    node.drain_outbox()
    state = [["n2@1", 1, [b"v"]]]
    batch = {"msgs": [
        [int(PeerMsg.REPLICA_GET), {"id": 7, "key": b"k"}],
        [int(PeerMsg.REPLICA_PUT), {"id": 0, "key": b"k", "state": state}],
        "not a message",
        [int(PeerMsg.BATCH), {"msgs": []}],
        [int(PeerMsg.REPLICA_GET), {"id": 8, "key": b"k"}],
    ]}
    assert node.counters["peer_malformed"] == 0
    assert node.client_request(2, [3, "n2", int(PeerMsg.BATCH), batch], 0.0) is None
    assert node.counters["peer_malformed"] == 2
    (sent,) = node.drain_outbox()
    assert isinstance(sent, PeerSend) and sent.address == "10.0.0.2:7001"
    _, sender, mtype, body = decode(sent.frame)
    assert (sender, mtype) == ("n1", PeerMsg.BATCH)
    assert body["msgs"] == [
        [PeerMsg.REPLICA_GET_REPLY, {"id": 7, "ok": True, "state": None}],
        [PeerMsg.REPLICA_GET_REPLY, {"id": 8, "ok": True, "state": state}],
    ]


def test_a_record_changed_behind_the_node_is_decoded_afresh() -> None:
    # Decoded states are remembered by their stored bytes: a record replaced by other
    # means (a restore, a repair of the file) must never be answered from memory.
    h = Harness()
    h.call(Op.PUT, key=b"k", value=b"old")
    assert h.call(Op.GET, key=b"k")["values"] == [b"old"]
    h.engine.put(b"k", b"", msgpack.packb([["other@1", 1, [b"new"]]], use_bin_type=True))
    assert h.call(Op.GET, key=b"k")["values"] == [b"new"]


def test_messages_for_one_peer_are_split_into_frames_the_peer_accepts() -> None:
    h = Harness(limits=Limits(max_frame_bytes=4096, max_value_bytes=1024))
    node = h.node
    bodies = [{"id": i, "data": bytes([i]) * 500} for i in range(20)]
    for body in bodies:
        node._send_address("10.0.0.2:7001", PeerMsg.GOSSIP, body)
    sent = node.drain_outbox()
    assert len(sent) > 1
    got = []
    for eff in sent:
        assert isinstance(eff, PeerSend) and eff.address == "10.0.0.2:7001"
        assert len(eff.frame) - 4 <= 4096
        _, _, mtype, body = decode(eff.frame)
        got.extend(body["msgs"] if mtype == PeerMsg.BATCH else [[mtype, body]])
    assert got == [[PeerMsg.GOSSIP, b] for b in bodies]
    assert node.drain_outbox() == []


def test_held_peer_messages_go_out_together_with_the_next_full_drain() -> None:
    h = Harness()
    node = h.node
    node._send_address("10.0.0.2:7001", PeerMsg.GOSSIP, {"id": 1})
    node.client_connected(9, 0.0)
    node.client_request(9, [0, 1, 0, {"versions": [99]}], 0.0)  # closes the connection
    held = node.drain_outbox(hold_peers=True)
    assert [type(eff) for eff in held] == [CloseConnection]
    node._send_address("10.0.0.2:7001", PeerMsg.GOSSIP, {"id": 2})
    (sent,) = node.drain_outbox()
    assert isinstance(sent, PeerSend)
    _, _, mtype, body = decode(sent.frame)
    assert mtype == PeerMsg.BATCH
    assert body["msgs"] == [[PeerMsg.GOSSIP, {"id": 1}], [PeerMsg.GOSSIP, {"id": 2}]]


def test_a_late_copy_of_a_reaped_key_loses_what_the_tombstone_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ringfs.node as node_module
    from ringfs.dvv import DVVSet

    h = Harness()
    node = h.node
    old = DVVSet.new("a@1", b"old")
    tomb = old.update(old.context(), None, "b@1")  # a delete that saw "old"
    node._merge_local(b"k", tomb, None)
    node._reap_local(b"k", tomb)
    assert h.engine.get(b"k") is None
    # A hint or repair sent before the delete arrives after the reap: ignored.
    assert node._merge_local(b"k", old, None) is None
    assert h.engine.get(b"k") is None
    assert h.call(Op.GET, key=b"k")["values"] == []
    # A write the tombstone never saw is kept, without the deleted value.
    assert node._merge_local(b"k", old.sync(DVVSet.new("c@1", b"new")), None) is not None
    assert h.call(Op.GET, key=b"k")["values"] == [b"new"]
    # A write coordinated here afterwards covers the tombstone's clock.
    h.call(Op.PUT, key=b"k2", value=b"x")
    h.call(Op.DELETE, key=b"k2", context=h.call(Op.GET, key=b"k2")["context"])
    tomb2 = node._load(b"k2")
    assert tomb2 is not None
    node._reap_local(b"k2", tomb2)
    h.call(Op.PUT, key=b"k2", value=b"y")
    stored = node._load(b"k2")
    assert stored is not None and stored.descends(tomb2)
    # The clocks are on disk too: a restarted node remembers them, oldest first.
    again = Node(node.config, h.engine, random.Random(1), 1.0, epoch=2)
    assert list(again._reaped_clocks) == [b"k", b"k2"]
    assert again._reaped_clocks[b"k"] == DVVSet((("a@1", 1, ()), ("b@1", 1, ())))
    assert again._merge_local(b"k", old, None) is None  # still ignored after the restart
    assert again.status(1.0)["storage"]["keys"] == 2  # k (the new write) and k2
    # Only the newest clocks are kept, in memory and on disk.
    monkeypatch.setattr(node_module, "MAX_REAPED_CLOCKS", 2)
    for key in (b"r1", b"r2", b"r3"):
        t = DVVSet.new("a@1", None)
        node._merge_local(key, t, None)
        node._reap_local(key, t)
    assert set(node._reaped_clocks) == {b"r2", b"r3"}
    assert sorted(h.engine.keys_with_prefix(node_module.REAPED_PREFIX)) == [
        node_module.REAPED_PREFIX + b"r2", node_module.REAPED_PREFIX + b"r3"]


def test_a_reaped_clock_is_kept_in_memory_when_the_disk_refuses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ringfs.node as node_module
    from ringfs.dvv import DVVSet

    class Refusing(MemoryEngine):
        def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
            if key.startswith(node_module.REAPED_PREFIX):
                raise OSError(28, "No space left on device")
            return super().put(key, value, meta)

        def purge(self, key: bytes) -> None:
            if key.startswith(node_module.REAPED_PREFIX):
                raise OSError(5, "Input/output error")
            super().purge(key)

    monkeypatch.setattr(node_module, "MAX_REAPED_CLOCKS", 1)
    node = Node(NodeConfig(name="n1", gossip="off"), Refusing(), random.Random(0), 0.0)
    for key in (b"a", b"b"):  # the second also evicts the first, on disk too
        t = DVVSet.new("x@1", None)
        node._merge_local(key, t, None)
        node._reap_local(key, t)
    assert list(node._reaped_clocks) == [b"b"]
    assert node.counters["storage_errors"] == 2


def test_an_unreadable_saved_reaped_clock_is_skipped() -> None:
    import ringfs.node as node_module

    engine = MemoryEngine()
    engine.put(node_module.REAPED_PREFIX + b"bad", b"\xc1")
    engine.put(node_module.REAPED_PREFIX + b"good", encode_context({"a@1": 3}))
    node = Node(NodeConfig(name="n1", gossip="off"), engine, random.Random(0), 0.0)
    assert list(node._reaped_clocks) == [b"good"]
    assert node.counters["reaped_clock_unreadable"] == 1


def test_a_node_given_seeds_that_knows_nobody_yet_refuses_to_own_every_key() -> None:
    # Restarted while cut off with its saved view lost, a node of a bigger cluster must
    # not take writes as the only replica of every key: the cluster's reads look elsewhere.
    h = Harness(seeds=("127.0.0.1:7999",))
    for op, args in ((Op.PUT, {"key": b"k", "value": b"v", "w": 1}),
                     (Op.GET, {"key": b"k", "r": 1}),
                     (Op.DELETE, {"key": b"k", "w": 1})):
        err = h.error(op, **args)
        assert err["code"] == ErrorCode.UNAVAILABLE and err["executed"] is False, err
    assert h.engine.get(b"k") is None
    import hashlib
    data = b"chunk"
    digest = hashlib.sha256(data).digest()
    for op, args in ((Op.CHUNK_PUT, {"hash": digest, "data": data}),
                     (Op.CHUNK_HAVE, {"hashes": [digest]}),
                     (Op.CHUNK_GET, {"hash": digest})):
        h.rid += 1
        body = h.raw([0, h.rid, int(op), args])
        assert body[0] == ERROR and body[1] == h.rid, body  # under the request's own id
        assert body[2]["code"] == ErrorCode.UNAVAILABLE, body
    assert h.node.inflight(1) == 0
    # Without seeds a node is a cluster of one and serves at once.
    alone = Harness()
    alone.call(Op.PUT, key=b"k", value=b"v")
    assert alone.call(Op.GET, key=b"k")["values"] == [b"v"]


def test_a_saved_membership_view_is_synced_at_once() -> None:
    engine = MemoryEngine()
    node = Node(NodeConfig(name="n1", durability=Durability.parse("group"), gossip="local"),
                engine, random.Random(0), 0.0)
    node.drain_outbox()
    node._view_save_at = 0.0
    node.on_view_save_timeout(0.0)
    rec = engine.get(b"\x00lview")
    assert rec is not None
    assert any(type(e) is RequestSync and e.seq >= rec.seq for e in node.drain_outbox())


def _replica_puts(node: Node) -> list[dict[str, Any]]:
    """The REPLICA_PUT bodies among the node's effects, drained."""
    out: list[dict[str, Any]] = []
    for eff in node.drain_outbox():
        if isinstance(eff, PeerSend):
            _, _, mtype, body = decode(eff.frame)
            msgs = body["msgs"] if mtype == PeerMsg.BATCH else [[mtype, body]]
            out += [m[1] for m in msgs if m[0] == PeerMsg.REPLICA_PUT]
    return out


def test_a_write_over_the_coordinators_copy_names_that_copy_as_its_base() -> None:
    h = Harness()
    node = h.node
    for conn, name in ((2, "n2"), (3, "n3")):
        node.client_connected(conn, 0.0)
        node.client_request(conn, [0, 1, 0, {"versions": [1], "peer": name}], 0.0)
        node.client_request(conn, [3, name, int(PeerMsg.JOIN), {
            "name": name, "address": f"10.0.0.{conn}:7001", "meta": {}}], 0.0)
    node.drain_outbox()
    assert h.raw([0, 1, int(Op.PUT), {"key": b"k", "value": b"v1"}]) is None  # awaits W=2
    first = _replica_puts(node)
    assert len(first) == 2 and not any("base" in b for b in first)  # nothing here before
    rec = h.engine.get(b"k")
    assert rec is not None
    assert h.raw([0, 2, int(Op.PUT), {"key": b"k", "value": b"v2"}]) is None
    second = _replica_puts(node)
    assert len(second) == 2 and all(b["base"] == rec.meta for b in second)
    stored = h.engine.get(b"k")
    assert stored is not None and DVVSet.from_wire(second[0]["state"]) == decode_stored(
        stored.meta)
    # Over a copy whose key was reaped here, the write is also made over the reaped
    # clock: not an update of the stored bytes alone, so no base is named.
    tomb = DVVSet.new("a@1", None)
    node._merge_local(b"r", tomb, None)
    node._reap_local(b"r", tomb)
    node._merge_local(b"r", DVVSet.new("b@1", b"later"), None)
    node.drain_outbox()
    assert h.raw([0, 3, int(Op.PUT), {"key": b"r", "value": b"v3"}]) is None
    third = _replica_puts(node)
    assert len(third) == 2 and not any("base" in b for b in third)


def test_a_replica_holding_a_writes_base_takes_the_write_as_it_came(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ringfs.node as node_module
    from ringfs.node import _Stale

    h = Harness()
    node = h.node
    base = DVVSet.new("a@1", b"old")
    node._merge_local(b"k", base, None)
    rec = h.engine.get(b"k")
    assert rec is not None
    decoded: list[bytes] = []
    real_decode = node_module.decode_stored
    monkeypatch.setattr(node_module, "decode_stored",
                        lambda meta: decoded.append(meta) or real_decode(meta))
    new = base.overwrite(b"new", "b@1")
    assert node._merge_local(b"k", DVVSet.from_wire(new.to_wire()), None, checked=True,
                             base=rec.meta) is not None
    assert decoded == []  # neither decoded nor merged: stored as it came
    assert node._load(b"k") == new == base.sync(new)
    # Any other base is no promise: the write is merged and checked as usual. Here the
    # copy holds a value the write has not seen, so the checked write is refused.
    node._merge_local(b"k2", DVVSet.new("a@1", b"x"), None)
    with pytest.raises(_Stale):
        node._merge_local(b"k2", DVVSet.new("b@1", b"y"), None, checked=True, base=rec.meta)
    assert decoded
    # A key reaped here is merged with its reaped clock, base or not.
    tomb = base.update(base.context(), None, "c@1")
    node._merge_local(b"r", tomb, None)
    node._reap_local(b"r", tomb)
    node._merge_local(b"r", DVVSet.new("d@1", b"later"), None)
    later = h.engine.get(b"r")
    assert later is not None
    decoded.clear()
    node._merge_local(b"r", base.sync(DVVSet.new("d@1", b"later")).overwrite(b"z", "e@1"),
                      None, base=later.meta)
    assert decoded  # the merge path, which applies the reaped clock
