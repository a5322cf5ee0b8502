"""Files on the ring: content-addressed chunks, causal manifests, and their garbage collection.

Theory of operation
-------------------
A file is a *manifest* plus immutable *chunks*. A chunk is at most a few MiB of
the file, stored under ``CHUNK_PREFIX + sha256(bytes)`` and placed on the ring by
that key like any other, with the same N, W, hinted handoff and anti-entropy.
Every copy of a chunk is the same deterministic version set (one constant dot,
`chunk_state`), so writing a chunk twice, or merging two replicas of it, changes
nothing: identical chunks are stored once and never have siblings. The manifest
(name, size, chunk size, chunk digests, whole-file SHA-256, user metadata) is an
ordinary causal value under ``MANIFEST_PREFIX + name``: concurrent uploads of one
name become siblings, a delete is a tombstone.

Uploading is: ask which chunks the cluster already holds (CHUNK_HAVE), send the
others (CHUNK_PUT, each acknowledged once W replicas hold it durably), then
FILE_COMMIT. The commit's coordinator checks again that every chunk is durably
held by at least W replicas, with the sizes the manifest implies, before it
writes the manifest; so no reader can ever see a manifest whose chunks are
missing, and an interrupted upload leaves nothing visible. Running the upload
again sends only what is missing.

Chunks are verified (SHA-256) whenever they are written, by the coordinator and
by every replica, and whenever they are read: a coordinator serving a chunk
tries its replicas one at a time until one returns the right bytes, then
rewrites every replica that returned bad bytes or none.

Garbage collection (docs/design.md has the safety argument): every node
remembers when each of its chunks was last *touched* (written, or found by a
HAVE check), in memory; a chunk it has not seen touched since it started counts
as touched at start. Every `gc_interval_s` a node takes its chunks untouched for
`gc_grace_s` and asks every member which of them a live manifest it holds
references; if every member answers, chunks that nobody references in two
consecutive sweeps and that are still untouched are dropped locally.

This module is sans-IO like the Node that owns it: it is told the time, sends
through the node's outbox and keeps no socket or thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import msgpack

from ringfs.antientropy import CONTENT_ADDRESSED_PREFIX
from ringfs.dvv import DVVSet
from ringfs.errors import ErrorCode
from ringfs.peer import PeerMsg, encode_peer
from ringfs.quorum import PutCoordinator, QuorumFailure
from ringfs.ring import Replica
from ringfs.wire import Op, WireError, encode_error, encode_response, field_opt_bytes

if TYPE_CHECKING:
    from ringfs.node import Node

log = logging.getLogger("ringfs.files")

CHUNK_PREFIX = CONTENT_ADDRESSED_PREFIX
"""A chunk is stored under CHUNK_PREFIX + its 32-byte SHA-256 digest."""
MANIFEST_PREFIX = b"\x00f"
"""A manifest is stored under MANIFEST_PREFIX + the file name (UTF-8)."""
HINT_PREFIX = b"\x00h"
CHUNK_ACTOR = "chunk"
"""The one actor of every chunk's version set: all copies of a chunk are equal."""
DIGEST_BYTES = 32
DEFAULT_CHUNK_BYTES = 1024 * 1024
"""Chunk size clients use unless told otherwise."""
MAX_NAME_BYTES = 512
"""Longest file name, in UTF-8 bytes (it must fit a key, and a hint key around it)."""
MAX_MANIFEST_CHUNKS = 65536
"""Most chunks one manifest lists (64 GiB at the default chunk size)."""
MAX_META_ENTRIES = 64
MAX_META_BYTES = 16 * 1024
MAX_HAVE_BATCH = 1024
"""Digests one CHUNK_HAVE request may ask about."""
MAX_PEER_HAVE_ITEMS = 4096
"""Items one peer CHUNK_HAVE message carries; bigger checks are split."""
MAX_LIST = 1000
"""Names one FILE_LIST answer carries at most."""
MAX_GC_BATCH = 4096
"""Candidate chunks one sweep asks about."""
MAX_INFLIGHT_CHUNK_BYTES = 32 * 1024 * 1024
"""Chunk bytes a node coordinates at once; beyond it CHUNK_PUT answers OVERLOADED."""
MAX_REPLICA_BACKLOG_BYTES = 32 * 1024 * 1024
"""Chunk bytes sent to one replica and not yet answered, beyond which the coordinator
stops sending it chunks: it counts as a replica that refused, W is met by the others
and anti-entropy brings it the chunks later; when W cannot be met without it, new
CHUNK_PUTs get OVERLOADED (the client backs off). Without this bound a slow replica's
chunks pile up in the coordinator's send queue while W is met without it."""
MAX_SIZE_CACHE = 200_000


def chunk_key(digest: bytes) -> bytes:
    return CHUNK_PREFIX + digest


def manifest_key(name: str) -> bytes:
    return MANIFEST_PREFIX + name.encode("utf-8")


def chunk_state(data: bytes) -> DVVSet:
    """The version set every replica of a chunk holds: one fixed dot, so writes are idempotent."""
    return DVVSet(((CHUNK_ACTOR, 1, (data,)),))


def chunk_data(state: DVVSet | None) -> bytes | None:
    """The bytes a stored chunk state holds, or None if it is not a well-formed chunk."""
    if state is None or len(state.entries) != 1:
        return None
    actor, counter, vals = state.entries[0]
    if actor != CHUNK_ACTOR or counter != 1 or len(vals) != 1 or vals[0] is None:
        return None
    return vals[0]


def check_name(name: object) -> str:
    """A valid file name, or ValueError saying why not."""
    if not isinstance(name, str):
        raise ValueError("a file name is a string")
    if "\x00" in name:
        raise ValueError("file names must not contain NUL")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("file names must be valid UTF-8") from None
    if not 1 <= size <= MAX_NAME_BYTES:
        raise ValueError(f"file names are 1..{MAX_NAME_BYTES} UTF-8 bytes, got {size}")
    return name


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


@dataclass(frozen=True)
class Manifest:
    """One version of a file: what FILE_COMMIT stores and FILE_STAT returns."""

    name: str
    size: int
    sha256: bytes
    chunk_size: int
    chunks: bytes
    """The chunks' digests, concatenated (32 bytes each), in file order."""
    meta: dict[str, str] = field(default_factory=dict)
    mtime: float = 0.0
    """The uploader's wall clock at upload (seconds since the epoch); picks among siblings."""

    @property
    def digests(self) -> list[bytes]:
        c = self.chunks
        return [c[i:i + DIGEST_BYTES] for i in range(0, len(c), DIGEST_BYTES)]

    def chunk_len(self, index: int) -> int:
        """Bytes of chunk `index`: chunk_size, except the last."""
        n = len(self.chunks) // DIGEST_BYTES
        return self.chunk_size if index < n - 1 else self.size - self.chunk_size * (n - 1)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256,
                "chunk_size": self.chunk_size, "chunks": self.chunks, "meta": dict(self.meta),
                "mtime": self.mtime}

    def encode(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_wire(cls, obj: Any, max_chunk_bytes: int) -> Manifest:
        """Parse and check a manifest map (from a client or a replica); ValueError if bad."""
        if not isinstance(obj, dict):
            raise ValueError("a manifest is a map")
        name = check_name(obj.get("name"))
        size, sha, cs, chunks = (obj.get("size"), obj.get("sha256"), obj.get("chunk_size"),
                                 obj.get("chunks"))
        if type(size) is not int or not 0 <= size < 1 << 62:
            raise ValueError("'size' must be a non-negative integer")
        if type(sha) is not bytes or len(sha) != DIGEST_BYTES:
            raise ValueError("'sha256' must be 32 bytes")
        if type(cs) is not int or not 1 <= cs <= max_chunk_bytes:
            raise ValueError(f"'chunk_size' must be an integer in 1..{max_chunk_bytes}")
        if type(chunks) is not bytes or len(chunks) % DIGEST_BYTES:
            raise ValueError("'chunks' must be the concatenated 32-byte chunk digests")
        n = len(chunks) // DIGEST_BYTES
        if n > MAX_MANIFEST_CHUNKS:
            raise ValueError(f"a file has at most {MAX_MANIFEST_CHUNKS} chunks; "
                             "use a bigger chunk size")
        if n != chunk_count(size, cs):
            raise ValueError(f"a file of {size} bytes in chunks of {cs} has "
                             f"{chunk_count(size, cs)} chunks, not {n}")
        meta = obj.get("meta", {})
        if meta is None:
            meta = {}
        if (not isinstance(meta, dict) or len(meta) > MAX_META_ENTRIES
                or not all(type(k) is str and type(v) is str for k, v in meta.items())
                or sum(_utf8_len(k) + _utf8_len(v) for k, v in meta.items())
                > MAX_META_BYTES):
            raise ValueError(f"'meta' must map strings to strings, at most "
                             f"{MAX_META_ENTRIES} entries and {MAX_META_BYTES} bytes")
        mtime = obj.get("mtime", 0.0)
        if mtime is None:
            mtime = 0.0
        if type(mtime) not in (int, float) or not math.isfinite(mtime):
            # (a NaN would make pick_version's choice depend on the siblings' order)
            raise ValueError("'mtime' must be a finite number")
        return cls(name, size, sha, cs, chunks, dict(meta), float(mtime))

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        obj = msgpack.unpackb(data, raw=False)
        return cls.from_wire(obj, 1 << 31)


def _utf8_len(text: str) -> int:
    """Length in UTF-8 bytes; text that has none (lone surrogates) is longer than any
    limit."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return sys.maxsize


def pick_version(versions: list[Manifest]) -> Manifest:
    """The sibling get_file reads: the latest upload by its uploader's clock, ties by hash."""
    return max(versions, key=lambda m: (m.mtime, m.sha256, m.size))


def _digest_field(args: dict[str, Any], rid: int, name: str = "hash") -> bytes:
    d = args.get(name)
    if type(d) is not bytes or len(d) != DIGEST_BYTES:
        raise WireError(ErrorCode.BAD_REQUEST, f"'{name}' must be a 32-byte SHA-256 digest",
                        req_id=rid)
    return d


def _name_field(args: dict[str, Any], rid: int) -> str:
    try:
        return check_name(args.get("name"))
    except ValueError as exc:
        code = (ErrorCode.KEY_TOO_LARGE if isinstance(args.get("name"), str)
                and "bytes" in str(exc) else ErrorCode.BAD_REQUEST)
        raise WireError(code, str(exc), req_id=rid) from None


# -- coordinator state ---------------------------------------------------------------

@dataclass(eq=False)
class _ChunkWrite:
    conn: int
    rid: int
    coord: PutCoordinator
    size: int
    replied: bool = False
    timer: list[Any] | None = None


@dataclass(eq=False)
class _HaveCheck:
    """How many replicas durably hold each of some chunks, gathered from their replicas."""

    digests: list[bytes]
    w: int
    counts: list[int]
    sizes: list[int | None]
    outstanding: list[int]
    """Per digest, replicas asked that have not answered yet."""
    msgs: dict[int, tuple[str, list[int]]]
    """Peer message id -> (node, digest index of each item sent)."""
    done: Callable[[_HaveCheck, float], None]
    finished: bool = False

    def held(self, i: int) -> bool:
        return self.counts[i] >= self.w

    def decided(self) -> bool:
        return all(c >= self.w or c + o < self.w
                   for c, o in zip(self.counts, self.outstanding, strict=True))


@dataclass(eq=False)
class _ChunkRead:
    conn: int
    rid: int
    digest: bytes
    offset: int
    length: int | None
    candidates: list[Replica]
    next: int = 0
    failed: list[Replica] = field(default_factory=list)
    waiting: int | None = None
    """Id of the fetch in flight."""
    waiting_on: str | None = None


@dataclass(eq=False)
class _Gather:
    """A question asked of several members (file references, listings), answers merged."""

    waiting: set[str]
    answers: dict[str, Any]
    done: Callable[[_Gather, float], None]
    finished: bool = False
    failed: set[str] = field(default_factory=set)


class FileStore:
    """The file component of a Node: ops 7-13 and peer messages 40-49. See the module docstring."""

    def __init__(self, node: Node, now: float) -> None:
        self.node = node
        self.started_at = now
        self.gc_grace_s = node.config.gc_grace_s
        self.gc_interval_s = node.config.gc_interval_s
        self._touched: dict[bytes, float] = {}
        self._sizes: dict[bytes, int] = {}
        self._writes: dict[int, _ChunkWrite] = {}
        self._haves: dict[int, _HaveCheck] = {}
        """Peer message id -> the check it belongs to."""
        self._reads: dict[int, _ChunkRead] = {}
        self._fetches: dict[int, int] = {}
        """Fetch id -> the read it serves."""
        self._gathers: dict[int, _Gather] = {}
        self._inflight_bytes = 0
        self._backlog: dict[str, dict[int, tuple[int, float]]] = {}
        """Replica -> chunk write id -> (bytes, deadline): CHUNK_STOREs it has not answered."""
        self._suspects: set[bytes] = set()
        """Chunks the previous sweep found referenced by no manifest."""
        self._sweeping = False
        self._trusted: bytes | None = None
        """A chunk key whose incoming state was just verified (skip verifying it twice)."""
        node._after(now + self.gc_interval_s, self.on_gc_timeout)

    # -- registration --------------------------------------------------------------
    def handlers(self) -> dict[int, Callable[[int, int, dict[str, Any], float], bytes | None]]:
        return {
            Op.CHUNK_HAVE: self._on_chunk_have,
            Op.CHUNK_PUT: self._on_chunk_put,
            Op.CHUNK_GET: self._on_chunk_get,
            Op.FILE_COMMIT: self._on_file_commit,
            Op.FILE_STAT: self._on_file_stat,
            Op.FILE_DELETE: self._on_file_delete,
            Op.FILE_LIST: self._on_file_list,
        }

    def peer_handlers(self) -> dict[int, Callable[[str, dict[str, Any], float], None]]:
        return {
            PeerMsg.CHUNK_STORE: self.on_chunk_store,
            PeerMsg.CHUNK_STORE_ACK: self.on_chunk_store_ack,
            PeerMsg.CHUNK_HAVE: self.on_chunk_have,
            PeerMsg.CHUNK_HAVE_REPLY: self.on_chunk_have_reply,
            PeerMsg.CHUNK_FETCH: self.on_chunk_fetch,
            PeerMsg.CHUNK_FETCH_REPLY: self.on_chunk_fetch_reply,
            PeerMsg.FILE_REFS: self.on_file_refs,
            PeerMsg.FILE_REFS_REPLY: self.on_gather_reply,
            PeerMsg.FILE_LIST: self.on_file_list,
            PeerMsg.FILE_LIST_REPLY: self.on_gather_reply,
        }

    def status(self) -> dict[str, Any]:
        return {"chunk_writes": len(self._writes), "chunk_reads": len(self._reads),
                "inflight_bytes": self._inflight_bytes, "gc_suspects": len(self._suspects),
                "replica_backlog_bytes": {r: self.backlog_of(r) for r in sorted(self._backlog)}}

    # -- local chunk copies ----------------------------------------------------------
    def check_incoming(self, key: bytes, state: DVVSet) -> None:
        """Refuse a replica state for a chunk key that is not the chunk its key names."""
        if key == self._trusted or not key.startswith(CHUNK_PREFIX):
            return
        data = chunk_data(state)
        if data is None or hashlib.sha256(data).digest() != key[len(CHUNK_PREFIX):]:
            self.node.counters["chunk_checksum_mismatch"] += 1
            raise WireError(ErrorCode.CHECKSUM_MISMATCH,
                            "chunk bytes do not match their SHA-256")

    def _store_chunk(self, digest: bytes, data: bytes, hint_for: str | None,
                     now: float) -> int | None:
        """Merge a verified chunk into the local copy (raises WireError); its seq or None."""
        key = chunk_key(digest)
        self._trusted = key
        try:
            seq = self.node._merge_local(key, chunk_state(data), hint_for)
        finally:
            self._trusted = None
        if hint_for is None:
            self._touched[digest] = now
        self._note_size(digest, len(data))
        return seq

    def _note_size(self, digest: bytes, size: int) -> None:
        if len(self._sizes) >= MAX_SIZE_CACHE:
            self._sizes.clear()
        self._sizes[digest] = size

    def _read_local(self, digest: bytes, hint_for: str | None) -> bytes | None:
        """The verified bytes of a local copy; a corrupted copy is dropped and None returned."""
        node = self.node
        sk = node._stored_key(chunk_key(digest), hint_for)
        try:
            state = node._load(sk)
        except Exception:  # an undecodable record is as bad as wrong bytes
            state = DVVSet((("?", 1, (b"",)),))
        if state is None:
            return None
        data = chunk_data(state)
        if data is None or hashlib.sha256(data).digest() != digest:
            node.counters["chunk_corrupt_local"] += 1
            log.warning("local copy of chunk %s is corrupted; dropping it", digest.hex()[:16])
            node._drop_local(sk)
            self._sizes.pop(digest, None)
            return None
        self._note_size(digest, len(data))
        return data

    def _local_size(self, digest: bytes, hint_for: str | None) -> int | None:
        """Size of a local copy (None when absent), reading it only when not cached."""
        sk = self.node._stored_key(chunk_key(digest), hint_for)
        engine = self.node.engine
        present = sk in engine if hasattr(engine, "__contains__") else (
            engine.get(sk) is not None)
        if not present:
            return None
        size = self._sizes.get(digest)
        if size is not None:
            return size
        data = self._read_local(digest, hint_for)
        return None if data is None else len(data)

    def _touch(self, digest: bytes, now: float) -> None:
        self._touched[digest] = now

    def touched(self, digest: bytes) -> float:
        """When this node last saw the chunk written or checked (its start, if not since)."""
        return self._touched.get(digest, self.started_at)

    def _keys(self, prefix: bytes) -> list[bytes]:
        return self.node.engine.keys_with_prefix(prefix)

    def _manifest_keys(self) -> Iterator[bytes]:
        """Stored keys of every manifest this node holds, its own and hinted ones."""
        yield from self._keys(MANIFEST_PREFIX)
        for k in self._keys(HINT_PREFIX):
            _owner, sep, key = k[len(HINT_PREFIX):].partition(b"\x00")
            if sep and key.startswith(MANIFEST_PREFIX):
                yield k

    def _live_manifests(self, sk: bytes) -> list[Manifest]:
        state = self.node._load(sk)
        if state is None:
            return []
        out = []
        for v in state.live_values():
            try:
                out.append(Manifest.decode(v))
            except (ValueError, TypeError, msgpack.UnpackException):
                self.node.counters["manifest_undecodable"] += 1
        return out

    # -- CHUNK_PUT -------------------------------------------------------------------
    def _on_chunk_put(self, conn: int, rid: int, args: dict[str, Any],
                      now: float) -> bytes | None:
        node = self.node
        digest = _digest_field(args, rid)
        data = args.get("data")
        if type(data) is not bytes:
            raise WireError(ErrorCode.BAD_REQUEST, "'data' must be bin", req_id=rid)
        if len(data) > node.limits.max_value_bytes:
            raise WireError(ErrorCode.VALUE_TOO_LARGE, f"chunk is {len(data)} bytes, limit "
                            f"{node.limits.max_value_bytes}", req_id=rid)
        w = node._quorum_arg(args, "w", rid)
        node.counters["chunk_put"] += 1
        if hashlib.sha256(data).digest() != digest:
            node.counters["chunk_checksum_mismatch"] += 1
            raise WireError(ErrorCode.CHECKSUM_MISMATCH,
                            "the chunk's bytes do not match its SHA-256 'hash'", req_id=rid)
        if self._inflight_bytes + len(data) > MAX_INFLIGHT_CHUNK_BYTES and self._writes:
            node.counters["chunk_put_overloaded"] += 1
            raise WireError(ErrorCode.OVERLOADED, "too many chunk bytes in flight; retry",
                            req_id=rid)
        if node.read_only_reason is not None:
            raise WireError(ErrorCode.STORAGE_ERROR,
                            f"node is read-only: {node.read_only_reason}", req_id=rid)
        key = chunk_key(digest)
        apl = node._apl(key, now, rid)
        if len(apl) < w:
            raise node._too_few_up(rid, len(apl), w)
        behind = {r.node for r in apl if r.node != node.name and self._behind(r.node, now)}
        if len(apl) - len(behind) < w:
            node.counters["chunk_put_overloaded"] += 1
            raise WireError(ErrorCode.OVERLOADED, f"replica(s) {', '.join(sorted(behind))} "
                            "are behind with earlier chunks; retry", req_id=rid)
        wid = node._next_id()
        coord = PutCoordinator(key, DVVSet(), apl, w, now + node.config.request_timeout_s)
        op = _ChunkWrite(conn, rid, coord, len(data))
        self._writes[wid] = op
        self._inflight_bytes += len(data)
        node._track(conn, rid)
        op.timer = node._after(coord.deadline, partial(self._chunk_write_timeout, wid))
        frames: dict[str | None, bytes] = {}
        """The CHUNK_STORE frame per hint_for: encoded (the chunk copied) once, not per peer."""
        for rep in apl:
            if rep.node == node.name:
                try:
                    seq = self._store_chunk(digest, data, rep.hint_for, now)
                except WireError as exc:
                    self._write_refused(wid, node.name, exc.message)
                    continue
                node._hold_until_durable(seq if seq is not None else node.engine.last_seq,
                                         partial(self._write_acked, wid, node.name))
                continue
            if rep.node in behind:
                node.counters["chunk_store_skipped_behind"] += 1
                self._write_refused(wid, rep.node, "replica is behind")
                continue
            frame = frames.get(rep.hint_for)
            if frame is None:
                frame_body: dict[str, Any] = {"id": wid, "hash": digest, "data": data}
                if rep.hint_for is not None:
                    frame_body["hint_for"] = rep.hint_for
                frame = frames[rep.hint_for] = encode_peer(node.name, PeerMsg.CHUNK_STORE,
                                                           frame_body, bulk=True)
            if not node._send_encoded(rep.node, frame):
                self._write_refused(wid, rep.node, "unknown address")
                continue
            self._backlog.setdefault(rep.node, {})[wid] = (len(data), coord.deadline)
        return None

    def backlog_of(self, replica: str) -> int:
        """Chunk bytes sent to `replica` that it has not answered yet."""
        return sum(size for size, _ in self._backlog.get(replica, {}).values())

    def _behind(self, replica: str, now: float) -> bool:
        """Whether `replica` has too many chunk bytes unanswered to be sent more. Entries
        past their write's deadline are dropped first (the replica never answered)."""
        if self.backlog_of(replica) < MAX_REPLICA_BACKLOG_BYTES:
            return False
        pending = self._backlog[replica]
        for wid in [wid for wid, (_, deadline) in pending.items() if deadline <= now]:
            self._answered(replica, wid)
        return self.backlog_of(replica) >= MAX_REPLICA_BACKLOG_BYTES

    def _answered(self, replica: str, wid: int) -> None:
        """`replica` answered (or can no longer answer) chunk write `wid`."""
        pending = self._backlog.get(replica)
        if pending is not None:
            pending.pop(wid, None)
            if not pending:
                del self._backlog[replica]

    def _write_acked(self, wid: int, sender: str) -> None:
        op = self._writes.get(wid)
        if op is None:
            return
        if op.coord.on_ack(sender):
            self._reply_write(wid, op, encode_response(op.rid, {"stored": len(op.coord.acked)}))
        self._maybe_forget_write(wid, op)

    def _write_refused(self, wid: int, sender: str, reason: str) -> None:
        op = self._writes.get(wid)
        if op is None:
            return
        failure = op.coord.on_refused(sender, reason)
        if failure is not None:
            self._reply_write(wid, op, self._quorum_error(op.rid, failure))
        self._maybe_forget_write(wid, op)

    def _reply_write(self, wid: int, op: _ChunkWrite, frame: bytes) -> None:
        if op.replied:
            return
        op.replied = True
        self._inflight_bytes -= op.size
        self.node._finish(op.conn, op.rid, frame)

    def _maybe_forget_write(self, wid: int, op: _ChunkWrite) -> None:
        """Forget a chunk write once its outcome is sent (later acks change nothing)."""
        if op.coord.finished:
            self._writes.pop(wid, None)
            self.node._cancel_timer(op.timer)
            if not op.replied:
                op.replied = True
                self._inflight_bytes -= op.size

    def _chunk_write_timeout(self, wid: int, now: float) -> None:
        op = self._writes.pop(wid, None)
        if op is None:
            return
        failure = op.coord.on_timeout()
        if failure is not None:
            self._reply_write(wid, op, self._quorum_error(op.rid, failure))
        elif not op.replied:
            op.replied = True
            self._inflight_bytes -= op.size

    def _quorum_error(self, rid: int, f: QuorumFailure) -> bytes:
        return self.node._quorum_error(rid, f)

    def on_chunk_store(self, sender: str, body: dict[str, Any], now: float) -> None:
        node = self.node
        wid, digest, data = body["id"], body["hash"], body["data"]
        hint_for = body.get("hint_for")
        if (type(wid) is not int or type(digest) is not bytes or len(digest) != DIGEST_BYTES
                or type(data) is not bytes or (hint_for is not None and type(hint_for) is not str)):
            raise ValueError("bad CHUNK_STORE")
        node.membership.mark_reachable(sender)
        node.counters["chunk_store"] += 1

        def refuse(reason: str) -> None:
            if wid:
                node._send(sender, PeerMsg.CHUNK_STORE_ACK, {"id": wid, "ok": False,
                                                             "reason": reason})

        if hashlib.sha256(data).digest() != digest:
            node.counters["chunk_checksum_mismatch"] += 1
            refuse("checksum mismatch")
            return
        if body.get("repair") is True:
            self._read_local(digest, hint_for)  # drops a corrupted copy so the good one lands
        try:
            seq = self._store_chunk(digest, data, hint_for, now)
        except WireError as exc:
            refuse(exc.message)
            return
        if not wid:
            return

        def ack() -> None:
            node._send(sender, PeerMsg.CHUNK_STORE_ACK, {"id": wid, "ok": True})

        node._hold_until_durable(seq if seq is not None else node.engine.last_seq, ack)

    def on_chunk_store_ack(self, sender: str, body: dict[str, Any], now: float) -> None:
        wid, ok = body["id"], body["ok"]
        if type(wid) is not int:
            raise ValueError("bad CHUNK_STORE_ACK")
        self.node.membership.mark_reachable(sender)
        self._answered(sender, wid)
        if ok is True:
            self._write_acked(wid, sender)
        else:
            self._write_refused(wid, sender, str(body.get("reason", "refused"))[:200])

    # -- CHUNK_HAVE ------------------------------------------------------------------
    def _on_chunk_have(self, conn: int, rid: int, args: dict[str, Any],
                       now: float) -> bytes | None:
        node = self.node
        hashes = args.get("hashes")
        if (type(hashes) is not list or len(hashes) > MAX_HAVE_BATCH
                or not all(type(h) is bytes and len(h) == DIGEST_BYTES for h in hashes)):
            raise WireError(ErrorCode.BAD_REQUEST, f"'hashes' must be a list of at most "
                            f"{MAX_HAVE_BATCH} 32-byte digests", req_id=rid)
        w = node._quorum_arg(args, "w", rid)
        node.require_cluster(rid)
        node.counters["chunk_have"] += 1
        node._track(conn, rid)

        def done(check: _HaveCheck, when: float) -> None:
            self._untrack(conn, rid)
            node._finish(conn, rid, encode_response(rid, {
                "held": [check.held(i) for i in range(len(check.digests))]}))

        self.start_have(list(hashes), w, now, done)
        return None

    def _untrack(self, conn: int, rid: int) -> None:
        c = self.node._conns.get(conn)
        if c is not None and c.inflight is not None:
            c.inflight.discard(rid)

    def start_have(self, digests: list[bytes], w: int, now: float,
                   done: Callable[[_HaveCheck, float], None]) -> None:
        """Count, per digest, the replicas of its preference list that hold it durably."""
        node = self.node
        n = len(digests)
        check = _HaveCheck(digests, w, [0] * n, [None] * n, [0] * n, {}, done)
        per_node: dict[str, list[tuple[int, str | None]]] = {}
        local: list[tuple[int, str | None]] = []
        for i, d in enumerate(digests):
            for rep in node._apl(chunk_key(d), now):
                check.outstanding[i] += 1
                if rep.node == node.name:
                    local.append((i, rep.hint_for))
                else:
                    per_node.setdefault(rep.node, []).append((i, rep.hint_for))
        for dest, items in sorted(per_node.items()):
            for start in range(0, len(items), MAX_PEER_HAVE_ITEMS):
                part = items[start:start + MAX_PEER_HAVE_ITEMS]
                mid = node._next_id()
                check.msgs[mid] = (dest, [i for i, _ in part])
                self._haves[mid] = check
                wire = [[digests[i], hint] for i, hint in part]
                if not node._send(dest, PeerMsg.CHUNK_HAVE, {"id": mid, "items": wire}):
                    self._have_answer(mid, None, now)
        if local:
            sizes = [self._held_size(digests[i], hint, now) for i, hint in local]
            mid = node._next_id()
            check.msgs[mid] = (node.name, [i for i, _ in local])
            self._haves[mid] = check

            def local_answer() -> None:
                self._have_answer(mid, sizes, now)

            if any(s is not None for s in sizes):
                node._hold_until_durable(node.engine.last_seq, local_answer)
            else:
                local_answer()
        if not check.finished:
            if check.decided():
                self._finish_have(check, now)
            else:
                node._after(now + node.config.request_timeout_s,
                            partial(self._have_timeout, check))

    def _held_size(self, digest: bytes, hint_for: str | None, now: float) -> int | None:
        size = self._local_size(digest, hint_for)
        if size is not None and hint_for is None:
            self._touch(digest, now)
        return size

    def _have_answer(self, mid: int, sizes: list[Any] | None, now: float) -> None:
        check = self._haves.pop(mid, None)
        if check is None:
            return
        _dest, idxs = check.msgs.pop(mid)
        if check.finished:
            return
        for pos, i in enumerate(idxs):
            check.outstanding[i] -= 1
            s = sizes[pos] if sizes is not None and pos < len(sizes) else None
            if type(s) is not int or s < 0:
                continue
            if check.sizes[i] is None:
                check.sizes[i] = s
            elif check.sizes[i] != s:
                continue  # a replica disagreeing on a content-addressed size is damaged
            check.counts[i] += 1
        if check.decided():
            self._finish_have(check, now)

    def _finish_have(self, check: _HaveCheck, now: float) -> None:
        if check.finished:
            return
        check.finished = True
        for mid in list(check.msgs):
            self._haves.pop(mid, None)
        check.msgs.clear()
        check.done(check, now)

    def _have_timeout(self, check: _HaveCheck, now: float) -> None:
        self._finish_have(check, now)

    def on_chunk_have(self, sender: str, body: dict[str, Any], now: float) -> None:
        node = self.node
        mid, items = body["id"], body["items"]
        if type(mid) is not int or type(items) is not list or len(items) > MAX_PEER_HAVE_ITEMS:
            raise ValueError("bad CHUNK_HAVE")
        node.membership.mark_reachable(sender)
        sizes: list[int] = []
        for it in items:
            if (type(it) is not list or len(it) != 2 or type(it[0]) is not bytes
                    or len(it[0]) != DIGEST_BYTES
                    or (it[1] is not None and type(it[1]) is not str)):
                raise ValueError("bad CHUNK_HAVE item")
            s = self._held_size(it[0], it[1], now)
            sizes.append(-1 if s is None else s)

        def reply() -> None:
            node._send(sender, PeerMsg.CHUNK_HAVE_REPLY, {"id": mid, "sizes": sizes})

        if any(s >= 0 for s in sizes):
            node._hold_until_durable(node.engine.last_seq, reply)
        else:
            reply()

    def on_chunk_have_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        mid, sizes = body["id"], body["sizes"]
        if type(mid) is not int or type(sizes) is not list:
            raise ValueError("bad CHUNK_HAVE_REPLY")
        self.node.membership.mark_reachable(sender)
        check = self._haves.get(mid)
        if check is None or check.msgs.get(mid, ("", []))[0] != sender:
            return
        self._have_answer(mid, sizes, now)

    # -- FILE_COMMIT -----------------------------------------------------------------
    def _on_file_commit(self, conn: int, rid: int, args: dict[str, Any],
                        now: float) -> bytes | None:
        node = self.node
        _name_field(args, rid)
        try:
            m = Manifest.from_wire({k: args.get(k) for k in (
                "name", "size", "sha256", "chunk_size", "chunks", "meta", "mtime")},
                node.limits.max_value_bytes)
        except ValueError as exc:
            raise WireError(ErrorCode.BAD_MANIFEST, str(exc), req_id=rid) from None
        field_opt_bytes(args, "context", node.limits.max_context_bytes, rid)
        w = node._quorum_arg(args, "w", rid)
        value = m.encode()
        if len(value) > node.limits.max_value_bytes:
            raise WireError(ErrorCode.VALUE_TOO_LARGE, f"the manifest is {len(value)} bytes, "
                            f"limit {node.limits.max_value_bytes}", req_id=rid)
        key = manifest_key(m.name)
        node.counters["file_commit"] += 1
        apl = node._apl(key, now, rid)
        if (node._conns[conn].forwarded_from is None
                and not any(r.node == node.name and r.role == "primary" for r in apl)):
            # Only a primary of the manifest's key may mint its version: send it all there.
            return node._forward(conn, rid, Op.FILE_COMMIT, apl, args, now)
        digests = m.digests
        unique = sorted(set(digests))
        node._track(conn, rid)

        def checked(check: _HaveCheck, when: float) -> None:
            self._untrack(conn, rid)
            if conn not in node._conns:
                return
            at = {d: i for i, d in enumerate(check.digests)}
            missing = [i for i, d in enumerate(digests) if not check.held(at[d])]
            if missing:
                node.counters["file_commit_missing"] += 1
                node._finish(conn, rid, encode_error(
                    rid, ErrorCode.MISSING_CHUNKS,
                    f"{len(missing)} of {len(digests)} chunk(s) are not held by {w} "
                    "replicas; upload them and commit again",
                    missing=missing[:MAX_HAVE_BATCH]))
                return
            wrong = [i for i, d in enumerate(digests) if check.sizes[at[d]] != m.chunk_len(i)]
            if wrong:
                node._finish(conn, rid, encode_error(
                    rid, ErrorCode.BAD_MANIFEST,
                    f"chunk {wrong[0]} is {check.sizes[at[digests[wrong[0]]]]} bytes, but a "
                    f"file of {m.size} bytes in chunks of {m.chunk_size} needs "
                    f"{m.chunk_len(wrong[0])} there"))
                return
            try:
                frame = node._write(conn, rid, Op.FILE_COMMIT, key, value, args, when)
            except WireError as exc:
                frame = encode_error(rid, exc.code, exc.message, **exc.details)
            if frame is not None:
                node._finish(conn, rid, frame)

        self.start_have(unique, w, now, checked)
        return None

    # -- FILE_STAT / FILE_DELETE ------------------------------------------------------
    def _on_file_stat(self, conn: int, rid: int, args: dict[str, Any],
                      now: float) -> bytes | None:
        node = self.node
        name = _name_field(args, rid)
        r = node._quorum_arg(args, "r", rid)
        node.counters["file_stat"] += 1
        key = manifest_key(name)
        node._track(conn, rid)

        def then(coord: Any, failure: QuorumFailure | None, when: float) -> None:
            self._untrack(conn, rid)
            if coord is None:
                assert failure is not None
                node._finish(conn, rid, self._quorum_error(rid, failure))
                return
            state = coord.merged
            versions = []
            for v in state.live_values():
                try:
                    versions.append(Manifest.decode(v).to_wire())
                except (ValueError, TypeError, msgpack.UnpackException):
                    node.counters["manifest_undecodable"] += 1
            node._finish(conn, rid, encode_response(rid, {
                "found": bool(versions), "versions": versions,
                "context": state.encoded_context()}))

        try:
            frame = node._start_get(conn, rid, key, r, now, whereis=False, then=then)
        except WireError:
            self._untrack(conn, rid)
            raise
        return frame

    def _on_file_delete(self, conn: int, rid: int, args: dict[str, Any],
                        now: float) -> bytes | None:
        node = self.node
        name = _name_field(args, rid)
        node.counters["file_delete"] += 1
        return node._write(conn, rid, Op.FILE_DELETE, manifest_key(name), None, args, now)

    # -- CHUNK_GET -------------------------------------------------------------------
    def _on_chunk_get(self, conn: int, rid: int, args: dict[str, Any],
                      now: float) -> bytes | None:
        node = self.node
        digest = _digest_field(args, rid)
        offset = args.get("offset", 0)
        length = args.get("length")
        if offset is None:
            offset = 0
        if type(offset) is not int or offset < 0 or (
                length is not None and (type(length) is not int or length < 0)):
            raise WireError(ErrorCode.BAD_REQUEST,
                            "'offset' and 'length' must be non-negative integers", req_id=rid)
        node.counters["chunk_get"] += 1
        apl = list(node._apl(chunk_key(digest), now, rid))
        apl.sort(key=lambda rep: rep.node != node.name)  # a local copy first
        op = _ChunkRead(conn, rid, digest, offset, length, apl)
        gid = node._next_id()
        self._reads[gid] = op
        node._track(conn, rid)
        self._next_candidate(gid, op, now)
        return None

    def _next_candidate(self, gid: int, op: _ChunkRead, now: float) -> None:
        node = self.node
        while op.next < len(op.candidates):
            rep = op.candidates[op.next]
            op.next += 1
            if rep.node == node.name:
                data = self._read_local(op.digest, rep.hint_for)
                if data is not None:
                    self._serve(gid, op, data, now)
                    return
                op.failed.append(rep)
                continue
            fid = node._next_id()
            body: dict[str, Any] = {"id": fid, "hash": op.digest}
            if rep.hint_for is not None:
                body["hint_for"] = rep.hint_for
            if not node._send(rep.node, PeerMsg.CHUNK_FETCH, body):
                op.failed.append(rep)
                continue
            op.waiting, op.waiting_on = fid, rep.node
            self._fetches[fid] = gid
            node._after(now + node.config.request_timeout_s,
                        partial(self._fetch_failed, fid))
            return
        self._reads.pop(gid, None)
        node.counters["chunk_get_missing"] += 1
        node._finish(op.conn, op.rid, encode_error(
            op.rid, ErrorCode.MISSING_CHUNKS,
            f"no replica returned a good copy of chunk {op.digest.hex()} "
            f"({len(op.candidates)} asked)", missing=[op.digest]))

    def _serve(self, gid: int, op: _ChunkRead, data: bytes, now: float) -> None:
        node = self.node
        self._reads.pop(gid, None)
        end = len(data) if op.length is None else min(len(data), op.offset + op.length)
        out = data if op.offset == 0 and end == len(data) else data[op.offset:end]
        node._finish(op.conn, op.rid, encode_response(op.rid, {"data": out, "size": len(data)},
                                                      bulk=True))
        for rep in op.failed:
            if rep.role != "primary" and rep.hint_for is None:
                continue
            node.counters["chunk_repairs"] += 1
            if rep.node == node.name:
                with contextlib.suppress(WireError):
                    self._store_chunk(op.digest, data, rep.hint_for, now)
                continue
            body: dict[str, Any] = {"id": 0, "hash": op.digest, "data": data, "repair": True}
            if rep.hint_for is not None:
                body["hint_for"] = rep.hint_for
            node._send(rep.node, PeerMsg.CHUNK_STORE, body)

    def _fetch_failed(self, fid: int, now: float) -> None:
        """A fetch timed out or its replica became unreachable: ask the next one."""
        gid = self._fetches.pop(fid, None)
        op = self._reads.get(gid) if gid is not None else None
        if op is None or gid is None or op.waiting != fid:
            return
        op.failed.append(op.candidates[op.next - 1])
        op.waiting = op.waiting_on = None
        self._next_candidate(gid, op, now)

    def on_chunk_fetch(self, sender: str, body: dict[str, Any], now: float) -> None:
        fid, digest = body["id"], body["hash"]
        hint_for = body.get("hint_for")
        if (type(fid) is not int or type(digest) is not bytes or len(digest) != DIGEST_BYTES
                or (hint_for is not None and type(hint_for) is not str)):
            raise ValueError("bad CHUNK_FETCH")
        node = self.node
        node.membership.mark_reachable(sender)
        state = node._load(node._stored_key(chunk_key(digest), hint_for))
        node.counters["chunk_fetch"] += 1
        node._send_encoded(sender, encode_peer(node.name, PeerMsg.CHUNK_FETCH_REPLY,
                                               {"id": fid, "data": chunk_data(state)},
                                               bulk=True))

    def on_chunk_fetch_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        fid, data = body["id"], body.get("data")
        if type(fid) is not int or (data is not None and type(data) is not bytes):
            raise ValueError("bad CHUNK_FETCH_REPLY")
        self.node.membership.mark_reachable(sender)
        gid = self._fetches.get(fid)
        op = self._reads.get(gid) if gid is not None else None
        if op is None or gid is None or op.waiting != fid or op.waiting_on != sender:
            return
        if data is not None and hashlib.sha256(data).digest() == op.digest:
            self._fetches.pop(fid, None)
            op.waiting = op.waiting_on = None
            self._serve(gid, op, data, now)
            return
        if data is not None:
            self.node.counters["chunk_corrupt_remote"] += 1
            log.warning("replica %s returned a corrupted copy of chunk %s", sender,
                        op.digest.hex()[:16])
        self._fetch_failed(fid, now)

    # -- questions to every member: references (GC) and listings ------------------------
    def _gather(self, msg: PeerMsg, body: dict[str, Any], local: Any, now: float,
                done: Callable[[_Gather, float], None]) -> None:
        node = self.node
        members = sorted(n for n, m in node.membership.members.items()
                         if n != node.name and m.state != "left")
        gid = node._next_id()
        g = _Gather(set(members), {node.name: local}, done)
        self._gathers[gid] = g
        for n in members:
            if not node._send(n, msg, {**body, "id": gid}):
                g.waiting.discard(n)
                g.failed.add(n)
        if not g.waiting:
            self._finish_gather(gid, now)
        else:
            node._after(now + node.config.request_timeout_s,
                        partial(self._gather_timeout, gid))

    def _finish_gather(self, gid: int, now: float) -> None:
        g = self._gathers.pop(gid, None)
        if g is None or g.finished:
            return
        g.finished = True
        g.failed |= g.waiting
        g.done(g, now)

    def _gather_timeout(self, gid: int, now: float) -> None:
        self._finish_gather(gid, now)

    def on_gather_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        gid = body["id"]
        if type(gid) is not int:
            raise ValueError("bad reply")
        self.node.membership.mark_reachable(sender)
        g = self._gathers.get(gid)
        if g is None or sender not in g.waiting:
            return
        g.waiting.discard(sender)
        g.answers[sender] = body
        if not g.waiting:
            self._finish_gather(gid, now)

    def peer_unreachable(self, name: str, now: float) -> None:
        """A peer's connection failed: stop waiting for it."""
        for wid in list(self._backlog.get(name, ())):
            self._answered(name, wid)
        for wid in [wid for wid, op in self._writes.items()
                    if any(r.node == name for r in op.coord.replicas)]:
            self._write_refused(wid, name, "unreachable")
        for mid in [mid for mid, chk in self._haves.items() if chk.msgs.get(mid, ("",))[0] == name]:
            self._have_answer(mid, None, now)
        for fid in [fid for fid, gid in self._fetches.items()
                    if (op := self._reads.get(gid)) is not None and op.waiting_on == name]:
            self._fetch_failed(fid, now)
        for gid in [gid for gid, g in self._gathers.items() if name in g.waiting]:
            g = self._gathers[gid]
            g.waiting.discard(name)
            g.failed.add(name)
            if not g.waiting:
                self._finish_gather(gid, now)

    # -- FILE_LIST --------------------------------------------------------------------
    def _local_listing(self, prefix: str, after: str, limit: int) -> tuple[list[Any], bool]:
        """[[name, skeleton]] of local manifests in name order, and whether more were left."""
        node = self.node
        by_name: dict[str, DVVSet] = {}
        for sk in self._manifest_keys():
            raw = sk if sk.startswith(MANIFEST_PREFIX) else sk[sk.index(b"\x00", 2) + 1:]
            try:
                name = raw[len(MANIFEST_PREFIX):].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if not name.startswith(prefix) or name <= after:
                continue
            state = node._load(sk)
            if state is None:
                continue
            sk_state = _skeleton(state)
            prev = by_name.get(name)
            by_name[name] = sk_state if prev is None else prev.sync(sk_state)
        names = sorted(by_name)
        more = len(names) > limit
        return [[n, by_name[n].to_wire()] for n in names[:limit]], more

    def _on_file_list(self, conn: int, rid: int, args: dict[str, Any],
                      now: float) -> bytes | None:
        node = self.node
        prefix, after, limit = args.get("prefix", ""), args.get("after", ""), args.get("limit")
        prefix = "" if prefix is None else prefix
        after = "" if after is None else after
        limit = MAX_LIST if limit is None else limit
        if (type(prefix) is not str or type(after) is not str
                or _utf8_len(prefix) > MAX_NAME_BYTES or _utf8_len(after) > MAX_NAME_BYTES
                or type(limit) is not int
                or not 1 <= limit <= MAX_LIST):
            raise WireError(ErrorCode.BAD_REQUEST, "'prefix' and 'after' must be strings, "
                            f"'limit' an integer in 1..{MAX_LIST}", req_id=rid)
        node.counters["file_list"] += 1
        names, more = self._local_listing(prefix, after, limit)
        node._track(conn, rid)

        def done(g: _Gather, when: float) -> None:
            self._untrack(conn, rid)
            merged: dict[str, DVVSet] = {}
            truncated = False
            for ans in g.answers.values():
                entries, more_here = ans if isinstance(ans, tuple) else (
                    ans.get("names", []), ans.get("more") is True)
                truncated |= more_here
                for item in entries:
                    try:
                        name, st = item
                        state = DVVSet.from_wire(st)
                    except (ValueError, TypeError):
                        continue
                    if type(name) is not str:
                        continue
                    prev = merged.get(name)
                    merged[name] = state if prev is None else prev.sync(state)
            live = sorted(n for n, st in merged.items() if st.live_values())
            # A member that stopped at `limit` may know names after its last one that
            # sort before others' later names: only the first `limit` merged are sure.
            cut = live[:limit]
            more_out = truncated or len(live) > limit
            node._finish(conn, rid, encode_response(rid, {
                "names": cut, "more": more_out, "complete": not g.failed}))

        self._gather(PeerMsg.FILE_LIST, {"prefix": prefix, "after": after, "limit": limit},
                     (names, more), now, done)
        return None

    def on_file_list(self, sender: str, body: dict[str, Any], now: float) -> None:
        gid, prefix, after, limit = body["id"], body["prefix"], body["after"], body["limit"]
        if (type(gid) is not int or type(prefix) is not str or type(after) is not str
                or type(limit) is not int or not 1 <= limit <= MAX_LIST):
            raise ValueError("bad FILE_LIST")
        self.node.membership.mark_reachable(sender)
        names, more = self._local_listing(prefix, after, limit)
        self.node._send(sender, PeerMsg.FILE_LIST_REPLY,
                        {"id": gid, "names": names, "more": more})

    # -- garbage collection -------------------------------------------------------------
    def referenced(self, digests: set[bytes]) -> set[bytes]:
        """Which of `digests` a live manifest held here (own or hinted) lists."""
        found: set[bytes] = set()
        for sk in self._manifest_keys():
            for m in self._live_manifests(sk):
                found.update(d for d in m.digests if d in digests)
            if len(found) == len(digests):
                break
        return found

    def on_file_refs(self, sender: str, body: dict[str, Any], now: float) -> None:
        gid, hashes = body["id"], body["hashes"]
        if (type(gid) is not int or type(hashes) is not list or len(hashes) > MAX_GC_BATCH
                or not all(type(h) is bytes for h in hashes)):
            raise ValueError("bad FILE_REFS")
        self.node.membership.mark_reachable(sender)
        refs = self.referenced(set(hashes))
        self.node._send(sender, PeerMsg.FILE_REFS_REPLY,
                        {"id": gid, "referenced": sorted(refs)})

    def on_gc_timeout(self, now: float) -> None:
        """Start a sweep: ask every member which old local chunks are still referenced."""
        node = self.node
        node._after(now + self.gc_interval_s, self.on_gc_timeout)
        if self._sweeping or node.read_only_reason is not None:
            return
        cutoff = now - self.gc_grace_s
        candidates = []
        for k in self._keys(CHUNK_PREFIX):
            d = k[len(CHUNK_PREFIX):]
            if len(d) == DIGEST_BYTES and self.touched(d) <= cutoff:
                candidates.append(d)
                if len(candidates) >= MAX_GC_BATCH:
                    break
        if not candidates:
            self._suspects.clear()
            return
        cand = set(candidates)
        self._sweeping = True
        node.counters["gc_sweeps"] += 1

        def done(g: _Gather, when: float) -> None:
            self._sweeping = False
            if g.failed:
                node.counters["gc_sweeps_postponed"] += 1
                log.info("chunk GC postponed: no answer from %s", ", ".join(sorted(g.failed)))
                return
            refs = set(g.answers.pop(node.name))
            for ans in g.answers.values():
                got = ans.get("referenced")
                if type(got) is not list:
                    node.counters["gc_sweeps_postponed"] += 1
                    return
                refs.update(h for h in got if type(h) is bytes)
            unreferenced = cand - refs
            self._finish_sweep(unreferenced, when)

        self._gather(PeerMsg.FILE_REFS, {"hashes": sorted(cand)}, self.referenced(cand), now,
                     done)

    def _finish_sweep(self, unreferenced: set[bytes], now: float) -> None:
        node = self.node
        cutoff = now - self.gc_grace_s
        suspects: set[bytes] = set()
        for d in sorted(unreferenced):
            if self.touched(d) > cutoff:
                continue  # touched while the sweep asked around: an upload may need it
            if d not in self._suspects:
                suspects.add(d)  # unreferenced once; collected if still so next sweep
                continue
            node._drop_local(chunk_key(d))
            self._sizes.pop(d, None)
            self._touched.pop(d, None)
            node.counters["chunks_collected"] += 1
        self._suspects = suspects


def _skeleton(state: DVVSet) -> DVVSet:
    """The version set with every live value replaced by b"": enough to merge liveness."""
    return DVVSet(tuple((i, n, tuple(None if v is None else b"" for v in vals))
                        for i, n, vals in state.entries))


__all__ = ["CHUNK_PREFIX", "DEFAULT_CHUNK_BYTES", "MANIFEST_PREFIX", "FileStore", "Manifest",
           "check_name", "chunk_data", "chunk_key", "chunk_state", "manifest_key",
           "pick_version"]
