"""Tunables of the SWIM/Lifeguard membership protocol.

One frozen dataclass, one docstring per field saying what the default is and why.
`GossipConfig.lan()` follows hashicorp/memberlist's DefaultLANConfig except where a
field's docstring says otherwise; `local()` is for a cluster on one machine and
`wan()` for links with high latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class GossipConfig:
    """Every knob of the gossip layer; durations in seconds, sizes in bytes."""

    probe_interval_s: float = 1.0
    """Time between two failure-detection probes started by this member (SWIM's
    protocol period). Each member probes one other member per interval, so a failed
    member is first probed after about one interval on average."""

    probe_timeout_s: float = 0.3
    """How long to wait for the direct ack before asking `indirect_checks` other
    members to probe. memberlist uses 0.5 s but lets the indirect phase run until the
    end of the probe interval; we split the budget into 0.3 s direct + 0.3 s
    indirect, which keeps the whole probe inside 0.6 of an interval and brings the
    mean time to first suspicion near SWIM's 1.58 intervals. A LAN round trip is a
    few milliseconds, so 0.3 s is still a hundred times the expected wait."""

    indirect_probe_timeout_s: float = 0.3
    """How long, after the ping-reqs went out, to wait for an ack relayed by another
    member before suspecting the target. Intermediaries send their nack after
    `nack_timeout_fraction` of this, so the nacks arrive before we give up."""

    nack_timeout_fraction: float = 0.8
    """Fraction of `indirect_probe_timeout_s` after which an intermediary that got no
    ack from the target sends a nack (Lifeguard), leaving time for the nack to travel."""

    indirect_checks: int = 3
    """Members asked to probe on our behalf (SWIM's k) after a missed direct ack.
    Three indirect paths make a false suspicion at 5% packet loss about 1 in 1000
    probes (memberlist default)."""

    retransmit_mult: int = 4
    """Each queued update is piggybacked at most retransmit_mult * ceil(log10(N+1))
    times; 4 reaches every member with overwhelming probability (memberlist)."""

    suspicion_mult: int = 4
    """alpha: the minimum suspicion timeout is alpha * max(1, log10 N) *
    probe_interval_s (12 s at N=1000). Also sets the expected number of independent
    confirmations, suspicion_mult - 2 (memberlist)."""

    suspicion_max_timeout_mult: int = 6
    """beta: a fresh suspicion with no confirmations times out after beta times the
    minimum (Lifeguard); confirmations shrink it towards the minimum."""

    awareness_max_multiplier: int = 8
    """Upper bound of the local-health multiplier: probe interval and timeouts are
    scaled by at most this factor when we believe we are the slow one (memberlist)."""

    gossip_interval_s: float = 0.2
    """Period of the gossip tick that pushes queued updates to `gossip_nodes` random
    members in addition to the piggybacking on probes (memberlist)."""

    gossip_nodes: int = 3
    """Fan-out of each gossip tick (memberlist)."""

    gossip_to_the_dead_s: float = 30.0
    """For this long after a member was declared dead or left we keep gossiping to
    it, so that a falsely declared member learns about it and refutes (memberlist)."""

    push_pull_interval_s: float = 30.0
    """Period of the full-state exchange over a stream with one random member; it
    repairs whatever gossip missed. Scaled up beyond 32 members (memberlist)."""

    push_pull_timeout_s: float = 10.0
    """An outstanding push-pull whose reply has not arrived after this is abandoned
    and no longer counts against `max_concurrent_push_pull`."""

    max_concurrent_push_pull: int = 8
    """Outstanding push-pulls we start (joins included); a periodic exchange is
    skipped while the cap is reached."""

    dead_reap_s: float = 60.0
    """A dead or left member is forgotten (event 'reaped') this long after its state
    changed. Longer than gossip_to_the_dead_s so it is still known while we gossip
    to it, and long enough for stale alive messages in flight to have expired."""

    mtu_bytes: int = 1400
    """No datagram we build exceeds this, encryption overhead included. 1400 stays
    under a 1500-byte Ethernet MTU with IP/UDP headers and some tunnel headroom
    (memberlist uses the same budget)."""

    lifeguard_awareness: bool = True
    """Local health awareness: scale our probe timing by our own health and ask
    intermediaries for nacks. Off = plain SWIM probing."""

    lifeguard_suspicion: bool = True
    """Dynamic suspicion timeout: start at beta * min and shrink with independent
    confirmations. Off = a fixed timeout of the minimum (plain SWIM/memberlist<0.2)."""

    lifeguard_buddy: bool = True
    """Buddy system: when probing a member we suspect, tell it first so it refutes
    at once. Off = it learns only through ordinary dissemination."""

    max_members: int = 4096
    """Most members we track; alive messages about new members beyond it are dropped
    and counted, so a flood of fake names cannot exhaust memory."""

    max_name_bytes: int = 128
    """Longest member name (UTF-8 bytes) accepted from the network or locally."""

    max_meta_bytes: int = 512
    """Largest encoded metadata map per member; metadata rides in alive messages, so
    it must leave room in a datagram."""

    max_queued_broadcasts: int = 4096
    """Most updates waiting to be piggybacked; beyond it the most transmitted
    (oldest) ones are dropped, since they have already reached most members."""

    max_stream_bytes: int = 4 * 1024 * 1024
    """Largest push-pull message accepted or built (4096 members with full metadata
    fit)."""

    max_packet_messages: int = 256
    """Most messages accepted in one incoming compound datagram."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool):
                continue
            if isinstance(v, int | float) and v < 0:
                raise ValueError(f"{f.name} must not be negative, got {v}")
        if self.probe_interval_s <= 0 or self.gossip_interval_s <= 0:
            raise ValueError("probe_interval_s and gossip_interval_s must be positive")
        if self.push_pull_interval_s <= 0 or self.push_pull_timeout_s <= 0:
            raise ValueError("push-pull intervals must be positive")
        if self.probe_timeout_s <= 0 or self.indirect_probe_timeout_s <= 0:
            raise ValueError("probe timeouts must be positive")
        if self.probe_timeout_s + self.indirect_probe_timeout_s > self.probe_interval_s:
            # A probe must finish before the next one starts, or two would overlap.
            raise ValueError("probe_timeout_s + indirect_probe_timeout_s > probe_interval_s")
        if not 0 < self.nack_timeout_fraction < 1:
            raise ValueError("nack_timeout_fraction must be in (0, 1)")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ValueError("suspicion multipliers must be at least 1")
        if self.awareness_max_multiplier < 1 or self.retransmit_mult < 1:
            raise ValueError("awareness_max_multiplier and retransmit_mult must be >= 1")
        if self.mtu_bytes < 256:
            raise ValueError("mtu_bytes must be at least 256")
        if self.max_members < 1 or self.max_name_bytes < 1:
            raise ValueError("max_members and max_name_bytes must be >= 1")

    # -- presets -------------------------------------------------------------------
    fault_wrong_incarnation_precedence: bool = False
    """An injected defect for the simulator's checkers: accept suspect and dead messages
    about an older incarnation, so stale accusations override refutations. Never set
    outside the simulator."""

    @classmethod
    def lan(cls, **overrides: Any) -> GossipConfig:
        """Defaults for one data centre (memberlist's DefaultLANConfig, see fields)."""
        return replace(cls(), **overrides)

    @classmethod
    def local(cls, **overrides: Any) -> GossipConfig:
        """A cluster of processes on one machine: probing twice as fast as LAN.

        suspicion_mult is 5, so a suspicion lasts at least 2.5 s: a process stalled for
        a couple of seconds (a GC pause, SIGSTOP, a slow fsync on a busy box) refutes
        before it is declared dead, while a killed one is still found within seconds.
        """
        base = cls(
            probe_interval_s=0.5,
            probe_timeout_s=0.15,
            indirect_probe_timeout_s=0.15,
            gossip_interval_s=0.1,
            gossip_to_the_dead_s=15.0,
            push_pull_interval_s=15.0,
            push_pull_timeout_s=5.0,
            dead_reap_s=30.0,
            suspicion_mult=5,
        )
        return replace(base, **overrides)

    @classmethod
    def wan(cls, **overrides: Any) -> GossipConfig:
        """Members across regions: slower probes, longer suspicion (memberlist WAN)."""
        base = cls(
            probe_interval_s=5.0,
            probe_timeout_s=1.5,
            indirect_probe_timeout_s=1.5,
            suspicion_mult=6,
            gossip_interval_s=0.5,
            gossip_nodes=4,
            gossip_to_the_dead_s=60.0,
            push_pull_interval_s=60.0,
            push_pull_timeout_s=20.0,
            dead_reap_s=300.0,
        )
        return replace(base, **overrides)

    # -- derived quantities --------------------------------------------------------
    def retransmit_limit(self, n_members: int) -> int:
        """How often one update is sent: retransmit_mult * ceil(log10(N+1))."""
        return self.retransmit_mult * math.ceil(math.log10(n_members + 1))

    def suspicion_min_s(self, n_members: int) -> float:
        """alpha * max(1, log10 N) * probe interval: the floor of a suspicion timeout."""
        scale = max(1.0, math.log10(max(1, n_members)))
        return self.suspicion_mult * scale * self.probe_interval_s

    def push_pull_period_s(self, n_members: int) -> float:
        """The push-pull interval, lengthened logarithmically above 32 members so the
        cluster-wide rate of full-state exchanges grows only slowly with N."""
        if n_members <= 32:
            return self.push_pull_interval_s
        return self.push_pull_interval_s * (math.ceil(math.log2(n_members / 32)) + 1)
