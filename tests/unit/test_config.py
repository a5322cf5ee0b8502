"""Configuration: TOML files and flags, validated with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfs.config import ConfigError, Durability, build_config, load_toml, parse_address


def test_toml_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text(
        '[node]\nname = "a1"\nlisten = "127.0.0.1:7100"\ndurability = "interval:250"\n'
        'seeds = ["127.0.0.1:7101"]\n[limits]\nmax_key_bytes = 100\n'
    )
    cfg = build_config(load_toml(p))
    assert cfg.name == "a1" and cfg.listen == "127.0.0.1:7100"
    assert cfg.durability == Durability("interval", 250)
    assert cfg.seeds == ("127.0.0.1:7101",)
    assert cfg.limits.max_key_bytes == 100


def test_lww_prefixes_from_toml(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text('[node]\nname = "a1"\nlww_prefixes = ["cache/", "sessions/"]\n')
    assert build_config(load_toml(p)).lww_prefixes == ("cache/", "sessions/")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({}, "needs a name"),
        ({"name": "bad name"}, "name"),
        ({"name": "a", "listen": "nohost"}, "HOST:PORT"),
        ({"name": "a", "listen": "h:70000"}, "HOST:PORT"),
        ({"name": "a", "durability": "sometimes"}, "durability"),
        ({"name": "a", "durability": "interval:x"}, "milliseconds"),
        ({"name": "a", "bogus": 1}, "unknown setting"),
        ({"name": "a", "max_siblings": "3"}, "wrong type"),
        ({"name": "a", "max_siblings": True}, "wrong type"),
        ({"name": "a", "limits": {"max_key_bytes": 0}}, "limits"),
        ({"name": "a", "limits": {"nope": 1}}, "unknown limits"),
        ({"name": "a", "engine": "rocks"}, "engine"),
        ({"name": "a", "poll_spin_us": -1}, "poll_spin_us"),
        ({"name": "a", "poll_spin_us": 10_001}, "poll_spin_us"),
        ({"name": "a", "poll_spin_us": 2.5}, "wrong type"),
        ({"name": "a", "lww_prefixes": "cache/"}, "wrong type"),
        ({"name": "a", "lww_prefixes": ["ok", 3]}, "list of strings"),
        ({"name": "a", "lww_prefixes": ["\x00x"]}, "reserved"),
        ({"name": "a", "lww_prefixes": ["\ud800"]}, "not valid text"),
        ({"name": "a", "lww_prefixes": ["k" * 5000]}, "longer than a key"),
        ({"name": "a", "lww_prefixes": [str(i) for i in range(65)]}, "at most 64"),
    ],
)
def test_bad_settings_name_the_problem(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config(values)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_addresses() -> None:
    assert parse_address("[::1]:7001") == ("::1", 7001)
    assert parse_address("h:0", allow_port_zero=True) == ("h", 0)
    with pytest.raises(ConfigError):
        parse_address("h:0")
    for text in ("::1", "fe80::1", "2001:db8::7001", "::1:7001", "[::1]", "h:", "h:x",
                 "h:70000", ":7001", "[]:7001"):
        with pytest.raises(ConfigError):
            parse_address(text)


@pytest.mark.parametrize("values", [
    {"name": "a\n"},  # `$` would let a trailing newline through
    {"name": "a", "zone": " a"},
    {"name": "a", "zone": "a\x00b"},
    {"name": "a", "zone": "\xff\n"},
    {"name": "a", "durability": "interval:\u00b2"},  # str.isdigit() says yes
    {"name": "a", "listen": "127.0.0.1:\u0667\u0664\u0669\u0669"},  # Arabic-Indic 7499
    {"name": "a", "seeds": ["h:\u00b2"]},
    {"name": "a", "capacity": 10**400},  # too large for a float
    {"name": "a", "data_dir": "/tmp/a\x00b"},
    {"name": "a", "keyring_file": "k\x00"},
])
def test_bad_values_are_config_errors(values: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_config(values)


def test_config_files_that_are_not_text_or_say_a_setting_twice(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_toml(bad)
    twice = tmp_path / "twice.toml"
    twice.write_text('name = "a"\n[node]\nname = "b"\n')
    with pytest.raises(ConfigError, match="name"):
        load_toml(twice)


def test_quorums_default_to_a_majority_of_the_n_given() -> None:
    assert (build_config({"name": "a"}).r, build_config({"name": "a"}).w) == (2, 2)
    one = build_config({"name": "a", "n_replicas": 1})
    assert (one.r, one.w) == (1, 1)
    five = build_config({"name": "a", "n_replicas": 5, "w": 5})
    assert (five.r, five.w) == (3, 5)
    with pytest.raises(ConfigError, match="r = 2"):
        build_config({"name": "a", "n_replicas": 1, "r": 2})


def test_a_node_config_built_directly_takes_the_same_quorums() -> None:
    from ringfs.config import NodeConfig

    assert (NodeConfig(name="a").r, NodeConfig(name="a").w) == (2, 2)
    assert (NodeConfig(name="a", n_replicas=5).r, NodeConfig(name="a", n_replicas=5).w) == (3, 3)
    with pytest.raises(ConfigError):
        build_config({"name": "a", "r": 0})
