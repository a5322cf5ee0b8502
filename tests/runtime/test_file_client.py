"""put_file / get_file and friends through the real client and server, over in-memory
streams on trio's autojump clock."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from ringfs.client import AsyncClient
from ringfs.config import Durability, NodeConfig
from ringfs.errors import ChecksumMismatch, FileNotFound, LocalProtocolError
from ringfs.runtime.server import NodeServer
from tests.scenario.test_file_world import payload as blob

CS = 4096


@pytest.fixture
async def client(nursery: trio.Nursery) -> AsyncIterator[AsyncClient]:
    srv = NodeServer(NodeConfig(name="n1", engine="memory", durability=Durability("group")))
    await nursery.start(partial(srv.serve, listen=False))

    async def connect(address: str) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(srv.handle_stream, server_side)
        return client_side

    async with AsyncClient("n1:7001", connect=connect) as c:  # type: ignore[arg-type]
        yield c


async def test_paths_round_trip_with_progress(autojump_clock: MockClock, client: AsyncClient,
                                              tmp_path: Path) -> None:
    data = blob(10 * CS + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    seen: list[tuple[int, int]] = []
    res = await client.put_file("a/src.bin", str(src), chunk_size=CS,
                                progress=lambda d, t: seen.append((d, t)),
                                meta={"type": "test"})
    assert (res.size, res.chunks, res.sent, res.skipped) == (len(data), 11, 11, 0)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert seen and seen[-1] == (len(data), len(data))
    dest = tmp_path / "out.bin"
    info = await client.get_file("a/src.bin", dest)
    assert dest.read_bytes() == data and info.meta == {"type": "test"}
    assert not (tmp_path / "out.bin.ringfs-part").exists()
    assert await client.list_files("a/") == ["a/src.bin"]
    assert await client.list_files("b") == []


async def test_streams_ranges_and_resume(autojump_clock: MockClock, client: AsyncClient) -> None:
    data = blob(7 * CS + 5, seed=1)
    first = await client.put_file("s", io.BytesIO(data[: 4 * CS]), chunk_size=CS)
    assert first.sent == 4
    # A second run over the whole source sends only what is new.
    res = await client.put_file("s", io.BytesIO(data), chunk_size=CS)
    assert (res.sent, res.skipped) == (4, 4)

    class Pipe(io.RawIOBase):
        """A non-seekable source that hands out a few bytes at a time."""

        def __init__(self, b: bytes) -> None:
            self.b = b

        def readable(self) -> bool:
            return True

        def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
            n = min(len(buf), 1000, len(self.b))
            buf[:n] = self.b[:n]
            self.b = self.b[n:]
            return n

    res = await client.put_file("pipe", Pipe(data), chunk_size=CS)  # type: ignore[arg-type]
    assert res.skipped == 8 and res.size == len(data)
    out = io.BytesIO()
    await client.get_file("pipe", out)
    assert out.getvalue() == data
    for off, ln in [(0, 1), (CS - 1, 2), (3 * CS + 7, 2 * CS), (len(data) - 3, 100),
                    (len(data), 10)]:
        part = io.BytesIO()
        await client.get_file("s", part, offset=off, length=ln, parallel=2)
        assert part.getvalue() == data[off:off + ln], (off, ln)


async def test_empty_file_stat_delete_and_not_found(autojump_clock: MockClock,
                                                    client: AsyncClient) -> None:
    res = await client.put_file("empty", io.BytesIO(b""))
    assert res.chunks == 0 and res.sha256 == hashlib.sha256(b"").hexdigest()
    out = io.BytesIO()
    await client.get_file("empty", out)
    assert out.getvalue() == b""
    info = await client.stat_file("empty")
    assert info is not None and info.size == 0 and info.versions == 1
    await client.delete_file("empty", info.context)
    assert await client.stat_file("empty") is None
    with pytest.raises(FileNotFound):
        await client.get_file("empty", io.BytesIO())


async def test_lies_and_bad_names_commit_nothing(autojump_clock: MockClock,
                                                 client: AsyncClient, tmp_path: Path) -> None:
    data = blob(3 * CS, seed=2)
    with pytest.raises(ChecksumMismatch):
        await client.put_file("lie", io.BytesIO(data), chunk_size=CS, size=len(data) + 1)
    with pytest.raises(ChecksumMismatch):
        await client.put_file("lie", io.BytesIO(data), chunk_size=CS, sha256="00" * 32)
    assert await client.stat_file("lie") is None
    for bad in ("", "a\x00b", "x" * 513):
        with pytest.raises(LocalProtocolError):
            await client.put_file(bad, io.BytesIO(data))
    # A destination path is never left half-written when the download fails.
    dest = tmp_path / "never"
    with pytest.raises(FileNotFound):
        await client.get_file("lie", dest)
    assert not dest.exists() and not os.listdir(tmp_path)


async def test_a_source_changed_while_uploading_commits_nothing(
        autojump_clock: MockClock, client: AsyncClient) -> None:
    class Changing(io.BytesIO):
        """Seekable; its bytes change once a chunk is read a second time."""

        def __init__(self, b: bytes) -> None:
            super().__init__(b)
            self.furthest = 0

        def read(self, n: int | None = -1) -> bytes:
            at = self.tell()
            if at < self.furthest:  # a re-read: the file was modified meanwhile
                with self.getbuffer() as view:
                    view[at] ^= 0xFF
            out = super().read(n)
            self.furthest = max(self.furthest, self.tell())
            return out

    with pytest.raises(ChecksumMismatch, match="source changed"):
        await client.put_file("moving", Changing(blob(3 * CS, seed=4)), chunk_size=CS)
    assert await client.stat_file("moving") is None


async def test_siblings_are_reported(autojump_clock: MockClock, client: AsyncClient) -> None:
    await client.put_file("sib", io.BytesIO(b"one"), context=b"")
    await client.put_file("sib", io.BytesIO(b"two"), context=b"")
    info = await client.stat_file("sib")
    assert info is not None and info.versions == 2 and len(info.others) == 1
    await client.put_file("sib", io.BytesIO(b"three"), context=info.context)
    info = await client.stat_file("sib")
    assert info is not None and info.versions == 1 and info.size == 5
