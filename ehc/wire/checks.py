"""What to check on a target, as it crosses the pipe: a tagged union, one struct per probe kind.

The tag is the probe kind: the worker's registry maps it to the prober that runs the check, and
stats and metrics count by it.  A target carries one or more checks and is healthy only while every
one of them succeeds.  Adding a kind is a struct here, a module in ``ehc.probe`` and a registry
entry; nothing else infers a kind.
"""

from __future__ import annotations

import typing
import urllib.parse

import msgspec


class Tcp(msgspec.Struct, tag="tcp", frozen=True, array_like=True):
    """TCP connect to ``port``: success once the handshake completes."""

    port: int


class Icmp(msgspec.Struct, tag="icmp", frozen=True, array_like=True):
    """ICMP echo: success on a matching echo reply."""


class Http(msgspec.Struct, tag="http", frozen=True, array_like=True):
    """HTTP GET ``path`` on ``port`` of the target's address: success on a status from 200 to 399.

    ``host`` is the Host header ("" = the address and port); ``headers`` are sent as given, after
    ehc's own (a header of the same name replaces ehc's)."""

    port: int
    path: str = "/"
    https: bool = False
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()


class Grpc(msgspec.Struct, tag="grpc", frozen=True, array_like=True):
    """``grpc.health.v1.Health/Check`` for ``service`` ("" = the whole server) over plaintext HTTP/2:
    success only on SERVING."""

    port: int
    service: str = ""


Check = Tcp | Icmp | Http | Grpc


def request_path(text: str) -> str:
    """A path (and query) as an HTTP probe sends it: absolute, with what may not appear in a request
    line escaped and any #fragment dropped, as Go's URL handling does for the kubelet."""
    path = text.partition("#")[0] or "/"
    if not path.startswith("/"):
        path = "/" + path
    return urllib.parse.quote(path, safe="/?&=%:@!$'()*+,;~-._")


KINDS: tuple[str, ...] = tuple(c.__struct_config__.tag for c in typing.get_args(Check))  # type: ignore[misc]
"""Every probe kind, in the order of the union."""


def kind_of(check: Check) -> str:
    return check.__struct_config__.tag  # type: ignore[return-value]


def port_of(check: Check) -> int:
    """The port a check connects to; 0 for a check without one (ICMP)."""
    return getattr(check, "port", 0)


def describe(check: Check, ip: str) -> str:
    """``tcp 10.0.0.7:8080``, ``icmp 10.0.0.7``, ``tcp [fd00::7]:8080``, ``http 10.0.0.7:8080/healthz``,
    ``https …``, ``grpc 10.0.0.7:9090 service "shop"``: for logs and messages."""
    port = port_of(check)
    if not port:
        return f"{kind_of(check)} {ip}"
    host = f"[{ip}]" if ":" in ip else ip
    if isinstance(check, Http):
        return f"{'https' if check.https else 'http'} {host}:{port}{check.path}"
    if isinstance(check, Grpc) and check.service:
        return f"grpc {host}:{port} service {check.service!r}"
    return f"{kind_of(check)} {host}:{port}"


def describe_all(checks: tuple[Check, ...], ip: str) -> str:
    """Every check of a target, each as ``describe`` names it, comma-separated."""
    return ", ".join(describe(c, ip) for c in checks)


def target_kind(checks: tuple[Check, ...]) -> str:
    """The kind a target is counted under: its checks' kind, or ``a+b`` when they mix."""
    kinds = sorted({kind_of(c) for c in checks})
    return kinds[0] if len(kinds) == 1 else "+".join(kinds)
