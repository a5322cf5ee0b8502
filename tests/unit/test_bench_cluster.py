"""bench/cluster.py: the helpers that spread connections and merge wrk's histograms."""

from __future__ import annotations

import math

import pytest

from bench.cluster import (
    etcd_op,
    hist_mean,
    hist_percentile,
    parse_wrk_output,
    ringfs_node_cmd,
    ringfs_op,
    spread,
)
from bench.common import bench_key, percentile


def test_spread_deals_connections_round_robin() -> None:
    assert spread(50, 3) == [17, 17, 16]
    assert spread(1, 3) == [1, 0, 0]
    assert sum(spread(7, 3)) == 7


def test_histogram_percentiles_match_the_plain_nearest_rank() -> None:
    values = [5, 1, 1, 9, 3, 3, 3, 100, 7, 2]
    hist: dict[int, int] = {}
    for v in values:
        hist[v] = hist.get(v, 0) + 1
    ordered = sorted(values)
    for q in (1, 50, 90, 99, 100):
        assert hist_percentile(hist, q) == percentile(ordered, q)
    assert hist_mean(hist) == sum(values) / len(values)
    assert math.isnan(hist_percentile({}, 50))


def test_parse_wrk_output_merges_latency_lines() -> None:
    text = ("Running 1s test @ http://127.0.0.1:1\n"
            "RESULT requests=4 duration_us=1000000 connect=0 read=0 write=0 status=1 "
            "timeout=0 missing=0\nLAT 10 3\nLAT 20 1\n")
    fields, hist = parse_wrk_output(text)
    assert fields["requests"] == 4 and fields["status"] == 1
    assert hist == {10: 3, 20: 1}
    with pytest.raises(RuntimeError):
        parse_wrk_output("wrk: connection refused\n")



def test_put_lww_puts_lww_keys_and_compares_with_an_etcd_put() -> None:
    assert ringfs_op("put-lww") == ("put", b"lww:")
    assert ringfs_op("put") == ("put", b"key:") and ringfs_op("get") == ("get", b"key:")
    assert etcd_op("put-lww") == "put" and etcd_op("get") == "get"
    cmd = ringfs_node_cmd("n1", 7001, [7002], "/d")
    assert cmd[cmd.index("--lww-prefix") + 1] == "lww:"
    assert len(bench_key(7, b"lww:")) == len(bench_key(7)) == 16
