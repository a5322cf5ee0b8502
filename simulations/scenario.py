"""Scenarios: a cluster, a workload and a timeline of faults, read from TOML.

A scenario file looks like this (every table but the events is optional):

    description = "A 3/2 split; both sides keep taking writes through sloppy quorum."
    nodes = 5
    duration_s = 30.0      # the safety phase: workload plus faults
    liveness_s = 30.0      # after the final heal, the bound on convergence

    [replication]
    n = 3
    r = 2
    w = 2

    [workload]             # simulations.workload.WorkloadConfig
    clients = 4
    keys = 8
    rate_ops_s = 50

    [network]              # the default link: simulations.network.LinkConfig
    latency_s = 0.0005

    [disk]                 # simulations.world.DiskConfig
    fsync_latency_s = 0.002

    [[event]]
    at = 5.0
    action = "partition"
    groups = [["n1", "n2"], ["n3", "n4", "n5"]]

    [[event]]
    at = 15.0
    action = "heal"

Nodes are called n1..nN. Times are simulated seconds from the start of the
workload; every event must fall inside the safety phase, which always ends with
a heal of everything (network faults cleared, crashed nodes restarted). Files are
validated strictly: an unknown key, a node that does not exist or a time outside
the phase is an error naming the file, the event and the field.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ringfs.config import ConfigError, NodeConfig
from simulations.network import LinkConfig
from simulations.workload import WorkloadConfig
from simulations.world import DiskConfig

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file or option that cannot be run, with the reason."""


# action -> (required fields, optional fields)
ACTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "partition": (frozenset({"groups"}), frozenset({"one_way", "duration_s"})),
    "isolate": (frozenset({"nodes"}), frozenset({"duration_s"})),
    "heal": (frozenset(), frozenset()),
    "crash": (frozenset({"nodes"}), frozenset({"duration_s"})),
    "restart": (frozenset({"nodes"}), frozenset()),
    "pause": (frozenset({"nodes", "duration_s"}), frozenset()),
    "skew": (frozenset({"nodes", "skew_s"}), frozenset()),
    "clog": (frozenset({"nodes", "clog_s"}), frozenset({"duration_s"})),
    "loss": (frozenset({"probability"}),
             frozenset({"nodes", "duplicate", "jitter_s", "duration_s"})),
    "flap": (frozenset({"groups", "period_s", "duration_s"}), frozenset({"one_way"})),
    "rot": (frozenset({"nodes", "probability"}), frozenset()),
}
"""What each timeline action does:

partition  cut every link between the groups (one_way: only from groups[0] to groups[1])
isolate    cut the listed nodes off from every other node
heal       clear every partition, clog and loss (crashed nodes stay down)
crash      kill the nodes ("all" for a power failure); unsynced writes are lost;
           with duration_s they restart that much later
restart    start crashed nodes again on what their disks kept
pause      stop the nodes' processes for duration_s (SIGSTOP); input queues up
skew       set the nodes' clocks skew_s ahead of true time (negative: behind)
clog       add clog_s of delay to every link to and from the nodes
loss       drop datagrams with this probability (streams are reliable: they see
           jitter_s of retransmission delay instead), on the nodes' links or everywhere
flap       toggle the partition between the groups every ~period_s for duration_s
rot        bit rot: damage each record on the nodes' disks with this probability; the
           engine finds a damaged record when it next reads it, never serves it and
           reports the key for repair (as the log store does with its checksums)
"""

_EVENT_FIELDS = {"at", "action", "groups", "nodes", "one_way", "duration_s", "skew_s", "clog_s",
                 "probability", "duplicate", "jitter_s", "period_s"}
_TOP = {"description", "nodes", "duration_s", "liveness_s", "replication", "workload",
        "network", "disk", "node", "event"}
_NODE_SETTINGS: dict[str, type | tuple[type, ...]] = {
    "request_timeout_s": (int, float), "unreachable_s": (int, float),
    "tombstone_grace_s": (int, float), "max_siblings": int,
    "vnodes_per_capacity": int, "read_repair": bool, "lww_prefixes": list}
"""NodeConfig settings a scenario may change under [node]."""


@dataclass(frozen=True)
class FaultEvent:
    """One entry of a scenario's timeline."""

    at: float
    action: str
    nodes: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    one_way: bool = False
    duration_s: float | None = None
    skew_s: float = 0.0
    clog_s: float = 0.0
    probability: float = 0.0
    duplicate: float = 0.0
    jitter_s: float = 0.0
    period_s: float = 0.0

    def describe(self) -> str:
        """One line for the timeline summary."""
        a = self.action
        nodes = ",".join(self.nodes)
        groups = " | ".join("{" + ",".join(g) + "}" for g in self.groups)
        dur = f" for {self.duration_s:g}s" if self.duration_s is not None else ""
        if a == "partition":
            arrow = " -> (one way)" if self.one_way else ""
            return f"partition {groups}{arrow}{dur}"
        if a == "flap":
            way = " one way" if self.one_way else ""
            return f"flap {groups} every ~{self.period_s:g}s{way}{dur}"
        if a == "heal":
            return "heal network"
        if a == "skew":
            return f"skew {nodes} {self.skew_s:+g}s"
        if a == "clog":
            return f"clog {nodes} +{self.clog_s:g}s{dur}"
        if a == "loss":
            where = nodes or "all links"
            extra = f" dup {self.duplicate:g}" if self.duplicate else ""
            extra += f" jitter {self.jitter_s:g}s" if self.jitter_s else ""
            return f"loss {self.probability:g} on {where}{extra}{dur}"
        if a == "rot":
            return f"rot {self.probability:g} of the records of {nodes}"
        return f"{a} {nodes}{dur}"


@dataclass(frozen=True)
class Scenario:
    """Everything a run needs besides the seed."""

    name: str
    description: str = ""
    nodes: int = 5
    n: int = 3
    r: int = 2
    w: int = 2
    duration_s: float = 30.0
    liveness_s: float = 30.0
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    network: LinkConfig = field(default_factory=LinkConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    node_settings: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[FaultEvent, ...] = ()

    @property
    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def with_overrides(self, *, nodes: int | None = None, duration_s: float | None = None,
                       n: int | None = None, r: int | None = None,
                       w: int | None = None) -> Scenario:
        """The scenario with command-line overrides applied, validated again."""
        changes: dict[str, Any] = {}
        for name, v in (("nodes", nodes), ("duration_s", duration_s), ("n", n), ("r", r),
                        ("w", w)):
            if v is not None:
                changes[name] = v
        s = replace(self, **changes)
        if n is not None and r is None and s.r > s.n:
            s = replace(s, r=s.n)
        if n is not None and w is None and s.w > s.n:
            s = replace(s, w=s.n)
        s.validate()
        return s

    def validate(self, where: str | None = None) -> None:
        """Raise ScenarioError unless the scenario can run."""
        where = where or self.name
        if not 1 <= self.nodes <= 64:
            raise ScenarioError(f"{where}: nodes must be in 1..64, not {self.nodes}")
        if not 1 <= self.n <= min(self.nodes, 16):
            raise ScenarioError(f"{where}: replication n={self.n} must be in 1..nodes "
                                f"({self.nodes})")
        if not (1 <= self.r <= self.n and 1 <= self.w <= self.n):
            raise ScenarioError(f"{where}: r={self.r} and w={self.w} must be in 1..n ({self.n})")
        if not (0 < self.duration_s <= 86400 and math.isfinite(self.duration_s)):
            raise ScenarioError(f"{where}: duration_s must be in (0, 86400]")
        if not (0 < self.liveness_s <= 3600):
            raise ScenarioError(f"{where}: liveness_s must be in (0, 3600]")
        names = set(self.node_names)
        for i, ev in enumerate(self.events, 1):
            _check_event(ev, names, self.duration_s, f"{where}: event {i} ({ev.action} "
                         f"at {ev.at:g})")

    def to_toml(self) -> str:
        """The scenario as a file `load_scenario` reads back to the same scenario."""
        out = [f"# {self.name}", f"description = {_toml(self.description)}",
               f"nodes = {self.nodes}", f"duration_s = {_toml(self.duration_s)}",
               f"liveness_s = {_toml(self.liveness_s)}", "",
               "[replication]", f"n = {self.n}", f"r = {self.r}", f"w = {self.w}"]
        for title, obj in (("workload", self.workload), ("network", self.network),
                           ("disk", self.disk)):
            out += ["", f"[{title}]"]
            out += [f"{f.name} = {_toml(getattr(obj, f.name))}" for f in fields(obj)]
        if self.node_settings:
            out += ["", "[node]"]
            out += [f"{k} = {_toml(v)}" for k, v in sorted(self.node_settings.items())]
        for ev in self.events:
            out += ["", "[[event]]"]
            default = FaultEvent(0.0, "heal")
            for f in fields(ev):
                v = getattr(ev, f.name)
                if f.name == "nodes" and v == ("*",):
                    out.append('nodes = "all"')
                elif f.name in ("at", "action") or v != getattr(default, f.name):
                    out.append(f"{f.name} = {_toml(v)}")
        return "\n".join(out) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _check_event(ev: FaultEvent, names: set[str], duration_s: float, where: str) -> None:
    if ev.action not in ACTIONS:
        raise ScenarioError(f"{where}: unknown action; expected one of "
                            f"{', '.join(sorted(ACTIONS))}")
    if not (0 <= ev.at < duration_s):
        raise ScenarioError(f"{where}: 'at' must be in [0, duration_s={duration_s:g})")
    for node in ev.nodes:
        if node == "*" and ev.nodes == ("*",):
            continue
        if node not in names:
            raise ScenarioError(f"{where}: unknown node {node!r}; this cluster has "
                                f"{_name_range(names)}")
    seen: set[str] = set()
    for g in ev.groups:
        if not g:
            raise ScenarioError(f"{where}: empty group")
        for node in g:
            if node not in names:
                raise ScenarioError(f"{where}: unknown node {node!r}; this cluster has "
                                    f"{_name_range(names)}")
            if node in seen:
                raise ScenarioError(f"{where}: node {node!r} is in two groups")
            seen.add(node)
    required, _ = ACTIONS[ev.action]
    if "groups" in required and len(ev.groups) < 2:
        raise ScenarioError(f"{where}: 'groups' needs at least two groups of nodes")
    if ev.one_way and len(ev.groups) != 2:
        raise ScenarioError(f"{where}: a one-way partition takes exactly two groups")
    if "nodes" in required and not ev.nodes:
        raise ScenarioError(f"{where}: 'nodes' must name at least one node")
    if ev.duration_s is not None and not (0 < ev.duration_s <= 86400):
        raise ScenarioError(f"{where}: duration_s must be positive")
    if ev.action == "flap" and not (0 < ev.period_s <= (ev.duration_s or 0)):
        raise ScenarioError(f"{where}: period_s must be positive and at most duration_s")
    if ev.action == "pause" and (ev.duration_s or 0) > 600:
        raise ScenarioError(f"{where}: a pause may last at most 600 s")
    if abs(ev.skew_s) > 3600:
        raise ScenarioError(f"{where}: skew_s must be within +-3600 s")
    if not (0 <= ev.clog_s <= 60):
        raise ScenarioError(f"{where}: clog_s must be in [0, 60]")
    if ev.action == "clog" and ev.clog_s <= 0:
        raise ScenarioError(f"{where}: clog_s must be positive")
    for name in ("probability", "duplicate"):
        if not 0 <= getattr(ev, name) <= 1:
            raise ScenarioError(f"{where}: {name} must be in [0, 1]")
    if not (0 <= ev.jitter_s <= 60):
        raise ScenarioError(f"{where}: jitter_s must be in [0, 60]")


def _name_range(names: Iterable[str]) -> str:
    ordered = sorted(names, key=lambda s: int(s[1:]))
    return f"{ordered[0]}..{ordered[-1]}" if len(ordered) > 1 else ordered[0]


# -- reading files --------------------------------------------------------------------

def available() -> list[str]:
    """Names of the scenarios shipped in simulations/scenarios/."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve(name_or_file: str) -> Path:
    """A scenario name (shipped) or a path to a TOML file."""
    p = Path(name_or_file)
    if p.suffix == ".toml" or "/" in name_or_file:
        if not p.is_file():
            raise ScenarioError(f"no scenario file {name_or_file}")
        return p
    shipped = SCENARIO_DIR / f"{name_or_file}.toml"
    if not shipped.is_file():
        raise ScenarioError(f"unknown scenario {name_or_file!r}; shipped scenarios: "
                            f"{', '.join(available())}")
    return shipped


def load_scenario(name_or_file: str) -> Scenario:
    """Read and validate a scenario; ScenarioError says what is wrong and where."""
    path = resolve(name_or_file)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, path.stem, str(path))


def parse_scenario(data: Mapping[str, Any], name: str, where: str | None = None) -> Scenario:
    """Build a Scenario from TOML values, strictly."""
    where = where or name
    _no_unknown(data, _TOP, where)
    kw: dict[str, Any] = {"name": name}
    if "description" in data:
        kw["description"] = _typed(data["description"], str, where, "description")
    for k in ("nodes",):
        if k in data:
            kw[k] = _typed(data[k], int, where, k)
    for k in ("duration_s", "liveness_s"):
        if k in data:
            kw[k] = float(_typed(data[k], (int, float), where, k))
    if "replication" in data:
        rep = _table(data["replication"], where, "replication")
        _no_unknown(rep, {"n", "r", "w"}, f"{where}: [replication]")
        for k in ("n", "r", "w"):
            if k in rep:
                kw[k] = _typed(rep[k], int, where, f"replication.{k}")
    for title, cls in (("workload", WorkloadConfig), ("network", LinkConfig),
                       ("disk", DiskConfig)):
        if title in data:
            kw[title] = _dataclass(cls, _table(data[title], where, title), where, title)
    if "node" in data:
        node = _table(data["node"], where, "node")
        _no_unknown(node, set(_NODE_SETTINGS), f"{where}: [node]")
        for k, v in node.items():
            _typed(v, _NODE_SETTINGS[k], where, f"node.{k}")
        if "lww_prefixes" in node:
            prefixes = tuple(node["lww_prefixes"])
            try:  # checked as a node checks it
                NodeConfig(name="n1", lww_prefixes=prefixes)
            except ConfigError as exc:
                raise ScenarioError(f"{where}: node.{exc}") from None
            node = {**node, "lww_prefixes": prefixes}
        kw["node_settings"] = dict(node)
    events = data.get("event", [])
    if not isinstance(events, list):
        raise ScenarioError(f"{where}: 'event' must be an array of tables ([[event]])")
    kw["events"] = tuple(_event(e, f"{where}: event {i}") for i, e in enumerate(events, 1))
    s = Scenario(**kw)
    s.validate(where)
    return s


def _event(raw: Any, where: str) -> FaultEvent:
    e = _table(raw, where, "event")
    action = e.get("action")
    if not isinstance(action, str):
        raise ScenarioError(f"{where}: 'action' is required (one of "
                            f"{', '.join(sorted(ACTIONS))})")
    if action not in ACTIONS:
        raise ScenarioError(f"{where}: unknown action {action!r}; expected one of "
                            f"{', '.join(sorted(ACTIONS))}")
    where = f"{where} ({action})"
    required, optional = ACTIONS[action]
    allowed = required | optional | {"at", "action"}
    _no_unknown(e, allowed, where)
    if "at" not in e:
        raise ScenarioError(f"{where}: 'at' (simulated seconds) is required")
    missing = sorted(required - set(e))
    if missing:
        raise ScenarioError(f"{where}: missing {', '.join(repr(m) for m in missing)}")
    kw: dict[str, Any] = {"action": action,
                          "at": float(_typed(e["at"], (int, float), where, "at"))}
    if "nodes" in e:
        nodes = e["nodes"]
        if nodes == "all":
            kw["nodes"] = ("*",)
        else:
            kw["nodes"] = tuple(_names(nodes, where, "nodes"))
    if "groups" in e:
        groups = e["groups"]
        if not isinstance(groups, list):
            raise ScenarioError(f"{where}: 'groups' must be a list of lists of node names")
        kw["groups"] = tuple(tuple(_names(g, where, "groups")) for g in groups)
    if "one_way" in e:
        kw["one_way"] = _typed(e["one_way"], bool, where, "one_way")
    for k in ("duration_s", "skew_s", "clog_s", "probability", "duplicate", "jitter_s",
              "period_s"):
        if k in e:
            kw[k] = float(_typed(e[k], (int, float), where, k))
    return FaultEvent(**kw)


def expand_all(s: Scenario) -> Scenario:
    """Replace nodes = "all" by the cluster's node names."""
    evs = tuple(replace(ev, nodes=tuple(s.node_names)) if ev.nodes == ("*",) else ev
                for ev in s.events)
    return replace(s, events=evs)


def _names(v: Any, where: str, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ScenarioError(f"{where}: {what!r} must be a list of node names like \"n1\"")
    return list(v)


def _table(v: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ScenarioError(f"{where}: {what!r} must be a table")
    return v


def _typed(v: Any, want: type | tuple[type, ...], where: str, what: str) -> Any:
    if isinstance(v, bool) and want is not bool:
        raise ScenarioError(f"{where}: {what!r} must be a number, not a boolean")
    if not isinstance(v, want):
        kind = want.__name__ if isinstance(want, type) else "number"
        raise ScenarioError(f"{where}: {what!r} must be a {kind}, not {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ScenarioError(f"{where}: {what!r} must be finite")
    return v


def _no_unknown(d: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = set(allowed)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(repr(u) for u in unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")


def _dataclass(cls: Any, values: dict[str, Any], where: str, title: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    _no_unknown(values, known, f"{where}: [{title}]")
    kw: dict[str, Any] = {}
    for k, v in values.items():
        default = getattr(cls(), k)
        if isinstance(default, bool):
            kw[k] = _typed(v, bool, where, f"{title}.{k}")
        elif isinstance(default, int):
            kw[k] = _typed(v, int, where, f"{title}.{k}")
        else:
            kw[k] = float(_typed(v, (int, float), where, f"{title}.{k}"))
    for k, v in kw.items():
        if isinstance(v, float) and v < 0:
            raise ScenarioError(f"{where}: {title}.{k} must not be negative")
        if k in ("loss", "duplicate") and v > 1:
            raise ScenarioError(f"{where}: {title}.{k} is a probability, in [0, 1]")
    try:
        return cls(**kw)
    except ValueError as exc:
        raise ScenarioError(f"{where}: [{title}]: {exc}") from None


__all__ = ["ACTIONS", "FaultEvent", "Scenario", "ScenarioError", "available", "expand_all",
           "load_scenario", "parse_scenario", "resolve"]
