"""Gossip membership: SWIM failure detection with the Lifeguard refinements.

A sans-IO core (`Swim`) driven by the runtime over UDP/TCP or by the simulator;
see `swim.py` for the theory of operation and the state precedence table.
"""

from ringfs.gossip.config import GossipConfig
from ringfs.gossip.keyring import (
    DecryptError,
    Keyring,
    KeyringError,
    generate_key,
    load_keyring_file,
    load_keys,
    save_keyring_file,
)
from ringfs.gossip.member import MemberEvent, MemberInfo, MemberState
from ringfs.gossip.swim import GossipStats, Outgoing, SendPacket, SendStream, Swim

__all__ = [
    "DecryptError",
    "GossipConfig",
    "GossipStats",
    "Keyring",
    "KeyringError",
    "MemberEvent",
    "MemberInfo",
    "MemberState",
    "Outgoing",
    "SendPacket",
    "SendStream",
    "Swim",
    "generate_key",
    "load_keyring_file",
    "load_keys",
    "save_keyring_file",
]
