"""Streaming file transfers for the clients: put_file, get_file and friends.

An upload reads the source one chunk at a time, hashing each chunk and the whole
file as it goes, asks the cluster in batches which chunks it already holds
(CHUNK_HAVE), sends only the others (CHUNK_PUT, a few in flight) and finally
commits the manifest (FILE_COMMIT). A seekable source is not kept in memory
while its batch is checked: the chunks to send are read again, from the page
cache. A download fetches a few chunks ahead (CHUNK_GET), verifies each, writes
them in order and, for a whole file, checks the file's SHA-256 before a
destination path is moved into place. Memory stays at a few chunks whatever the
file size. docs/protocol.md describes the operations.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import trio

from ringfs.errors import (
    ChecksumMismatch,
    FileNotFound,
    LocalProtocolError,
    MissingChunks,
    RemoteProtocolError,
    RingfsError,
)
from ringfs.files import (
    DEFAULT_CHUNK_BYTES,
    DIGEST_BYTES,
    MAX_HAVE_BATCH,
    Manifest,
    check_name,
    pick_version,
)
from ringfs.wire import Op

if TYPE_CHECKING:
    from ringfs.client import AsyncClient

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in total) as a transfer advances."""
Source = str | os.PathLike[str] | IO[bytes]
DEFAULT_PARALLEL = 8
"""Chunks a transfer keeps in flight."""
SEEKABLE_BATCH = 64
STREAM_BATCH = 4


@dataclass(frozen=True)
class FileInfo:
    """One version of a file, as stat_file and get_file report it."""

    name: str
    size: int
    sha256: str
    """Hex SHA-256 of the whole file."""
    chunk_size: int
    chunks: int
    meta: dict[str, str]
    mtime: float
    """The uploader's clock when it uploaded (seconds since the epoch)."""
    context: bytes
    """Causal context of the name; pass it to put_file/delete_file to supersede what was read."""
    versions: int = 1
    """Concurrent versions (siblings) of the name; this is the one get_file reads."""
    manifest: Manifest | None = field(default=None, repr=False, compare=False)
    others: tuple[Manifest, ...] = field(default=(), repr=False, compare=False)
    """The other siblings, when versions > 1."""


@dataclass(frozen=True)
class PutFileResult:
    """What an upload did."""

    name: str
    size: int
    sha256: str
    chunks: int
    sent: int
    """Chunks sent over the network."""
    skipped: int
    """Chunks the cluster already held (from an interrupted run, or another file)."""
    context: bytes


def _info(m: Manifest, context: bytes, others: list[Manifest]) -> FileInfo:
    return FileInfo(m.name, m.size, m.sha256.hex(), m.chunk_size,
                    len(m.chunks) // DIGEST_BYTES, dict(m.meta), m.mtime, context,
                    1 + len(others), m, tuple(others))


def _first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (errors of concurrent transfer tasks)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class _Reader:
    """Reads a source chunk by chunk, hashing as it goes, and can re-read a chunk."""

    def __init__(self, src: Source) -> None:
        self.own = isinstance(src, str | os.PathLike)
        self.f: IO[bytes] = open(src, "rb") if isinstance(src, str | os.PathLike) else src  # noqa: SIM115
        try:
            self.seekable = bool(self.f.seekable())
        except (AttributeError, OSError, ValueError):
            self.seekable = False
        self.start = self.f.tell() if self.seekable else 0
        try:
            self.fd: int | None = self.f.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None
        self.whole = hashlib.sha256()
        self.pos = 0
        self.lock = threading.Lock()
        """Serialises reading on with re-reading by seeking (a source without a descriptor)."""

    def total(self) -> int:
        if not self.seekable:
            return 0
        if self.fd is not None:
            try:
                return max(0, os.fstat(self.fd).st_size - self.start)
            except OSError:
                pass
        here = self.f.tell()
        end = self.f.seek(0, os.SEEK_END)
        self.f.seek(here)
        return max(0, end - self.start)

    def next_chunk(self, size: int) -> tuple[bytes, bytes]:
        """(data, digest) of the next chunk; data is empty at the end."""
        parts = []
        want = size
        with self.lock:
            while want:
                b = self.f.read(want)
                if not b:
                    break
                parts.append(b)
                want -= len(b)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.whole.update(data)
        self.pos += len(data)
        return data, hashlib.sha256(data).digest()

    def reread(self, offset: int, size: int) -> bytes:
        at = self.start + offset
        if self.fd is not None:
            out = os.pread(self.fd, size, at)
        else:
            with self.lock:
                here = self.f.tell()
                self.f.seek(at)
                out = self.f.read(size)
                self.f.seek(here)
        return out

    def close(self) -> None:
        if self.own:
            self.f.close()


def _check_name(name: str) -> None:
    """A file name the nodes will take, or LocalProtocolError saying why not."""
    try:
        check_name(name)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None


async def put_file(client: AsyncClient, name: str, src: Source, *,
                   chunk_size: int = DEFAULT_CHUNK_BYTES, meta: dict[str, str] | None = None,
                   context: bytes | None = None, w: int | None = None,
                   size: int | None = None, sha256: str | None = None,
                   progress: Progress | None = None,
                   parallel: int = DEFAULT_PARALLEL) -> PutFileResult:
    _check_name(name)
    if type(chunk_size) is not int or not 1 <= chunk_size <= 64 * 1024 * 1024:
        raise LocalProtocolError("chunk_size must be an integer number of bytes")
    if parallel < 1:
        raise LocalProtocolError("parallel must be at least 1")
    reader = await trio.to_thread.run_sync(_Reader, src)
    try:
        return await _upload(client, name, reader, chunk_size, meta, context, w, size,
                             sha256, progress, parallel)
    finally:
        reader.close()


async def _upload(client: AsyncClient, name: str, reader: _Reader, chunk_size: int,
                  meta: dict[str, str] | None, context: bytes | None, w: int | None,
                  size: int | None, sha256: str | None, progress: Progress | None,
                  parallel: int) -> PutFileResult:
    total = size if size is not None else reader.total()
    batch_len = SEEKABLE_BATCH if reader.seekable else STREAM_BATCH
    digests = bytearray()
    sent = skipped = 0
    done_bytes = 0
    present: set[bytes] = set()
    """Chunks known held (checked, or sent in this run): identical chunks go once."""
    sem = trio.Semaphore(parallel)

    def report(n: int) -> None:
        nonlocal done_bytes
        done_bytes += n
        if progress is not None:
            progress(done_bytes, max(total, done_bytes))

    async def send(digest: bytes, data: bytes) -> None:
        try:
            await _put_chunk(client, digest, data, w)
        finally:
            sem.release()
        report(len(data))

    async def scan(out: trio.MemorySendChannel[tuple[int, int, bytes, bytes | None]]) -> None:
        """Read and hash the source a batch at a time, ask the cluster which chunks it
        holds, and queue the others: it runs a batch ahead of the sends."""
        nonlocal skipped
        async with out:
            eof = False
            while not eof:
                batch: list[tuple[int, int, bytes, bytes | None]] = []  # offset, n, digest, data
                while len(batch) < batch_len:
                    offset = reader.pos
                    data, digest = await trio.to_thread.run_sync(reader.next_chunk, chunk_size)
                    if not data:
                        eof = True
                        break
                    digests.extend(digest)
                    batch.append((offset, len(data), digest, None if reader.seekable else data))
                    if len(data) < chunk_size:
                        eof = True
                        break
                ask = sorted({d for _, _, d, _ in batch if d not in present})
                held: set[bytes] = set()
                for i in range(0, len(ask), MAX_HAVE_BATCH):
                    part = ask[i:i + MAX_HAVE_BATCH]
                    flags = await client.chunk_have(part, w=w)
                    held.update(d for d, h in zip(part, flags, strict=True) if h)
                for item in batch:
                    digest = item[2]
                    if digest in present or digest in held:
                        skipped += 1
                        present.add(digest)
                        report(item[1])
                        continue
                    present.add(digest)
                    await out.send(item)

    # A seekable source queues offsets only; a stream's queue holds its chunks' bytes.
    to_send, queued = trio.open_memory_channel[tuple[int, int, bytes, bytes | None]](
        batch_len if reader.seekable else 0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scan, to_send)
            async with queued:
                async for offset, n, digest, kept in queued:
                    sent += 1
                    if kept is None:
                        # Not hashed again here: the node checks the bytes against
                        # `digest` before storing them (see _put_chunk).
                        data = await trio.to_thread.run_sync(reader.reread, offset, n)
                        if len(data) != n:
                            raise ChecksumMismatch("the source changed while it was uploaded")
                    else:
                        data = kept
                    await sem.acquire()
                    nursery.start_soon(send, digest, data)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    file_size = reader.pos
    file_hash = reader.whole.digest()
    if size is not None and size != file_size:
        raise ChecksumMismatch(f"the source has {file_size} bytes, not the {size} declared; "
                               "nothing was committed")
    if sha256 is not None and sha256.lower() != file_hash.hex():
        raise ChecksumMismatch(f"the source's SHA-256 is {file_hash.hex()}, not the one "
                               "declared; nothing was committed")
    args: dict[str, Any] = {
        "name": name, "size": file_size, "sha256": file_hash, "chunk_size": chunk_size,
        "chunks": bytes(digests), "meta": dict(meta or {}), "mtime": time.time(),
    }
    if context is not None:
        args["context"] = bytes(context)
    if w is not None:
        args["w"] = w
    try:
        res = await client._call(Op.FILE_COMMIT, args, safe=False, timeout_s=None)
    except MissingChunks as exc:
        # Collected or lost since they were checked: send them again, commit once more.
        missing = exc.details.get("missing", [])
        if not reader.seekable or not isinstance(missing, list):
            raise
        for i in sorted({i for i in missing if type(i) is int}):
            if not 0 <= i < len(digests) // DIGEST_BYTES:
                continue
            n = min(chunk_size, file_size - i * chunk_size)
            data = await trio.to_thread.run_sync(reader.reread, i * chunk_size, n)
            d = bytes(digests[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES])
            if len(data) != n:
                raise ChecksumMismatch("the source changed while it was uploaded") from None
            await _put_chunk(client, d, data, w)
            sent += 1
            skipped = max(0, skipped - 1)
        res = await client._call(Op.FILE_COMMIT, args, safe=False, timeout_s=None)
    ctx = res.get("context", b"")
    return PutFileResult(name, file_size, file_hash.hex(), len(digests) // DIGEST_BYTES, sent,
                         skipped, bytes(ctx) if isinstance(ctx, bytes) else b"")


async def _put_chunk(client: AsyncClient, digest: bytes, data: bytes, w: int | None) -> None:
    """CHUNK_PUT of one chunk of the source.

    The digest was computed on the first read (it goes into the manifest, and the
    whole-file hash covers those bytes); a seekable source's chunk is read again to
    be sent and not hashed again, because the coordinator refuses bytes that do not
    match the digest, which then means that the source changed since.
    """
    try:
        await client.chunk_put(digest, data, w=w)
    except ChecksumMismatch:
        raise ChecksumMismatch("a chunk's bytes did not match its SHA-256 at the node: the "
                               "source changed while it was uploaded; nothing was "
                               "committed") from None


async def stat_file(client: AsyncClient, name: str, *, r: int | None = None) -> FileInfo | None:
    _check_name(name)
    args: dict[str, Any] = {"name": name}
    if r is not None:
        args["r"] = r
    res = await client._call(Op.FILE_STAT, args, safe=True, timeout_s=None)
    versions = res.get("versions")
    ctx = res.get("context", b"")
    if not isinstance(versions, list) or not isinstance(ctx, bytes):
        raise RemoteProtocolError("FILE_STAT result has the wrong shape")
    try:
        ms = [Manifest.from_wire(v, 1 << 31) for v in versions]
    except ValueError as exc:
        raise RemoteProtocolError(f"a node sent a bad manifest: {exc}") from None
    if not ms:
        return None
    chosen = pick_version(ms)
    others = [m for m in ms if m is not chosen]
    return _info(chosen, ctx, others)


async def get_file(client: AsyncClient, name: str, dest: Source, *, offset: int = 0,
                   length: int | None = None, progress: Progress | None = None,
                   parallel: int = DEFAULT_PARALLEL) -> FileInfo:
    if offset < 0 or (length is not None and length < 0):
        raise LocalProtocolError("offset and length must be >= 0")
    if parallel < 1:
        raise LocalProtocolError("parallel must be >= 1")
    info = await stat_file(client, name)
    if info is None or info.manifest is None:
        raise FileNotFound(f"file {name!r} not found")
    m = info.manifest
    end = m.size if length is None else min(m.size, offset + length)
    whole = offset == 0 and end == m.size
    if isinstance(dest, str | os.PathLike):
        path = os.fspath(dest)
        tmp = f"{path}.ringfs-part"
        f: IO[bytes] = await trio.to_thread.run_sync(open, tmp, "wb")
        try:
            await _download(client, m, f, offset, end, whole, progress, parallel)
            await trio.to_thread.run_sync(f.flush)
            await trio.to_thread.run_sync(os.fsync, f.fileno())
            f.close()
            await trio.to_thread.run_sync(os.replace, tmp, path)
        except BaseException:
            f.close()
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await trio.to_thread.run_sync(os.unlink, tmp)
            raise
    else:
        await _download(client, m, dest, offset, end, whole, progress, parallel)
    return info


async def _download(client: AsyncClient, m: Manifest, f: IO[bytes], offset: int, end: int,
                    whole: bool, progress: Progress | None, parallel: int) -> None:
    total = max(0, end - offset)
    if total == 0:
        if whole and hashlib.sha256(b"").digest() != m.sha256:
            raise ChecksumMismatch(f"file {m.name!r}: stored SHA-256 does not match its bytes")
        return
    cs = m.chunk_size
    first, last = offset // cs, (end - 1) // cs
    digests = m.digests
    results: dict[int, bytes] = {}
    events: dict[int, trio.Event] = {}
    h = hashlib.sha256() if whole else None
    done = 0

    async def fetch(i: int) -> None:
        lo = offset - i * cs if i == first else 0
        hi = end - i * cs if i == last else m.chunk_len(i)
        full = lo == 0 and hi == m.chunk_len(i)
        data = await client.chunk_get(digests[i], offset=lo, length=None if full else hi - lo)
        if full:
            ok = await trio.to_thread.run_sync(
                lambda: hashlib.sha256(data).digest() == digests[i] and len(data) == hi)
            if not ok:
                raise ChecksumMismatch(f"chunk {i} of {m.name!r} came back corrupted")
        elif len(data) != hi - lo:
            raise RemoteProtocolError(f"chunk {i} of {m.name!r}: wrong length in reply")
        results[i] = data
        events[i].set()

    def write(data: bytes) -> None:
        f.write(data)
        if h is not None:
            h.update(data)

    try:
        async with trio.open_nursery() as nursery:
            started = first
            for i in range(first, last + 1):
                while started <= last and started < i + parallel:
                    events[started] = trio.Event()
                    nursery.start_soon(fetch, started)
                    started += 1
                await events[i].wait()
                data = results.pop(i)
                del events[i]
                await trio.to_thread.run_sync(write, data)
                done += len(data)
                if progress is not None:
                    progress(done, total)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    if h is not None and h.digest() != m.sha256:
        raise ChecksumMismatch(f"file {m.name!r}: its bytes do not match the SHA-256 stored "
                               "in its manifest (the uploader declared a wrong hash)")


async def list_files(client: AsyncClient, prefix: str = "") -> list[str]:
    if prefix:
        try:
            check_name(prefix)  # a prefix is the start of a name: the same rules
        except ValueError as exc:
            raise LocalProtocolError(f"prefix: {exc}") from None
    names: list[str] = []
    after = ""
    while True:
        res = await client._call(Op.FILE_LIST, {"prefix": prefix, "after": after},
                                 safe=True, timeout_s=None)
        page = res.get("names")
        if not isinstance(page, list) or not all(isinstance(n, str) for n in page):
            raise RemoteProtocolError("FILE_LIST result has the wrong shape")
        names.extend(page)
        if res.get("more") is not True or not page:
            return names
        after = page[-1]


async def delete_file(client: AsyncClient, name: str, context: bytes | None = None, *,
                      w: int | None = None) -> bytes:
    _check_name(name)
    args: dict[str, Any] = {"name": name}
    if context is not None:
        args["context"] = bytes(context)
    if w is not None:
        args["w"] = w
    res = await client._call(Op.FILE_DELETE, args, safe=False, timeout_s=None)
    return bytes(res.get("context", b""))


__all__ = ["FileInfo", "Progress", "PutFileResult", "RingfsError", "Source"]
