"""Private network namespaces for the simulated fleet: create, enter (per thread), clean up.

Namespace names carry the owner's pid (``ehc-sim-<pid>-<hex>``) so a later run can remove the ones
whose owner died without tearing them down. Python 3.11 has no ``os.setns``; it is called via ctypes.
Entering affects only the calling thread, and a socket keeps the namespace it was created in, so a
socket made by a helper thread inside the namespace can be used from anywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

PREFIX = "ehc-sim-"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^ehc-sim-(\d+)-[0-9a-f]+$")
T = TypeVar("T")
_libc: Any = None


def available() -> tuple[bool, str]:
    """Whether namespaces can be used here, and why not."""
    if os.geteuid() != 0:
        return False, "not root: network namespaces and nftables need CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is missing"
    if shutil.which("nft") is None:
        return False, "the `nft` command (Debian package nftables) is missing"
    return True, ""


def _setns(fd: int) -> None:
    global _libc  # noqa: PLW0603 - loaded once, on first use
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def create() -> str:
    """Create a namespace with ``lo`` up; returns its name."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError:
        delete(name)
        raise
    return name


def delete(name: str) -> None:
    """Remove a namespace (its interfaces and nftables rules go with it)."""
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def cleanup_stale() -> list[str]:
    """Delete ``ehc-sim-*`` namespaces whose owner process is gone; returns their names."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(NETNS_DIR):
            m = _NAME.match(entry)
            if not m:
                continue
            pid = int(m.group(1))
            try:
                os.kill(pid, 0)
                continue  # owner alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            delete(entry)
            removed.append(entry)
    return removed


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the *calling thread* into namespace ``name`` for the block; do not use on an event loop
    thread (use ``call_in`` there)."""
    target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)


def call_in(name: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a short-lived thread inside the namespace and return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with entered(name):
                box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def socket_in(
    name: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket belonging to namespace ``name`` (the current one if None), usable from any thread."""
    if name is None:
        return socket.socket(family, type, proto)
    return call_in(name, socket.socket, family, type, proto)


def listen_in(name: str, host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` inside namespace ``name`` (not yet listening)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return sock

    return call_in(name, make)


def exec_prefix(name: str) -> list[str]:
    """Command prefix running a program inside the namespace."""
    return ["ip", "netns", "exec", name]
