"""Which addresses a URL chosen by a user may reach: the one guard against SSRF.

A provider's base URL and an app's webhook URL are both chosen by someone outside the operator,
so unless private addresses are allowed neither may reach loopback, private, link-local or
otherwise non-public addresses. IP literals are checked by our own reading of them rather than
the HTTP library's (non-canonical IPv4 spellings such as `127.1` are refused, an IPv6 address
carrying an IPv4 one is judged as that IPv4), and host names every time they are resolved
(`public_resolver.PublicOnlyResolver`, so a name that later resolves somewhere private is
refused too). This module loads no HTTP library: keystore checks webhook URLs without aiohttp.
"""

from __future__ import annotations

import ipaddress
import re


class NotPublicAddress(OSError):
    """A URL whose host is an address we must not call."""


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# What WHATWG URL parsers (browsers, curl, many HTTP libraries) and inet_aton read as IPv4: a
# host whose last label is a number, e.g. `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)


def is_public_address(host: str) -> bool:
    """True for a globally routable unicast address.

    An IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4)
    is judged as that IPv4 address: it is where the packet ends up.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return embedded.is_global and not embedded.is_multicast
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def is_non_canonical_ipv4(host: str) -> bool:
    """A host some parser reads as IPv4 although it is not a dotted quad (`127.1`, `127.0.0.1.`).

    Refused outright rather than decoded: what it means differs between parsers, and no base URL
    needs it.
    """
    labels = host.removesuffix(".").split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return False
    return host.endswith(".") or not is_ip_literal(host)


def is_forbidden_host(host: str) -> bool:
    """A host refused before any lookup: a non-canonical IPv4 spelling or a non-public IP."""
    return is_non_canonical_ipv4(host) or (is_ip_literal(host) and not is_public_address(host))
