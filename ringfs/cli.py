"""The `ringfs` command: run nodes and local clusters, and talk to them.

Every error ends in one line on stderr starting with "ringfs: " and a non-zero
exit status: 1 for a failed operation (or a key not found), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from ringfs import __version__
from ringfs.config import (
    ConfigError,
    build_config,
    format_address,
    load_toml,
    parse_address,
)

DEFAULT_NODE = "127.0.0.1:7001"
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure reported as one line and exit status 1."""


def _fail(message: str, status: int = EXIT_FAILED) -> NoReturn:
    print(f"ringfs: {message}", file=sys.stderr)
    raise SystemExit(status)


# -- argument types ---------------------------------------------------------------

def _address(text: str) -> str:
    try:
        parse_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _listen_address(text: str) -> str:
    try:
        parse_address(text, allow_port_zero=True)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


MAX_LOCAL_NODES = 64
"""Most nodes `cluster up` starts: each is a process of its own on this machine."""


def _node_count(text: str) -> int:
    v = _positive_int(text)
    if v > MAX_LOCAL_NODES:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_LOCAL_NODES} nodes, each a "
                                         "process on this machine")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def _port(text: str) -> int:
    v = _positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1..65535)")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 3600] seconds")
    return v


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024 * 1024}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) * mult <= 64 << 20:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in 1..64M (e.g. 1M, 256K)")
    return int(digits) * mult


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "context must be base64 as printed by get --json") from None


# -- parser -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringfs",
        description="ringfs: a Dynamo-style peer-to-peer key/value and file store.",
        epilog="Run `ringfs COMMAND --help` for the options of one command.",
    )
    p.add_argument("--version", action="version", version=f"ringfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # node
    n = sub.add_parser("node", help="run one node in the foreground",
                       description="Run one ringfs node in the foreground until SIGINT or "
                                   "SIGTERM. Flags override the TOML file given by --config.")
    n.add_argument("--config", metavar="FILE", help="TOML file with node settings")
    n.add_argument("--name", help="unique node name (letters, digits, . _ -)")
    n.add_argument("--data-dir", metavar="DIR", help="directory for this node's data")
    n.add_argument("--listen", metavar="HOST:PORT", type=_listen_address,
                   help="address for clients and peers (default 127.0.0.1:7001)")
    n.add_argument("--seeds", metavar="HOST:PORT[,...]", help="other nodes to join through")
    n.add_argument("--engine", choices=("log", "memory"), help="storage engine")
    n.add_argument("--durability", metavar="POLICY",
                   help="always | group | interval:MS | none (default group)")
    n.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    n.add_argument("--n-replicas", type=_positive_int, metavar="N", help="copies of each key")
    n.add_argument("--r", type=_positive_int, metavar="R", help="default read quorum")
    n.add_argument("--w", type=_positive_int, metavar="W", help="default write quorum")
    n.add_argument("--zone", help="failure domain of this node")
    n.add_argument("--capacity", type=float, help="relative share of the ring (default 1)")
    n.add_argument("--gossip", choices=("lan", "local", "off"),
                   help="membership preset: lan (default), local (one machine) or off")
    n.add_argument("--keyring", metavar="FILE",
                   help="gossip keys from `ringfs keygen` (mode 0600); SIGHUP reloads it")
    n.add_argument("--lww-prefix", metavar="PREFIX", action="append",
                   help="keys starting with PREFIX are last-write-wins: a get returns only the "
                        "newest value and concurrent writes are lost (repeatable; every node "
                        "needs the same ones; see docs/protocol.md)")
    n.set_defaults(func=cmd_node)

    # cluster
    c = sub.add_parser("cluster", help="run a local cluster of node processes",
                       description="Manage a cluster of node processes on this machine.")
    csub = c.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    up = csub.add_parser("up", help="start N nodes in the foreground; Ctrl-C stops them all",
                         description="Start N node processes on consecutive ports, print where "
                                     "each listens, and stop them all on Ctrl-C or SIGTERM.")
    up.add_argument("--nodes", type=_node_count, default=3,
                    help=f"how many nodes, 1..{MAX_LOCAL_NODES} (default 3)")
    up.add_argument("--n-replicas", type=_positive_int, metavar="N",
                    help="copies of each key (default 3)")
    up.add_argument("--base-port", type=_port, default=7001, help="port of the first node")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--data-root", metavar="DIR", default="./data",
                    help="each node keeps its data in DIR/NAME (default ./data)")
    up.add_argument("--engine", choices=("log", "memory"), help="storage engine")
    up.add_argument("--durability", metavar="POLICY", help="sync policy for every node")
    up.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                    default="info")
    up.add_argument("--gossip", choices=("lan", "local", "off"), default="local",
                    help="membership preset for every node (default local)")
    up.add_argument("--keyring", metavar="FILE", help="gossip keyring for every node")
    up.add_argument("--lww-prefix", metavar="PREFIX", action="append",
                    help="a last-write-wins key prefix for every node (repeatable)")
    up.set_defaults(func=cmd_cluster_up)

    kg = sub.add_parser("keygen", help="create or extend a gossip keyring file",
                        description="Write a new random AES-256 gossip key to FILE (created "
                                    "with mode 0600). Rotate without downtime: --install adds "
                                    "a key every node accepts, --use makes it the one they "
                                    "send with, --remove drops an old one; after each step "
                                    "copy FILE to every node and send them SIGHUP. Keys are "
                                    "never taken from the command line.")
    kg.add_argument("file", metavar="FILE")
    mode = kg.add_mutually_exclusive_group()
    mode.add_argument("--install", action="store_true",
                      help="append a new key to an existing FILE (not yet primary)")
    mode.add_argument("--use", metavar="FINGERPRINT",
                      help="make the key with this fingerprint primary")
    mode.add_argument("--remove", metavar="FINGERPRINT", help="remove a non-primary key")
    mode.add_argument("--list", action="store_true", help="list fingerprints, primary first")
    kg.set_defaults(func=cmd_keygen)

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--node", metavar="HOST:PORT", type=_address, default=DEFAULT_NODE,
                        help=f"node to talk to (default {DEFAULT_NODE})")
        sp.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="per-request timeout (default 5; 30 for file commands, "
                        "whose requests carry whole chunks)")
        sp.add_argument("--json", action="store_true", help="print JSON for scripts")

    g = sub.add_parser("get", help="print the value(s) of a key",
                       description="Print the value of KEY. With siblings, each is printed on "
                                   "its own line after a header. Exit 1 if the key is absent.")
    g.add_argument("key", metavar="KEY")
    g.add_argument("--r", type=_positive_int, metavar="R", help="replies to wait for")
    client_opts(g)
    g.set_defaults(func=cmd_get)

    pt = sub.add_parser("put", help="store a value under a key",
                        description="Store VALUE under KEY ('-' reads the value from stdin). "
                                    "Without --context the write supersedes what the node has.")
    pt.add_argument("key", metavar="KEY")
    pt.add_argument("value", metavar="VALUE", help="the value, or - to read stdin")
    pt.add_argument("--context", type=_b64, help="base64 context from `get --json`")
    pt.add_argument("--w", type=_positive_int, metavar="W", help="durable acks to wait for")
    client_opts(pt)
    pt.set_defaults(func=cmd_put)

    d = sub.add_parser("delete", help="delete a key",
                       description="Delete KEY (a tombstone that replicates like a write).")
    d.add_argument("key", metavar="KEY")
    d.add_argument("--context", type=_b64, help="base64 context from `get --json`")
    d.add_argument("--w", type=_positive_int, metavar="W", help="durable acks to wait for")
    client_opts(d)
    d.set_defaults(func=cmd_delete)

    wh = sub.add_parser("whereis", help="show which nodes hold a key",
                        description="Show KEY's preference list and, for each replica, its "
                                    "role (primary or fallback), whether it holds the key and "
                                    "how many siblings.")
    wh.add_argument("key", metavar="KEY")
    client_opts(wh)
    wh.set_defaults(func=cmd_whereis)

    pf = sub.add_parser("put-file", help="upload a file, streaming",
                        description="Upload PATH ('-' for stdin) as the file NAME. Only chunks "
                                    "the cluster does not hold yet are sent, so running it "
                                    "again after an interruption resumes it. Prints the SHA-256 "
                                    "stored; a progress bar on a terminal unless --quiet.")
    pf.add_argument("path", metavar="PATH")
    pf.add_argument("name", metavar="NAME")
    pf.add_argument("--chunk-size", type=_size, default=1024 * 1024, metavar="BYTES",
                    help="chunk size, e.g. 1M (default), 256K, 4M; at most the nodes' "
                    "max_value_bytes (4M unless configured)")
    pf.add_argument("--w", type=_positive_int, metavar="W", help="durable copies per chunk")
    pf.add_argument("--quiet", "-q", action="store_true", help="no progress, no summary")
    client_opts(pf)
    pf.set_defaults(func=cmd_put_file)

    gf = sub.add_parser("get-file", help="download a file, verified",
                        description="Download the file NAME into PATH ('-' for stdout). A "
                                    "path is written under a temporary name and moved into "
                                    "place once every byte is verified.")
    gf.add_argument("name", metavar="NAME")
    gf.add_argument("path", metavar="PATH")
    gf.add_argument("--offset", type=int, default=0, help="first byte to read")
    gf.add_argument("--length", type=int, help="bytes to read (default: to the end)")
    gf.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    client_opts(gf)
    gf.set_defaults(func=cmd_get_file)

    ls = sub.add_parser("ls", help="list files",
                        description="List the files whose names start with PREFIX.")
    ls.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    ls.add_argument("--long", "-l", action="store_true", help="show size and SHA-256")
    client_opts(ls)
    ls.set_defaults(func=cmd_ls)

    rm = sub.add_parser("rm", help="delete a file",
                        description="Delete the file NAME; its chunks are garbage-collected "
                                    "later, once no other file uses them.")
    rm.add_argument("name", metavar="NAME")
    client_opts(rm)
    rm.set_defaults(func=cmd_rm)

    s = sub.add_parser("status", help="show a node's view of the cluster",
                       description="Show members, ring and storage as one node sees them, then "
                                   "pending hints, handoff and anti-entropy progress of every "
                                   "member that answers.")
    client_opts(s)
    s.set_defaults(func=cmd_status)

    lv = sub.add_parser("leave", help="make a node leave the cluster gracefully",
                        description="Ask the node at --node to leave for good: it hands every "
                                    "key to the key's new owners, then announces its leave and "
                                    "stops. Waits and shows progress unless --no-wait.")
    client_opts(lv)
    lv.add_argument("--no-wait", action="store_true", help="return once the leave started")
    lv.add_argument("--wait-timeout", type=_seconds, default=3600.0, metavar="SECONDS",
                    help="give up waiting after this long (default 3600)")
    lv.set_defaults(func=cmd_leave)
    return p


# -- node ---------------------------------------------------------------------------

def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_node(args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_toml(args.config))
    for flag, key in (("name", "name"), ("data_dir", "data_dir"), ("listen", "listen"),
                      ("engine", "engine"), ("durability", "durability"),
                      ("log_level", "log_level"), ("n_replicas", "n_replicas"),
                      ("r", "r"), ("w", "w"), ("zone", "zone"), ("capacity", "capacity"),
                      ("gossip", "gossip"), ("keyring", "keyring_file")):
        v = getattr(args, flag)
        if v is not None:
            values[key] = v
    if args.seeds:
        values["seeds"] = [s.strip() for s in args.seeds.split(",")]
        if not all(values["seeds"]):
            raise ConfigError(f"--seeds {args.seeds!r}: an empty address between commas")
    if args.lww_prefix:
        values["lww_prefixes"] = list(args.lww_prefix)
    config = build_config(values)
    _setup_logging(config.log_level)
    from ringfs.runtime.server import serve_config

    try:
        serve_config(config)
    except Exception as exc:  # (trio's nurseries wrap what failed in groups)
        logging.getLogger("ringfs.cli").debug("the node stopped on an error", exc_info=True)
        err = _leaf(exc)
        if isinstance(err, OSError):
            where = f" ({err.filename})" if err.filename else ""
            raise CliError(f"cannot serve on {config.listen} with data in {config.data_dir}: "
                           f"{err.strerror or err}{where}") from None
        raise CliError(f"node {config.name}: {err}") from None
    return 0


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside `exc` that is not an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _check_port_free(addr: str) -> None:
    """CliError unless a node could listen on `addr` now: like the node's listener,
    on every address the host resolves to (IPv4, IPv6 or both)."""
    host, port = parse_address(addr)
    try:
        for family, _, _, _, sockaddr in socket.getaddrinfo(host, port,
                                                           type=socket.SOCK_STREAM):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as it would
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(sockaddr)
    except OSError as exc:
        raise CliError(f"cannot listen on {addr}: {exc.strerror or exc}") from None


def cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.base_port + args.nodes - 1 > 65535:
        raise CliError("--base-port + --nodes runs past port 65535")
    host = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    addresses = [format_address(host, args.base_port + i) for i in range(args.nodes)]
    # What each node would refuse is refused here, before any starts: one line, not
    # one error per node after the others are up.
    for i, addr in enumerate(addresses):
        values: dict[str, Any] = {"name": f"n{i + 1}", "listen": addr,
                                  "data_dir": os.path.join(args.data_root, f"n{i + 1}"),
                                  "gossip": args.gossip}
        for key, val in (("engine", args.engine), ("durability", args.durability),
                         ("n_replicas", args.n_replicas), ("keyring_file", args.keyring),
                         ("lww_prefixes", list(args.lww_prefix or ()))):
            if val:
                values[key] = val
        build_config(values)
    if args.keyring:
        from ringfs.gossip import KeyringError, load_keyring_file

        try:
            load_keyring_file(args.keyring)
        except (KeyringError, OSError, ValueError) as exc:
            raise CliError(f"keyring {args.keyring}: {exc}") from None
    for addr in addresses:  # a port already taken would be reported as a node up
        _check_port_free(addr)
    try:
        os.makedirs(args.data_root, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--data-root {args.data_root}: {exc.strerror or exc}") from None
    procs: list[tuple[str, str, subprocess.Popen[bytes]]] = []
    commands: dict[str, list[str]] = {}
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old_int = signal.signal(signal.SIGINT, stop)
    old_term = signal.signal(signal.SIGTERM, stop)
    try:
        for i, addr in enumerate(addresses):
            name = f"n{i + 1}"
            data_dir = os.path.join(args.data_root, name)
            try:
                os.makedirs(data_dir, exist_ok=True)
            except OSError as exc:
                raise CliError(f"{data_dir}: {exc.strerror or exc}") from None
            cmd = [sys.executable, "-m", "ringfs", "node", "--name", name, "--listen", addr,
                   "--data-dir", data_dir, "--log-level", args.log_level]
            seeds = [a for a in addresses if a != addr]
            if seeds:
                cmd += ["--seeds", ",".join(seeds)]
            if args.engine:
                cmd += ["--engine", args.engine]
            if args.durability:
                cmd += ["--durability", args.durability]
            if args.n_replicas:
                cmd += ["--n-replicas", str(args.n_replicas)]
            cmd += ["--gossip", args.gossip]
            if args.keyring:
                cmd += ["--keyring", args.keyring]
            for prefix in args.lww_prefix or ():
                cmd += ["--lww-prefix", prefix]
            # Children ignore the terminal's Ctrl-C; this process stops them in order.
            proc = subprocess.Popen(cmd, start_new_session=True)
            procs.append((name, addr, proc))
            commands[name] = cmd
        for name, addr, proc in procs:
            host, port = parse_address(addr)
            if not _wait_listening(host, port, proc, 15.0):
                raise CliError(f"node {name} did not start listening on {addr}")
            print(f"{name} listening on {addr} (data {os.path.join(args.data_root, name)})",
                  flush=True)
        print(f"cluster of {len(procs)} node(s) up; Ctrl-C stops it", flush=True)
        reported: set[str] = set()
        while not stopping:
            for name, _addr, proc in procs:
                if proc.poll() is not None and name not in reported:
                    # The others keep running: losing a node is what a cluster is for.
                    reported.add(name)
                    why = ("stopped cleanly (it left the cluster, or was stopped)"
                           if proc.returncode == 0 else f"exited with status {proc.returncode}")
                    print(f"ringfs: node {name} {why}; start it again with: "
                          f"{shlex.join(commands[name])}", file=sys.stderr, flush=True)
            if len(reported) == len(procs):
                print("ringfs: every node has exited", file=sys.stderr, flush=True)
                return EXIT_FAILED
            time.sleep(0.1)
        return 0
    finally:
        for _name, _addr, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, _addr, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        if procs:
            print("cluster stopped", flush=True)


# -- client commands ------------------------------------------------------------------

def _client(args: argparse.Namespace) -> Any:
    from ringfs.client import Client

    return Client(args.node, timeout_s=_timeout(args, 5.0))


def _key_arg(text: str) -> bytes:
    key = os.fsencode(text)
    if not key:
        _fail("KEY must not be empty", EXIT_USAGE)
    return key


def _values_json(values: Sequence[bytes]) -> dict[str, Any]:
    try:
        return {"values": [v.decode("utf-8") for v in values], "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"values": [base64.b64encode(v).decode() for v in values], "encoding": "base64"}


def cmd_get(args: argparse.Namespace) -> int:
    key = _key_arg(args.key)
    with _client(args) as c:
        res = c.get(key, r=args.r)
    if args.json:
        out = {"key": args.key, "found": res.found,
               "context": base64.b64encode(res.context).decode(), **_values_json(res.values)}
        print(json.dumps(out))
        return 0
    if not res.values:
        raise CliError(f"key {args.key!r} not found")
    if len(res.values) == 1:
        sys.stdout.buffer.write(res.values[0])
        if sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")
    else:
        print(f"# {len(res.values)} siblings", flush=True)
        for v in res.values:
            sys.stdout.buffer.write(v + b"\n")
    sys.stdout.flush()
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    key = _key_arg(args.key)
    value = sys.stdin.buffer.read() if args.value == "-" else os.fsencode(args.value)
    with _client(args) as c:
        ctx = c.put(key, value, args.context, w=args.w)
    if args.json:
        print(json.dumps({"key": args.key, "ok": True, "bytes": len(value),
                          "context": base64.b64encode(ctx).decode()}))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    key = _key_arg(args.key)
    with _client(args) as c:
        ctx = c.delete(key, args.context, w=args.w)
    if args.json:
        print(json.dumps({"key": args.key, "ok": True,
                          "context": base64.b64encode(ctx).decode()}))
    return 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(obj).decode()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def cmd_whereis(args: argparse.Namespace) -> int:
    key = _key_arg(args.key)
    with _client(args) as c:
        res = c.whereis(key)
    if args.json:
        print(json.dumps(_jsonable(res)))
        return 0
    print(f"key {args.key!r}: preference list {', '.join(res.get('preference_list', []))}")
    for r in res.get("replicas", []):
        role = r.get("role")
        if r.get("hint_for"):
            role = f"{role} for {r['hint_for']}"
        held = ("tombstone" if r.get("tombstone") else
                f"{r.get('siblings')} sibling(s)" if r.get("present") else "absent")
        if not r.get("answered"):
            held = f"no answer ({r.get('error', 'timeout')})"
        print(f"  {r.get('node'):<16} {role:<22} {held}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        st = c.status()
    cluster = _cluster_status(args, st)
    if args.json:
        nodes = {name: other if "error" in other else
                 {k: other.get(k) for k in ("hints", "handoff", "anti_entropy")}
                 for name, other in cluster}
        print(json.dumps(_jsonable({**st, "nodes": nodes})))
        return 0
    print(f"node {st.get('node')} at {st.get('address')} (ringfs {st.get('version')})")
    if st.get("read_only"):
        print(f"  READ-ONLY: {st['read_only']}")
    ring = st.get("ring", {})
    print(f"ring: N={ring.get('n_replicas')} R={ring.get('r')} W={ring.get('w')}, "
          f"{ring.get('vnodes')} virtual nodes")
    print("members:")
    for m in st.get("members", []):
        share = m.get("ring_share", 0.0) * 100
        print(f"  {m.get('name'):<16} {m.get('address'):<22} {m.get('state'):<8} "
              f"incarnation {m.get('incarnation'):<4} owns {share:5.1f}% of the ring")
    s = st.get("storage", {})
    print(f"storage: {s.get('engine')} ({s.get('durability')}), {s.get('keys')} keys, "
          f"{s.get('tombstones')} tombstones, {s.get('data_bytes')} bytes")
    print("convergence, per node (hints held for down owners; keys moving to new owners; "
          "anti-entropy):")
    for name, other in cluster:
        if "error" in other:
            print(f"  {name:<16} {other['error']}")
            continue
        h, ho, ae = other.get("hints", {}), other.get("handoff", {}), other.get("anti_entropy", {})
        moving = (ho.get("queued_keys") or 0) + (ho.get("inflight_keys") or 0)
        print(f"  {name:<16} hints {h.get('pending', 0):<7} handoff {ho.get('state', '?'):<8} "
              f"{moving} moving, {ho.get('moved_keys', 0)} moved"
              f"{' LEAVING' if ho.get('leaving') else ''}; anti-entropy "
              f"{ae.get('exchanges', 0)} exchanges, {ae.get('keys_repaired', 0)} keys repaired"
              f"{', building trees' if ae.get('arcs_building') else ''}")
    return 0


def _cluster_status(args: argparse.Namespace, st: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, status or {"error": ...}) of every member that is not known to be gone."""
    from ringfs.client import Client
    from ringfs.errors import RingfsError

    out: list[tuple[str, Any]] = []
    for m in st.get("members", []):
        name, addr = str(m.get("name")), str(m.get("address"))
        if m.get("state") in ("dead", "left"):
            out.append((name, {"error": str(m.get("state"))}))
            continue
        if name == st.get("node"):
            out.append((name, st))
            continue
        try:
            with Client(addr, timeout_s=min(_timeout(args, 5.0), 2.0), retries=0) as c:
                out.append((name, c.status()))
        except (RingfsError, OSError) as exc:
            out.append((name, {"error": f"no answer: {exc}"}))
    return out


def cmd_leave(args: argparse.Namespace) -> int:
    import time

    from ringfs.errors import RingfsError

    with _client(args) as c:
        first = c.leave()
    if args.json and args.no_wait:
        print(json.dumps(_jsonable(first)))
        return 0
    print(f"{args.node} is leaving: handing its keys to their new owners")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.wait_timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with _client(args) as c:
                ho = c.status(timeout_s=2.0).get("handoff", {})
        except (RingfsError, OSError):
            print(f"{args.node} has left the cluster and stopped")
            return 0
        line = (f"  {ho.get('state')}: {ho.get('moved_keys', 0)} keys "
                f"({ho.get('moved_bytes', 0)} bytes) moved, "
                f"{(ho.get('queued_keys') or 0) + (ho.get('inflight_keys') or 0)} moving")
        if line != last and not args.json:
            print(line, flush=True)
            last = line
        time.sleep(0.5)
    _fail(f"{args.node} is still leaving after {args.wait_timeout:g} s")


class Progress:
    """A one-line progress bar on stderr (bytes, rate, ETA), redrawn at most 5 times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 and total > done else 0.0
        pct = 100.0 * done / total if total else 100.0
        width = 24
        fill = int(width * pct / 100)
        line = (f"\r[{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}% "
                f"{_human(done)}/{_human(total)} {_human(rate)}/s ETA {eta:4.0f}s ")
        sys.stderr.write(line)
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _file_client(args: argparse.Namespace) -> Any:
    from ringfs.client import Client

    return Client(args.node, timeout_s=_timeout(args, 30.0))


def _timeout(args: argparse.Namespace, default: float) -> float:
    """--timeout when given, else the command's default."""
    return float(args.timeout) if args.timeout is not None else default


def cmd_put_file(args: argparse.Namespace) -> int:
    from ringfs.errors import LocalProtocolError

    bar = Progress(sys.stderr.isatty() and not args.quiet and not args.json)
    src: Any = sys.stdin.buffer if args.path == "-" else args.path
    if src is args.path and not os.path.isfile(args.path):
        if os.path.isdir(args.path):
            raise CliError(f"{args.path}: is a directory")
        if os.path.exists(args.path):
            raise CliError(f"{args.path}: not a regular file (to upload a stream, give - "
                           "and pipe it to standard input)")
        raise CliError(f"{args.path}: no such file")
    try:
        with _file_client(args) as c:
            res = c.put_file(args.name, src, chunk_size=args.chunk_size, w=args.w,
                             progress=bar)
    except LocalProtocolError as exc:
        raise CliError(exc.message) from None
    except OSError as exc:
        raise CliError(f"{args.path}: {exc.strerror or exc}") from None
    finally:
        bar.finish()
    if args.json:
        print(json.dumps({"name": res.name, "size": res.size, "sha256": res.sha256,
                          "chunks": res.chunks, "sent": res.sent, "skipped": res.skipped}))
        return 0
    print(f"{res.sha256}  {res.name}", flush=True)
    if not args.quiet:
        print(f"ringfs: stored {res.name}: {res.size} bytes in {res.chunks} chunk(s), "
              f"{res.sent} sent, {res.skipped} skipped (already stored)", file=sys.stderr)
    return 0


def cmd_get_file(args: argparse.Namespace) -> int:
    from ringfs.errors import FileNotFound, LocalProtocolError

    to_stdout = args.path == "-"
    bar = Progress(sys.stderr.isatty() and not args.quiet and not args.json)
    dest: Any = sys.stdout.buffer if to_stdout else args.path
    try:
        with _file_client(args) as c:
            info = c.get_file(args.name, dest, offset=args.offset, length=args.length,
                              progress=bar)
    except FileNotFound:
        raise CliError(f"file {args.name!r} not found") from None
    except LocalProtocolError as exc:
        raise CliError(exc.message) from None
    except OSError as exc:
        raise CliError(f"{args.path}: {exc.strerror or exc}") from None
    finally:
        bar.finish()
    if to_stdout:
        sys.stdout.flush()
    elif args.json:
        print(json.dumps({"name": info.name, "size": info.size, "sha256": info.sha256,
                          "versions": info.versions}))
    elif info.versions > 1 and not args.quiet:
        print(f"ringfs: {args.name} has {info.versions} concurrent versions; wrote the "
              "latest upload", file=sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _file_client(args) as c:
        names = c.list_files(args.prefix)
        infos = [c.stat_file(n) for n in names] if (args.long or args.json) else []
    if args.json:
        print(json.dumps([{"name": i.name, "size": i.size, "sha256": i.sha256,
                           "versions": i.versions} for i in infos if i is not None]))
        return 0
    if args.long:
        for i in infos:
            if i is not None:
                print(f"{i.size:>14}  {i.sha256[:16]}  {i.name}"
                      f"{f'  ({i.versions} versions)' if i.versions > 1 else ''}")
        return 0
    for n in names:
        print(n)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _file_client(args) as c:
        info = c.stat_file(args.name)
        if info is None:
            raise CliError(f"file {args.name!r} not found")
        c.delete_file(args.name, info.context)
    if args.json:
        print(json.dumps({"name": args.name, "ok": True}))
    return 0


def _fingerprint(key: bytes) -> str:
    import hashlib

    return hashlib.sha256(key).hexdigest()[:12]


def cmd_keygen(args: argparse.Namespace) -> int:
    from ringfs.gossip import KeyringError, generate_key, load_keys, save_keyring_file

    path = args.file
    try:
        if args.list or args.use or args.remove or args.install:
            keys = load_keys(path)
        elif os.path.exists(path):
            raise CliError(f"{path} exists; use --install to add a key to it")
        else:
            keys = []
        if args.list:
            for i, k in enumerate(keys):
                print(f"{_fingerprint(k)}{'  (primary)' if i == 0 else ''}")
            return 0
        if args.use or args.remove:
            fp = args.use or args.remove
            match = [k for k in keys if _fingerprint(k) == fp]
            if not match:
                raise CliError(f"no key with fingerprint {fp} in {path}")
            if args.use:
                keys = [match[0]] + [k for k in keys if k != match[0]]
            else:
                if keys[0] == match[0]:
                    raise CliError("cannot remove the primary key; --use another one first")
                keys = [k for k in keys if k != match[0]]
        else:
            new = generate_key()
            keys = [*keys, new] if keys else [new]
        save_keyring_file(path, keys)
        if not args.use and not args.remove:
            print(f"new key {_fingerprint(keys[-1])} written to {path}")
    except (KeyringError, OSError, ValueError) as exc:
        raise CliError(f"keyring {path}: {exc}") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ringfs.errors import RingfsError

    try:
        status: int = args.func(args)
        return status
    except CliError as exc:
        _fail(str(exc))
    except ConfigError as exc:
        _fail(f"bad configuration: {exc}", EXIT_USAGE)
    except RingfsError as exc:
        _fail(f"{exc.code.name.lower()}: {exc.message}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("RINGFS_TRACEBACK"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {_leaf(exc)} "
              "(RINGFS_TRACEBACK=1 shows where)")


if __name__ == "__main__":
    sys.exit(main())
