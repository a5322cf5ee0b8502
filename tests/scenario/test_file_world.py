"""Files in the simulated world: uploads and downloads through crashes, corruption and
repair, resumable uploads, bad input, full disks, and garbage collection that never
takes a chunk an upload in progress still needs."""

from __future__ import annotations

import errno
import hashlib
from typing import Any

import msgpack

from ringfs.dvv import decode_stored
from ringfs.files import (
    CHUNK_PREFIX,
    Manifest,
    chunk_data,
    chunk_key,
    chunk_state,
    pick_version,
)
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import Op
from simulations.world import SimClient, SimWorld
from tests.scenario.test_replication import client, ok

CS = 64
"""Chunk size in these tests: small, so a file of a few KiB has dozens of chunks."""
GC = {"gc_grace_s": 30.0, "gc_interval_s": 10.0}


def cluster(n: int, seed: int = 1, engine_factory: Any = None, **defaults: Any) -> SimWorld:
    w = SimWorld(seed, node_defaults={**GC, **defaults}, engine_factory=engine_factory)
    for i in range(n):
        w.add_node(f"n{i + 1}")
    w.run_for(1.0)
    return w



def err(result: tuple[str, Any]) -> str:
    outcome, payload = result
    assert outcome == "error", result
    return str(payload["name"])


def split(data: bytes) -> list[bytes]:
    return [data[i:i + CS] for i in range(0, len(data), CS)]


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def send_chunks(c: SimClient, chunks: list[bytes]) -> int:
    """The resumable part of an upload: ask what is held, send the rest; returns sent."""
    unique = sorted({sha(x) for x in chunks})
    held = dict(zip(unique, ok(c.call(Op.CHUNK_HAVE, {"hashes": unique}))["held"],
                    strict=True))
    sent = 0
    for x in chunks:
        d = sha(x)
        if not held[d]:
            ok(c.call(Op.CHUNK_PUT, {"hash": d, "data": x}))
            held[d] = True
            sent += 1
    return sent


def commit_args(name: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": sha(data), "chunk_size": CS,
            "chunks": b"".join(sha(x) for x in split(data)), "meta": {"k": "v"},
            "mtime": 1.0, **extra}


def upload(c: SimClient, name: str, data: bytes, **extra: Any) -> int:
    sent = send_chunks(c, split(data))
    ok(c.call(Op.FILE_COMMIT, commit_args(name, data, **extra)))
    return sent


def download(c: SimClient, name: str) -> bytes | None:
    st = ok(c.call(Op.FILE_STAT, {"name": name}))
    if not st["found"]:
        return None
    m = pick_version([Manifest.from_wire(v, 1 << 30) for v in st["versions"]])
    out = b"".join(ok(c.call(Op.CHUNK_GET, {"hash": d}))["data"] for d in m.digests)
    assert sha(out) == m.sha256
    return out


def holders(w: SimWorld, digest: bytes) -> list[str]:
    return sorted(n for n, sn in w.nodes.items() if chunk_key(digest) in sn.engine)


def payload(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:size])


def corrupt(w: SimWorld, node: str, digest: bytes) -> None:
    eng = w.nodes[node].engine
    k = chunk_key(digest)
    rec = eng.get(k)
    assert rec is not None
    bad = msgpack.packb(chunk_state(b"\xff" * 10).to_wire(), use_bin_type=True)
    eng._data[k] = rec._replace(meta=bad)


# -- uploads and downloads ---------------------------------------------------------------

def test_a_file_round_trips_with_identical_chunks_stored_once() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(40 * CS + 7) + b"\x00" * (3 * CS)  # three equal chunks at the end
    sent = upload(c, "docs/a.bin", data)
    assert sent == len({sha(x) for x in split(data)}) < len(split(data))
    assert download(client(w, "n2"), "docs/a.bin") == data
    w.run_for(1.0)
    zero = sha(b"\x00" * CS)
    assert holders(w, zero) == ["n1", "n2", "n3"]
    # Every copy of a chunk is the same state: anti-entropy sees equal hashes.
    recs = {w.nodes[n].engine.get(chunk_key(zero)).meta for n in w.nodes}  # type: ignore[union-attr]
    assert len(recs) == 1
    st = ok(c.call(Op.FILE_STAT, {"name": "docs/a.bin"}))
    assert st["versions"][0]["meta"] == {"k": "v"} and st["versions"][0]["size"] == len(data)
    # Chunk writes are forgotten once answered, not kept until their timeouts.
    assert all(not sn.node.files._writes for sn in w.nodes.values())


def test_upload_and_download_survive_a_crashed_replica_and_hints_go_home() -> None:
    w = cluster(4)
    c = client(w, "n1")
    w.crash("n4")
    w.run_for(15.0)  # gossip declares it dead: fallbacks take its chunks as hints
    data = payload(30 * CS, seed=1)
    upload(c, "f", data)
    assert download(client(w, "n2"), "f") == data
    w.restart("n4")
    w.run_for(20.0)
    ring = w.nodes["n1"].node.membership.ring
    for x in split(data):
        owners = set(ring.preference_list(chunk_key(sha(x)), 3))
        assert owners <= set(holders(w, sha(x))), "hinted chunks did not reach their owners"


def test_an_interrupted_upload_resumes_and_is_never_visible_half_written() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(50 * CS, seed=2)
    chunks = split(data)
    assert send_chunks(c, chunks[:20]) == 20  # ... and the client dies here
    assert ok(c.call(Op.FILE_STAT, {"name": "big"}))["found"] is False
    assert ok(c.call(Op.FILE_LIST, {"prefix": ""}))["names"] == []
    # A commit that names chunks the cluster lacks is refused: nothing becomes visible.
    assert err(c.call(Op.FILE_COMMIT, commit_args("big", data))) == "MISSING_CHUNKS"
    assert ok(c.call(Op.FILE_STAT, {"name": "big"}))["found"] is False
    c2 = client(w, "n2")
    assert upload(c2, "big", data) == 30  # only what was missing
    assert download(c, "big") == data
    assert ok(c.call(Op.FILE_LIST, {"prefix": "b"}))["names"] == ["big"]


def test_ranged_chunk_reads() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(3 * CS)
    upload(c, "r", data)
    d = sha(data[CS:2 * CS])
    got = ok(c.call(Op.CHUNK_GET, {"hash": d, "offset": 5, "length": 10}))
    assert got["data"] == data[CS + 5:CS + 15] and got["size"] == CS


def test_concurrent_uploads_of_one_name_become_siblings() -> None:
    w = cluster(3)
    a, b = client(w, "n1"), client(w, "n2")
    upload(a, "s", b"one" * 40, context=b"", mtime=1.0)
    upload(b, "s", b"two" * 40, context=b"", mtime=2.0)
    st = ok(a.call(Op.FILE_STAT, {"name": "s"}))
    assert len(st["versions"]) == 2
    assert download(a, "s") == b"two" * 40  # the latest upload by its uploader's clock
    upload(a, "s", b"merged", context=st["context"])
    assert len(ok(a.call(Op.FILE_STAT, {"name": "s"}))["versions"]) == 1


# -- corruption and repair ------------------------------------------------------------------

def test_a_corrupted_local_copy_is_served_from_another_replica_and_repaired() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(4 * CS, seed=3)
    upload(c, "c", data)
    w.run_for(1.0)
    d = sha(data[:CS])
    corrupt(w, "n1", d)
    assert ok(c.call(Op.CHUNK_GET, {"hash": d}))["data"] == data[:CS]
    w.run_for(1.0)
    rec = w.nodes["n1"].engine.get(chunk_key(d))
    assert rec is not None and chunk_data(decode_stored(rec.meta)) == data[:CS]
    assert w.nodes["n1"].node.counters["chunk_corrupt_local"] == 1


def test_a_replica_returning_bad_bytes_is_skipped_and_repaired() -> None:
    w = cluster(4)
    data = payload(CS, seed=4)
    d = sha(data)
    ring = w.nodes["n1"].node.membership.ring
    owners = ring.preference_list(chunk_key(d), 3)
    outsider = next(n for n in w.nodes if n not in owners)
    c = client(w, outsider)
    upload(c, "x", data)
    w.run_for(1.0)
    first = owners[0]
    corrupt(w, first, d)
    assert ok(c.call(Op.CHUNK_GET, {"hash": d}))["data"] == data
    w.run_for(1.0)
    rec = w.nodes[first].engine.get(chunk_key(d))
    assert rec is not None and chunk_data(decode_stored(rec.meta)) == data
    assert w.nodes[outsider].node.counters["chunk_corrupt_remote"] >= 1


def test_bad_chunks_never_enter_a_replica_through_any_path() -> None:
    w = cluster(3)
    node = w.nodes["n2"].node
    bad = chunk_state(b"not the bytes the key names")
    try:
        node._merge_local(chunk_key(sha(b"something else")), bad, None)
    except Exception as exc:
        assert "SHA-256" in str(exc)
    else:
        raise AssertionError("a chunk with the wrong bytes was stored")


# -- bad input ------------------------------------------------------------------------------

def test_lying_uploads_get_clear_errors_and_leave_nothing_visible() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(5 * CS, seed=5)
    assert err(c.call(Op.CHUNK_PUT, {"hash": sha(b"x"), "data": b"y"})) == "CHECKSUM_MISMATCH"
    send_chunks(c, split(data))
    # Lies about the size: more bytes than the chunks hold, or a count that does not fit.
    assert err(c.call(Op.FILE_COMMIT, commit_args("l", data, size=len(data) - 1))) \
        == "BAD_MANIFEST"
    assert err(c.call(Op.FILE_COMMIT, commit_args("l", data, size=len(data) + CS))) \
        == "BAD_MANIFEST"
    short = data[:-1]
    assert err(c.call(Op.FILE_COMMIT, {**commit_args("l", data), "size": len(short)})) \
        == "BAD_MANIFEST"
    assert err(c.call(Op.FILE_COMMIT, commit_args("a\x00b", data))) == "BAD_REQUEST"
    assert err(c.call(Op.FILE_COMMIT, commit_args("x" * 600, data))) == "KEY_TOO_LARGE"
    assert err(c.call(Op.FILE_STAT, {"name": ""})) == "KEY_TOO_LARGE"
    assert ok(c.call(Op.FILE_LIST, {}))["names"] == []
    # Limits count UTF-8 bytes, as documented: 300 characters of two bytes each.
    assert err(c.call(Op.FILE_LIST, {"prefix": "\u00e9" * 300})) == "BAD_REQUEST"
    assert err(c.call(Op.FILE_COMMIT, commit_args("l", data, mtime=float("nan")))) \
        == "BAD_MANIFEST"
    # The node keeps serving.
    ok(c.call(Op.FILE_COMMIT, commit_args("l", data)))
    assert download(c, "l") == data


class FullDisk(MemoryEngine):
    """A disk that has no room for chunks."""

    def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
        if key.startswith(CHUNK_PREFIX):
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().put(key, value, meta)


def test_full_disks_give_clear_errors_and_the_nodes_keep_serving() -> None:
    full = {"n2", "n3"}
    w = cluster(3, engine_factory=lambda name: FullDisk() if name in full else MemoryEngine())
    c = client(w, "n1")
    outcome, e = c.call(Op.CHUNK_PUT, {"hash": sha(b"abc"), "data": b"abc"})
    assert outcome == "error" and e["name"] == "QUORUM_NOT_MET"
    assert "No space left on device" in e["message"]
    assert err(c.call(Op.FILE_COMMIT, commit_args("full", b"abc"))) == "MISSING_CHUNKS"
    assert ok(c.call(Op.FILE_STAT, {"name": "full"}))["found"] is False
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    assert ok(client(w, "n2").call(Op.GET, {"key": b"k"}))["values"] == [b"v"]
    # With one full replica of three, W=2 is still met.
    full.discard("n3")
    w2 = cluster(3, engine_factory=lambda name: FullDisk() if name in full else MemoryEngine())
    c2 = client(w2, "n1")
    upload(c2, "ok", b"abc" * 30)
    assert download(c2, "ok") == b"abc" * 30


# -- garbage collection ---------------------------------------------------------------------

def test_deleted_files_chunks_are_collected_but_shared_ones_stay() -> None:
    w = cluster(3)
    c = client(w, "n1")
    shared = payload(CS, seed=9)
    gone = payload(4 * CS, seed=10) + shared
    keep = shared + payload(CS, seed=11)
    upload(c, "gone", gone)
    upload(c, "keep", keep)
    ctx = ok(c.call(Op.FILE_STAT, {"name": "gone"}))["context"]
    ok(c.call(Op.FILE_DELETE, {"name": "gone", "context": ctx}))
    w.run_for(GC["gc_grace_s"] + 4 * GC["gc_interval_s"])
    for x in split(gone)[:4]:
        assert holders(w, sha(x)) == [], "an unreferenced chunk survived"
    assert holders(w, sha(shared)) == ["n1", "n2", "n3"]
    assert download(c, "keep") == keep
    assert sum(sn.node.counters["chunks_collected"] for sn in w.nodes.values()) == 12


def test_gc_never_takes_a_chunk_an_upload_in_progress_keeps_checking() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(6 * CS, seed=12)
    chunks = split(data)
    send_chunks(c, chunks)
    # A slow upload: far longer than the grace period, checking its chunks as it goes
    # (every resumed run does), while sweeps run all along.
    for _ in range(8):
        w.run_for(GC["gc_grace_s"] / 2)
        assert all(ok(c.call(Op.CHUNK_HAVE, {"hashes": [sha(x) for x in chunks]}))["held"])
    ok(c.call(Op.FILE_COMMIT, commit_args("slow", data)))
    w.run_for(GC["gc_grace_s"] + 4 * GC["gc_interval_s"])
    assert download(c, "slow") == data
    assert sum(sn.node.counters["gc_sweeps"] for sn in w.nodes.values()) > 0


def test_an_abandoned_upload_is_collected_and_a_late_commit_is_refused() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(3 * CS, seed=13)
    send_chunks(c, split(data))
    w.run_for(GC["gc_grace_s"] + 4 * GC["gc_interval_s"])
    assert all(holders(w, sha(x)) == [] for x in split(data))
    assert err(c.call(Op.FILE_COMMIT, commit_args("late", data))) == "MISSING_CHUNKS"
    assert ok(c.call(Op.FILE_STAT, {"name": "late"}))["found"] is False
    assert upload(c, "late", data) == 3
    assert download(c, "late") == data


def test_gc_waits_for_every_member() -> None:
    w = cluster(3)
    c = client(w, "n1")
    data = payload(2 * CS, seed=14)
    send_chunks(c, split(data))
    w.crash("n3")
    w.run_for(GC["gc_grace_s"] + 4 * GC["gc_interval_s"])
    assert all(holders(w, sha(x)) == ["n1", "n2", "n3"] for x in split(data))
    assert w.nodes["n1"].node.counters["gc_sweeps_postponed"] > 0


def test_a_slow_replica_is_left_behind_not_buffered_for(monkeypatch: Any) -> None:
    import ringfs.files as files_module

    monkeypatch.setattr(files_module, "MAX_REPLICA_BACKLOG_BYTES", 8 * CS)
    w = cluster(3)
    c = client(w, "n1")
    data = payload(40 * CS, seed=7)
    w.pause("n3", 20.0)  # n3 takes nothing in for a while; the connection stays up
    upload(c, "slow/a.bin", data)  # W=2 without n3
    files = w.nodes["n1"].node.files
    assert files.backlog_of("n3") <= 8 * CS  # bounded, not 40 chunks
    assert w.nodes["n1"].node.counters["chunk_store_skipped_behind"] > 0
    assert files.status()["replica_backlog_bytes"] == {"n3": files.backlog_of("n3")}
    # Where W needs the replica that is behind, nothing is done: OVERLOADED, retry later.
    extra = payload(CS, seed=8)
    got = c.call(Op.CHUNK_PUT, {"hash": sha(extra), "data": extra, "w": 3})
    assert got[0] == "error" and got[1]["name"] == "OVERLOADED", got
    assert holders(w, sha(extra)) == []
    w.run_for(25.0)  # n3 resumes and answers what it was sent
    assert not files._backlog
    assert download(client(w, "n3"), "slow/a.bin") == data
    w.run_for(60.0)  # anti-entropy brings n3 the chunks it was never sent
    assert all("n3" in holders(w, sha(x)) for x in split(data))


def test_files_work_when_every_key_is_last_write_wins() -> None:
    """A file's manifest is a reserved key, never last-write-wins: with the empty
    prefix it must still be found, listed and keep its chunks from collection."""
    w = cluster(3, lww_prefixes=("",), **GC)
    c = client(w, "n1")
    data = payload(5 * CS + 3)
    upload(c, "docs/lww.bin", data)
    w.run_for(GC["gc_grace_s"] + 4 * GC["gc_interval_s"])
    assert download(client(w, "n2"), "docs/lww.bin") == data
    assert all(sn.node.counters["manifest_undecodable"] == 0 for sn in w.nodes.values())
