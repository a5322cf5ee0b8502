"""Files on three real node processes through the CLI: upload, listing, verified
download through a kill -9, an upload killed half-way and resumed, deletion."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringfs.client import Client
from tests.integration.procs import NodeProcess, ringfs, running_cluster, wait_for, wait_members

pytestmark = pytest.mark.integration


def chunk_puts(node: NodeProcess) -> int:
    # In-process, so polling is quick enough to catch the upload part-way.
    with Client(node.address, timeout_s=2.0) as c:
        return int(c.status()["counters"].get("chunk_put", 0))


def test_files_through_the_cli_on_a_three_node_cluster(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    with running_cluster(tmp_path, 3) as nodes:
        wait_members(nodes)
        at = ["--node", nodes[0].address]
        put = ringfs("put-file", str(src), "dir/src.bin", "--chunk-size", "256K", *at)
        assert put.returncode == 0, put.stderr
        assert put.stdout.decode().split() == [want, "dir/src.bin"]
        assert b"13 sent, 0 skipped" in put.stderr
        assert ringfs("ls", *at).stdout.decode().split() == ["dir/src.bin"]
        nodes[2].kill()
        out = tmp_path / "out.bin"
        got = ringfs("get-file", "dir/src.bin", str(out), "--node", nodes[1].address)
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want
        again = ringfs("put-file", str(src), "dir/copy.bin", "--chunk-size", "256K", *at)
        assert again.returncode == 0 and b"0 sent, 13 skipped" in again.stderr
        assert ringfs("rm", "dir/src.bin", *at).returncode == 0
        assert ringfs("ls", "dir/", *at).stdout.decode().split() == ["dir/copy.bin"]
        missing = ringfs("get-file", "dir/src.bin", str(tmp_path / "x"), *at)
        assert missing.returncode == 1 and b"not found" in missing.stderr


def test_a_killed_upload_is_invisible_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 * 1024 * 1024))
    with running_cluster(tmp_path, 3) as nodes:
        wait_members(nodes)
        at = ["--node", nodes[0].address]
        # The upload reads stdin, given its first 2 MiB and never its end: it is
        # part-way, however slow or fast this box, when it is killed.
        proc = subprocess.Popen(
            [sys.executable, "-m", "ringfs", "put-file", "-", "big", "--chunk-size",
             "64K", "--quiet", *at], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        assert proc.stdin is not None
        try:
            proc.stdin.write(src.read_bytes()[:2 * 1024 * 1024])
            proc.stdin.flush()
            wait_for(lambda: chunk_puts(nodes[0]) >= 20 or proc.poll() is not None,
                     what="part of the upload")
            assert proc.poll() is None, proc.communicate()
        finally:
            proc.kill()
            proc.communicate()
        assert ringfs("ls", *at).stdout == b""
        assert ringfs("get-file", "big", str(tmp_path / "o"), *at).returncode == 1
        res = ringfs("put-file", str(src), "big", "--chunk-size", "64K", "--json", *at,
                     timeout=120)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["chunks"] == 384 and out["skipped"] >= 20 and out["sent"] < 384
        assert out["sent"] + out["skipped"] == 384
        back = tmp_path / "back.bin"
        assert ringfs("get-file", "big", str(back), *at).returncode == 0
        assert back.read_bytes() == src.read_bytes()
