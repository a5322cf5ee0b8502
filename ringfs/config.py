"""Node configuration: frozen dataclasses, one docstring per field, units in names.

Settings come from a TOML file (`--config FILE`) and command-line flags; flags
win. Every value is validated when the config is built, so a node never starts
with a setting it cannot honour.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringfs.wire import Limits

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch
DURABILITY_KINDS = ("always", "group", "interval", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names it."""


def _decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also passes "²" and other scripts' digits."""
    return text.isascii() and text.isdigit()


def format_address(host: str, port: int) -> str:
    """HOST:PORT as parse_address reads it back: an IPv6 host goes in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "HOST:PORT" (or "[V6]:PORT") and validate the port (0 only if allowed)."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"address {text!r} is not HOST:PORT")
    host, _, port_s = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # "::1" or "fe80::1:7001": where the address ends is a guess
        raise ConfigError(f"address {text!r}: write an IPv6 address in brackets, "
                          "as [HOST]:PORT")
    low = 0 if allow_port_zero else 1
    if not host or not _decimal(port_s) or not low <= int(port_s) < 65536:
        raise ConfigError(f"address {text!r} is not HOST:PORT with a port in 1..65535")
    return host, int(port_s)


@dataclass(frozen=True)
class Durability:
    """When writes reach stable storage, relative to acknowledging them."""

    kind: str = "group"
    """always: one fsync per write before its ack; group: writes that arrive together
    share one fsync before their acks (the default); interval: ack at once, fsync every
    interval_ms (a crash may lose that much); none: ack at once, the OS decides."""
    interval_ms: int = 1000
    """Period of the background fsync when kind is interval."""

    @classmethod
    def parse(cls, text: str) -> Durability:
        """Parse always | group | interval:MS | none."""
        kind, _, arg = text.partition(":")
        if kind not in DURABILITY_KINDS:
            raise ConfigError(f"durability {text!r}: expected always, group, interval:MS or none")
        if kind == "interval":
            if not _decimal(arg) or not 1 <= int(arg) <= 3_600_000:
                raise ConfigError(f"durability {text!r}: interval needs milliseconds 1..3600000")
            return cls(kind, int(arg))
        if arg:
            raise ConfigError(f"durability {text!r}: only interval takes an argument")
        return cls(kind)

    @property
    def acks_after_sync(self) -> bool:
        return self.kind in ("always", "group")

    def __str__(self) -> str:
        return f"interval:{self.interval_ms}" if self.kind == "interval" else self.kind


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node needs to run."""

    name: str
    """Unique node name in the cluster; also the node's id in causal versions."""
    listen: str = "127.0.0.1:7001"
    """HOST:PORT for client and peer TCP (and, with gossip, UDP on the same port)."""
    data_dir: str = "./data/node"
    """Directory holding this node's store; locked while the node runs."""
    engine: str = "log"
    """Storage engine: log (the crash-safe log-structured store on disk, the default) or
    memory (volatile; for tests, benchmarks of the network path and the simulator)."""
    durability: Durability = field(default_factory=Durability)
    """Sync policy; see Durability."""
    limits: Limits = field(default_factory=Limits)
    """Sizes accepted from clients and peers."""
    max_siblings: int = 64
    """Writes that would leave a key with more siblings are refused (TOO_MANY_SIBLINGS)."""
    lww_prefixes: tuple[str, ...] = ()
    """Last-write-wins namespaces: keys starting with one of these (UTF-8) prefixes read
    as one value, the newest written, instead of siblings (ringfs/lww.py has the data-loss
    caveat). "" makes every key LWW. Every node of a cluster must list the same ones."""
    max_connections: int = 1024
    """Client connections beyond this are refused at accept time."""
    max_inflight_per_connection: int = 4096
    """Requests awaiting durability on one connection before reading from it pauses."""
    poll_spin_us: int = 50
    """Longest the node polls its connections for the next request before it sleeps,
    in microseconds (adaptive: it polls only while requests keep coming that soon;
    docs/operations.md). 0: always sleep, never busy-poll."""
    request_timeout_s: float = 5.0
    """How long a coordinator waits for replicas before giving up on a request."""
    log_level: str = "info"
    """debug, info, warning or error."""
    seeds: tuple[str, ...] = ()
    """HOST:PORT of other nodes to join through."""
    n_replicas: int = 3
    """N: how many nodes keep a copy of each key."""
    r: int = 0
    """Default read quorum: replies a get waits for before answering. 0 (not set): a
    majority of n_replicas, 2 of the default 3."""
    w: int = 0
    """Default write quorum: durable acknowledgements a put waits for. 0 (not set): a
    majority of n_replicas."""
    capacity: float = 1.0
    """Relative share of the ring this node takes (virtual nodes scale with it)."""
    zone: str = ""
    """Failure domain; replicas of a key go to distinct zones first. Empty: no zone."""
    vnodes_per_capacity: int = 1024
    """Virtual nodes per unit of capacity: 1024 keeps every share within 10% of fair at
    8 nodes (docs/ring.md has the balance and cost table)."""
    read_repair: bool = True
    """Bring replicas that a get found stale up to the merged version."""
    tombstone_grace_s: float = 3600.0
    """How long after every replica holds a tombstone before it is reaped; kept long so
    that hints written before the delete are delivered first (docs/design.md)."""
    unreachable_s: float = 2.0
    """A peer whose connection failed counts as down this long (until gossip knows better)."""
    max_hints: int = 100_000
    """Writes this node keeps for down owners at most; beyond it fallback writes are refused."""
    gossip: str = "lan"
    """Membership: lan or local (SWIM presets, see ringfs/gossip/config.py; local is for
    processes on one machine), or off (seed announcements only, no failure detection)."""
    keyring_file: str = ""
    """File of gossip keys (from `ringfs keygen`), primary first; empty: gossip unencrypted."""
    hinted_handoff: bool = True
    """Deliver writes kept for down owners once they are back (off: anti-entropy alone
    repairs them; for experiments)."""
    anti_entropy_interval_s: float = 5.0
    """How often this node starts a Merkle-tree exchange with one of its peers (round
    robin); 0 switches active anti-entropy off."""
    anti_entropy_max_keys: int = 2000
    """Differing keys one exchange synchronises at most; more are left to the next one."""
    repair_bytes_per_s: int = 32 << 20
    """Rate limit of anti-entropy and ownership handoff transfers, each, in bytes/s."""
    ownership_settle_s: float = 5.0
    """How long the ring must stay unchanged before keys this node no longer owns move."""
    scrub_interval_s: float = 5.0
    """Every this often, read back (and so verify) every record of one ring arc this node
    replicates, so that damage no request reads is found and repaired; 0 turns it off.
    At the default a node of a 3-node cluster (3,072 arcs) verifies everything in ~4 h."""
    gc_grace_s: float = 3600.0
    """A chunk is garbage-collected only after this long untouched (not written, not found
    by an upload's check) on its node: it covers uploads in progress (docs/design.md)."""
    gc_interval_s: float = 600.0
    """How often a node looks for unreferenced chunks to collect."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"name {self.name!r}: 1-64 characters of letters, digits, '.', '_' or '-'"
            )
        parse_address(self.listen, allow_port_zero=True)
        for s in self.seeds:
            parse_address(s)
        if self.engine not in ("memory", "log"):
            raise ConfigError(f"engine {self.engine!r}: expected memory or log")
        if not 1 <= self.max_siblings <= 1024:
            raise ConfigError("max_siblings must be in 1..1024")
        if not isinstance(self.lww_prefixes, tuple):
            raise ConfigError("lww_prefixes must be a list of strings")
        if len(self.lww_prefixes) > 64:
            raise ConfigError("lww_prefixes: at most 64 prefixes")
        for prefix in self.lww_prefixes:
            if not isinstance(prefix, str):
                raise ConfigError("lww_prefixes must be a list of strings")
            try:
                raw = prefix.encode()
            except UnicodeEncodeError:
                raise ConfigError("lww_prefixes: a prefix is not valid text") from None
            if len(raw) > self.limits.max_key_bytes:
                raise ConfigError(f"lww_prefixes: {prefix[:40]!r}... is longer than a key")
            if raw.startswith(b"\x00"):
                raise ConfigError("lww_prefixes: keys starting with byte 0x00 are reserved")
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError("max_connections must be in 1..1000000")
        if not 1 <= self.max_inflight_per_connection <= 1_000_000:
            raise ConfigError("max_inflight_per_connection must be in 1..1000000")
        if not 0 <= self.poll_spin_us <= 10_000:
            raise ConfigError("poll_spin_us must be in 0..10000")
        if not 0.001 <= self.request_timeout_s <= 3600:
            raise ConfigError("request_timeout_s must be in 0.001..3600")
        if not 1 <= self.n_replicas <= 16:
            raise ConfigError("n_replicas must be in 1..16")
        for quorum in ("r", "w"):
            if getattr(self, quorum) == 0:
                object.__setattr__(self, quorum, self.n_replicas // 2 + 1)
        if not 1 <= self.r <= self.n_replicas or not 1 <= self.w <= self.n_replicas:
            raise ConfigError(f"r and w must be in 1..n_replicas (r = {self.r}, w = {self.w}, "
                              f"n_replicas = {self.n_replicas})")
        if not 0 < self.capacity <= 1000:
            raise ConfigError("capacity must be in (0, 1000]")
        if not 1 <= self.vnodes_per_capacity <= 4096:
            raise ConfigError("vnodes_per_capacity must be in 1..4096")
        if len(self.zone) > 64:
            raise ConfigError("zone must be at most 64 characters")
        if self.zone and (not self.zone.isprintable() or self.zone != self.zone.strip()):
            raise ConfigError(f"zone {self.zone!r}: printable characters, no spaces at the "
                              "ends")
        for what, path in (("data_dir", self.data_dir), ("keyring_file", self.keyring_file)):
            if "\x00" in path:
                raise ConfigError(f"{what} must not contain a NUL character")
        if not 0 <= self.tombstone_grace_s <= 86400 * 30:
            raise ConfigError("tombstone_grace_s must be in 0..2592000")
        if not 0.01 <= self.unreachable_s <= 3600:
            raise ConfigError("unreachable_s must be in 0.01..3600")
        if not 0 <= self.max_hints <= 100_000_000:
            raise ConfigError("max_hints must be in 0..100000000")
        if self.gossip not in ("lan", "local", "off"):
            raise ConfigError(f"gossip {self.gossip!r}: expected lan, local or off")
        if not 0 <= self.anti_entropy_interval_s <= 86400:
            raise ConfigError("anti_entropy_interval_s must be in 0..86400")
        if not 1 <= self.anti_entropy_max_keys <= 1_000_000:
            raise ConfigError("anti_entropy_max_keys must be in 1..1000000")
        if not 1024 <= self.repair_bytes_per_s <= 1 << 40:
            raise ConfigError("repair_bytes_per_s must be in 1024..2**40")
        if not 0 <= self.ownership_settle_s <= 86400:
            raise ConfigError("ownership_settle_s must be in 0..86400")
        if not 0 <= self.scrub_interval_s <= 86400:
            raise ConfigError("scrub_interval_s must be in 0..86400")
        if not 4 * self.request_timeout_s <= self.gc_grace_s <= 86400 * 365:
            raise ConfigError("gc_grace_s must be at least 4 x request_timeout_s "
                              "(and at most a year)")
        if not 0.1 <= self.gc_interval_s <= 86400:
            raise ConfigError("gc_interval_s must be in 0.1..86400")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level {self.log_level!r}: expected one of {LOG_LEVELS}")


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "listen": str,
    "data_dir": str,
    "engine": str,
    "durability": str,
    "max_siblings": int,
    "lww_prefixes": list,
    "max_connections": int,
    "max_inflight_per_connection": int,
    "poll_spin_us": int,
    "request_timeout_s": (int, float),
    "log_level": str,
    "seeds": list,
    "n_replicas": int,
    "r": int,
    "w": int,
    "capacity": (int, float),
    "zone": str,
    "vnodes_per_capacity": int,
    "read_repair": bool,
    "tombstone_grace_s": (int, float),
    "unreachable_s": (int, float),
    "max_hints": int,
    "gossip": str,
    "keyring_file": str,
    "hinted_handoff": bool,
    "anti_entropy_interval_s": (int, float),
    "anti_entropy_max_keys": int,
    "repair_bytes_per_s": int,
    "ownership_settle_s": (int, float),
    "scrub_interval_s": (int, float),
    "gc_grace_s": (int, float),
    "gc_interval_s": (int, float),
}
_LIMITS = {f.name for f in dataclasses.fields(Limits)}


def build_config(values: dict[str, Any]) -> NodeConfig:
    """Build a NodeConfig from plain values (TOML tables, flags); ConfigError on bad input."""
    kwargs: dict[str, Any] = {}
    val: Any
    for key, val in values.items():
        if key == "limits":
            if not isinstance(val, dict):
                raise ConfigError("[limits] must be a table")
            unknown = set(val) - _LIMITS
            if unknown:
                raise ConfigError(f"unknown limits setting(s): {', '.join(sorted(unknown))}")
            for k, v in val.items():
                if type(v) is not int:
                    raise ConfigError(f"limits.{k} must be an integer")
            try:
                kwargs["limits"] = Limits(**val)
            except ValueError as exc:
                raise ConfigError(f"limits: {exc}") from None
            continue
        want = _SCALARS.get(key)
        if want is None:
            raise ConfigError(f"unknown setting {key!r}")
        if not isinstance(val, want) or (isinstance(val, bool) and want is not bool):
            raise ConfigError(f"setting {key!r} has the wrong type")
        val = values[key]  # re-read untyped: isinstance against a tuple narrows to object
        if key == "durability":
            kwargs[key] = Durability.parse(val)
        elif key == "seeds":
            if not all(isinstance(s, str) for s in val):
                raise ConfigError("seeds must be a list of HOST:PORT strings")
            kwargs[key] = tuple(val)
        elif key == "lww_prefixes":
            kwargs[key] = tuple(val)  # NodeConfig checks the items
        elif key in ("request_timeout_s", "capacity", "tombstone_grace_s", "unreachable_s",
                     "anti_entropy_interval_s", "ownership_settle_s", "scrub_interval_s",
                     "gc_grace_s",
                     "gc_interval_s"):
            try:
                kwargs[key] = float(val)
            except OverflowError:
                raise ConfigError(f"setting {key!r} is out of range") from None
        else:
            kwargs[key] = val
    if "name" not in kwargs:
        raise ConfigError("a node needs a name (--name or name = ... in the config file)")
    for quorum in ("r", "w"):
        if kwargs.get(quorum) == 0:  # (0 stands for "not set" inside NodeConfig)
            raise ConfigError("r and w must be in 1..n_replicas")
    try:
        return NodeConfig(**kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into plain values; ConfigError when unreadable or invalid."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid UTF-8") from None
    node = data.pop("node", None)
    if node is not None:
        if not isinstance(node, dict):
            raise ConfigError("[node] must be a table")
        both = sorted(set(data) & set(node))
        if both:
            raise ConfigError(f"config file {path}: {', '.join(both)} set both at the top "
                              "level and under [node]")
        data = {**data, **node}
    return data
