"""
Which peers may connect at all: C{[admission] networks}.

Checked on accept, before a byte is read (L{boatwist.net.tracking}).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

__all__ = ["peer_allowed"]


def peer_allowed(host: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Is C{host} inside one of C{networks}?  IPv4-mapped IPv6 addresses count as IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)
