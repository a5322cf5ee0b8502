"""AES-GCM keyring: sealing, rotation, wrong keys and tampering, key files."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ringfs.gossip import GossipConfig, Swim
from ringfs.gossip.keyring import (
    OVERHEAD_BYTES,
    DecryptError,
    Keyring,
    KeyringError,
    generate_key,
    load_keyring_file,
    save_keyring_file,
)
from ringfs.gossip.messages import build_packet, encode_ping

K1, K2, K3 = b"1" * 16, b"2" * 24, b"3" * 32


def test_roundtrip_and_overhead() -> None:
    kr = Keyring([K1])
    sealed = kr.encrypt(b"hello")
    assert len(sealed) == 5 + OVERHEAD_BYTES and sealed[0] == 1
    assert kr.decrypt(sealed) == b"hello"


def test_injected_nonce_source_makes_output_deterministic() -> None:
    a = Keyring([K3], nonce_source=random.Random(7).randbytes)
    b = Keyring([K3], nonce_source=random.Random(7).randbytes)
    assert a.encrypt(b"x") == b.encrypt(b"x")


def test_rotation_without_downtime() -> None:
    old, new = Keyring([K1]), Keyring([K1])
    new.install(K2)
    assert new.decrypt(old.encrypt(b"m")) == b"m"  # installed, not yet primary
    new.use(K2)
    assert new.primary_key == K2
    old.install(K2)
    assert old.decrypt(new.encrypt(b"m")) == b"m"
    with pytest.raises(KeyringError):
        new.remove(K2)  # primary
    new.remove(K1)
    assert new.keys == [K2]
    with pytest.raises(DecryptError):
        new.decrypt(Keyring([K1]).encrypt(b"m"))


def test_wrong_key_and_tampering_are_rejected() -> None:
    sealed = Keyring([K1]).encrypt(b"payload")
    with pytest.raises(DecryptError):
        Keyring([K3]).decrypt(sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DecryptError):
        Keyring([K1]).decrypt(bytes(tampered))
    with pytest.raises(DecryptError):
        Keyring([K1]).decrypt(b"\x02" + sealed[1:])  # unknown version
    with pytest.raises(DecryptError):
        Keyring([K1]).decrypt(b"short")


def test_bad_keys_are_refused() -> None:
    with pytest.raises(KeyringError):
        Keyring([b"x" * 15])
    with pytest.raises(KeyringError):
        Keyring([])
    with pytest.raises(KeyringError):
        Keyring([K1]).use(K2)
    assert len(generate_key()) == 32 and len(generate_key(16)) == 16
    with pytest.raises(KeyringError):
        generate_key(20)


def test_swim_drops_and_counts_packets_it_cannot_authenticate() -> None:
    s = Swim(
        GossipConfig.lan(), "me", "10.0.0.1:7000", random.Random(1), 0.0, keyring=Keyring([K1])
    )
    plain = build_packet([encode_ping(1, "me")])
    s.receive_packet(plain, "10.0.0.2:7000", 1.0)
    s.receive_packet(Keyring([K2]).encrypt(plain), "10.0.0.2:7000", 1.0)
    tampered = bytearray(Keyring([K1]).encrypt(plain))
    tampered[20] ^= 0xFF
    s.receive_packet(bytes(tampered), "10.0.0.2:7000", 1.0)
    s.receive_stream(Keyring([K2]).encrypt(b"\x90"), "10.0.0.2:7000", 1.0)
    assert s.stats.dropped_bad_auth == 4
    assert s.drain_outbox() == []
    s.receive_packet(Keyring([K1]).encrypt(plain), "10.0.0.2:7000", 1.0)
    (ack,) = s.drain_outbox()
    assert len(ack.data) <= GossipConfig.lan().mtu_bytes


def test_key_file_roundtrip_and_permission_check(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    save_keyring_file(path, [K3, K1])
    assert (path.stat().st_mode & 0o777) == 0o600
    kr = load_keyring_file(path)
    assert kr.keys == [K3, K1] and kr.primary_key == K3
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError):
        load_keyring_file(path)
    os.chmod(path, 0o600)
    path.write_text("not base64!\n")
    with pytest.raises(KeyringError):
        load_keyring_file(path)
    path.write_text("\n")
    with pytest.raises(KeyringError):
        load_keyring_file(path)
