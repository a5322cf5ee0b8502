"""bench/convergence.py: the anti-entropy traffic measurement, at a small size."""

from __future__ import annotations

from bench.convergence import bench_bytes


def test_in_sync_replicas_exchange_one_root_hash_per_exchange() -> None:
    r = bench_bytes(2_000, 0.0)
    assert r["exchanges"] > 0 and r["differing"] == 0
    assert r["bytes_per_exchange"] < 200, r


def test_a_replica_missing_one_percent_is_repaired_for_less_than_a_full_copy() -> None:
    r = bench_bytes(2_000, 0.01)
    assert r["differing"] == 20
    assert 0 < r["aae_bytes"] < r["full_copy_bytes"], r
