"""Lifeguard arithmetic: the suspicion timeout curve and local health awareness."""

from __future__ import annotations

import itertools
import math

import pytest

from ringfs.gossip import GossipConfig
from ringfs.gossip.awareness import Awareness
from ringfs.gossip.suspicion import Suspicion, suspicion_timeout


def test_timeout_starts_at_max_and_reaches_min_after_k_confirmations() -> None:
    assert suspicion_timeout(0, 2, 12.0, 72.0) == 72.0
    assert suspicion_timeout(2, 2, 12.0, 72.0) == pytest.approx(12.0)
    assert suspicion_timeout(5, 2, 12.0, 72.0) == 12.0


def test_timeout_shrinks_logarithmically() -> None:
    # With k = 3: one confirmation removes log(2)/log(4) = half of the range.
    assert suspicion_timeout(1, 3, 10.0, 50.0) == pytest.approx(50 - 40 * 0.5)
    t = [suspicion_timeout(c, 4, 10.0, 60.0) for c in range(5)]
    assert t == sorted(t, reverse=True)
    # The first confirmation takes off more than any later one.
    drops = [a - b for a, b in itertools.pairwise(t)]
    assert drops == sorted(drops, reverse=True)
    assert t[1] == pytest.approx(60 - 50 * math.log(2) / math.log(5))


def test_timeout_without_expected_confirmations_is_min() -> None:
    assert suspicion_timeout(0, 0, 4.0, 24.0) == 4.0
    assert suspicion_timeout(0, 3, 4.0, 4.0) == 4.0


def test_suspicion_counts_independent_accusers_only() -> None:
    s = Suspicion("a", 7, k=2, min_s=12.0, max_s=72.0, start=100.0)
    assert s.deadline() == 172.0
    assert not s.confirm("a")  # the original accuser is not a confirmation
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.confirmations == 1
    assert s.deadline() == pytest.approx(100 + 72 - 60 * math.log(2) / math.log(3))
    assert s.confirm("c")
    assert not s.confirm("d")  # k reached: further accusers change nothing
    assert s.deadline() == pytest.approx(112.0)


def test_min_timeout_scales_with_log_of_cluster_size() -> None:
    cfg = GossipConfig.lan()
    assert cfg.suspicion_min_s(1) == 4.0
    assert cfg.suspicion_min_s(10) == 4.0
    assert cfg.suspicion_min_s(1000) == pytest.approx(12.0)
    assert cfg.retransmit_limit(1000) == 16
    assert cfg.retransmit_limit(9) == 4
    assert cfg.push_pull_period_s(32) == 30.0
    assert cfg.push_pull_period_s(64) == 60.0
    assert cfg.push_pull_period_s(1000) == 30.0 * (math.ceil(math.log2(1000 / 32)) + 1)


def test_awareness_is_clamped_and_scales_timeouts() -> None:
    a = Awareness(8)
    assert a.score == 0 and a.scale(0.5) == 0.5
    a.apply_delta(3)
    assert a.scale(0.5) == 2.0
    a.apply_delta(100)
    assert a.score == 7 and a.scale(1.0) == 8.0
    a.apply_delta(-100)
    assert a.score == 0
    with pytest.raises(ValueError):
        Awareness(0)


def test_config_presets_and_validation() -> None:
    lan, local, wan = GossipConfig.lan(), GossipConfig.local(), GossipConfig.wan()
    assert local.probe_interval_s == 0.5 < lan.probe_interval_s < wan.probe_interval_s
    assert lan.probe_interval_s == 1.0 and lan.suspicion_mult == 4 and lan.gossip_nodes == 3
    assert GossipConfig.lan(mtu_bytes=1200).mtu_bytes == 1200
    with pytest.raises(ValueError):
        GossipConfig.lan(probe_timeout_s=0.8)  # probe would overlap the next one
    with pytest.raises(ValueError):
        GossipConfig.lan(gossip_nodes=-1)
    with pytest.raises(ValueError):
        GossipConfig.lan(mtu_bytes=100)
