"""The one rule for an address ehc may probe, whichever object published it."""

from __future__ import annotations

import ipaddress


def probe_address(text: str) -> tuple[str | None, str]:
    """The canonical form of ``text`` if ehc can probe it, else None and why not (for a message)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, "is not an IPv4 or IPv6 address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None, "carries a zone index: an endpoint address never does"
    if ip.is_unspecified or ip.is_multicast:
        return None, "is not a unicast address"
    return str(ip), ""
