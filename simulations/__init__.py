"""The deterministic simulated world: the same Node objects over a virtual network and disks."""
