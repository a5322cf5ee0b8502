"""The `ringfs` command against real node processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.procs import NodeProcess, free_base_port, free_port, ringfs, wait_listening

pytestmark = pytest.mark.integration


def test_put_get_delete_through_the_cli(tmp_path: Path) -> None:
    n = NodeProcess(tmp_path)
    try:
        node = ["--node", n.address]
        assert ringfs("put", "greeting", "hello", *node).returncode == 0
        got = ringfs("get", "greeting", *node)
        assert got.returncode == 0 and got.stdout == b"hello"
        assert ringfs("put", "bin", "-", *node, input=b"\x00\xff").returncode == 0
        js = json.loads(ringfs("get", "bin", "--json", *node).stdout)
        assert js["encoding"] == "base64" and js["values"] == ["AP8="]
        # Write back with the context: supersedes, no sibling.
        assert ringfs("put", "bin", "x", "--context", js["context"], *node).returncode == 0
        assert ringfs("get", "bin", *node).stdout == b"x"
        assert ringfs("delete", "greeting", *node).returncode == 0
        missing = ringfs("get", "greeting", *node)
        assert missing.returncode == 1 and missing.stderr.startswith(b"ringfs: ")
        st = json.loads(ringfs("status", "--json", *node).stdout)
        assert st["members"][0]["name"] == "n1" and st["members"][0]["state"] == "alive"
    finally:
        assert n.stop() == 0


@pytest.mark.parametrize(
    "args",
    [
        ["get", "k", "--node", "nonsense"],
        ["put", "k"],
        ["node", "--name", "bad name!", "--listen", "127.0.0.1:1"],
        ["node", "--name", "a", "--durability", "sometimes"],
        ["node", "--name", "a", "--lww-prefix", "k" * 5000],
        ["cluster", "up", "--lww-prefix", "k" * 5000],
        ["get", "k", "--timeout", "-1"],
        ["get", ""],
        ["cluster", "up", "--nodes", "50000"],
        ["node", "--name", "a", "--seeds", ",,,"],
        ["node", "--name", "a", "--durability", "interval:\u00b2"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line_and_nonzero(args: list[str]) -> None:
    r = ringfs(*args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].decode().startswith(("ringfs", "usage"))


@pytest.mark.parametrize("problem", ["unknown host", "port in use", "unusable data dir"])
def test_a_node_that_cannot_start_says_why_in_one_line(tmp_path: Path, problem: str) -> None:
    import socket

    port = free_port()
    data = str(tmp_path / "data")
    listen = f"127.0.0.1:{port}"
    with socket.socket() as taken:
        if problem == "unknown host":
            listen = f"nosuchhost.invalid:{port}"
        elif problem == "port in use":
            taken.bind(("127.0.0.1", port))
            taken.listen()
        else:
            (tmp_path / "file").write_text("not a directory")
            data = str(tmp_path / "file" / "data")
        r = ringfs("node", "--name", "a", "--listen", listen, "--data-dir", data,
                   "--engine", "log", "--log-level", "error")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "ringfs: cannot serve"), err


def test_unreachable_node_is_one_clear_line() -> None:
    r = ringfs("get", "k", "--node", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "unavailable" in lines[0]


def test_help_explains_every_command() -> None:
    for cmd in ([], ["node"], ["cluster", "up"], ["get"], ["put"], ["delete"], ["status"]):
        r = ringfs(*cmd, "--help")
        assert r.returncode == 0 and len(r.stdout) > 200, cmd


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_shut_a_node_down_cleanly(tmp_path: Path, sig: int) -> None:
    n = NodeProcess(tmp_path)
    assert ringfs("put", "k", "v", "--node", n.address).returncode == 0
    assert n.stop(sig) == 0
    assert "stopped" in n.log_text()


def test_cluster_up_starts_and_stops_all_nodes(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringfs", "cluster", "up", "--nodes", "1", "--base-port",
         str(port), "--data-root", str(tmp_path), "--lww-prefix", "lww/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(port, proc)
        node = ["--node", f"127.0.0.1:{port}"]
        # The node took the flag: of two writes with one stale context, an LWW key
        # reads as the later one, another key as both siblings.
        for key in ("lww/k", "k"):
            assert ringfs("put", key, "base", *node).returncode == 0
            ctx = json.loads(ringfs("get", key, "--json", *node).stdout)["context"]
            for value in ("a", "b"):
                assert ringfs("put", key, value, "--context", ctx, *node).returncode == 0
        assert json.loads(ringfs("get", "lww/k", "--json", *node).stdout)["values"] == ["b"]
        assert sorted(json.loads(ringfs("get", "k", "--json", *node).stdout)["values"]) == [
            "a", "b"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b"listening on" in out and b"cluster stopped" in out


def test_keygen_rotation(tmp_path: Path) -> None:
    import os
    import stat

    f = tmp_path / "keys"
    assert ringfs("keygen", str(f)).returncode == 0
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert ringfs("keygen", str(f)).returncode == 1  # never overwrites
    assert ringfs("keygen", str(f), "--install").returncode == 0
    fps = ringfs("keygen", str(f), "--list").stdout.decode().split()
    first, second = fps[0], fps[2]
    assert fps[1] == "(primary)"
    assert ringfs("keygen", str(f), "--remove", first).returncode == 1  # primary stays
    assert ringfs("keygen", str(f), "--use", second).returncode == 0
    assert ringfs("keygen", str(f), "--remove", first).returncode == 0
    assert ringfs("keygen", str(f), "--list").stdout.decode().split() == [second, "(primary)"]
    os.chmod(f, 0o644)
    r = ringfs("keygen", str(f), "--list")
    assert r.returncode == 1 and b"chmod 600" in r.stderr


def test_more_bad_input_gets_one_line_and_no_traceback(tmp_path: Path) -> None:
    def one_line(r: subprocess.CompletedProcess[bytes], *words: str) -> None:
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 1 and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ringfs: "), err
        assert all(w in lines[0] for w in words), err

    r = ringfs("keygen", str(tmp_path / "no-such-dir" / "keys"))
    one_line(r, "keyring")
    assert r.stdout == b""  # no "written" line for a key that was not written
    one_line(ringfs("put-file", str(tmp_path), "name", "--node", "127.0.0.1:1"),
             "is a directory")
    one_line(ringfs("ls", "\udcff", "--node", "127.0.0.1:1"), "UTF-8")
    n = NodeProcess(tmp_path, extra=("--engine", "log"))
    try:  # a second node on the same data directory
        one_line(ringfs("node", "--name", "n1", "--listen", f"127.0.0.1:{free_port()}",
                        "--data-dir", str(tmp_path / "n1"), "--engine", "log"), "in use")
    finally:
        assert n.stop() == 0


def test_cluster_up_refuses_before_starting_anything(tmp_path: Path) -> None:
    import socket

    base = free_base_port(2)
    with socket.socket() as taken:  # the second node's port is in use
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        r = ringfs("cluster", "up", "--nodes", "2", "--base-port", str(base),
                   "--data-root", str(tmp_path / "data"))
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{base + 1}" in r.stderr.decode()
    assert b"listening" not in r.stdout and not (tmp_path / "data").exists()
    r = ringfs("cluster", "up", "--durability", "sometimes", "--data-root", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1
    (tmp_path / "file").write_text("not a directory")
    r = ringfs("cluster", "up", "--nodes", "1", "--base-port", str(free_port()),
               "--data-root", str(tmp_path / "file"))  # (one port: only it is known free)
    assert r.returncode == 1 and "Traceback" not in r.stderr.decode()
    assert r.stderr.decode().startswith("ringfs: --data-root")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_the_port_check_of_cluster_up_follows_the_hosts_family(host: str) -> None:
    import socket

    from ringfs.cli import CliError, _check_port_free
    from ringfs.config import format_address

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        taken = socket.socket(family)
        taken.bind((host, 0))
    except OSError:
        pytest.skip(f"cannot bind {host} here")
    with taken:
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(CliError, match="cannot listen"):
            _check_port_free(format_address(host, port))
    _check_port_free(format_address(host, port))  # free again


def test_file_commands_honour_an_explicit_timeout() -> None:
    import socket
    import time

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        start = time.monotonic()
        r = ringfs("ls", "--node", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1")
        took = time.monotonic() - start
    assert r.returncode == 1 and len(r.stderr.decode().strip().splitlines()) == 1
    assert took < 20, f"--timeout 1 took {took:.1f} s"  # the file default is 30 s
