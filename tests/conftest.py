"""Shared fixtures: real listeners on loopback and, as root, private network namespaces."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 with a large backlog (the kernel completes handshakes for it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    yield s
    s.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connects are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def netns_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (scripts/setup installs nftables as root)"
    return None


class NetNs:
    """A throw-away network namespace with loopback up and an nftables table of our own."""

    def __init__(self) -> None:
        self.name = f"ehc-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.nft("add table inet ehc_test")
        # Drop on the way *in*: a drop in the output hook makes the sender's sendto() fail with EPERM,
        # which no powered-off remote host would ever cause.
        self.nft("add chain inet ehc_test inbound { type filter hook prerouting priority 0 ; }")

    def nft(self, rule: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "nft", rule], check=True)

    def drop(self, match: str) -> None:
        """Silently drop packets matching an nft expression, e.g. ``ip daddr 127.0.0.9``."""
        self.nft(f"add rule inet ehc_test inbound {match} drop")

    def run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *args], text=True, capture_output=True, **kw)  # type: ignore[call-overload]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    ns = NetNs()
    try:
        yield ns
    finally:
        ns.delete()
