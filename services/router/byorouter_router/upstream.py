"""The one pooled HTTP client every provider call goes through, and its guard against SSRF.

A connection's base URL is chosen by whoever connected it, so unless private upstreams are
allowed the router refuses to call loopback, private, link-local or otherwise non-public
addresses: IP literals are checked when the URL is parsed, by our own reading of them rather than
the HTTP library's (non-canonical IPv4 spellings such as `127.1` are refused, an IPv6 address
carrying an IPv4 one is judged as that IPv4), and host names every time they are resolved (so a
name that later resolves somewhere private is refused too).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from byorouter_common import errors
from byorouter_common.errors import ByoError
from byorouter_router.settings import RouterSettings

USER_AGENT = "byorouter/0.1"


class UpstreamNotAllowed(OSError):
    """A base URL whose host is an address the router must not call."""


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


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _is_non_canonical_ipv4(host: str) -> bool:
    """A host some parser reads as IPv4 although it is not a dotted quad (`127.1`, `127.0.0.1.`).

    Refused outright rather than decoded: what it means differs between parsers, and no base URL
    needs it.
    """
    labels = host.removesuffix(".").split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return False
    return host.endswith(".") or not _is_ip_literal(host)


class PublicOnlyResolver(AbstractResolver):
    """Resolves like the default resolver, but refuses names that lead to non-public addresses."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not all(is_public_address(result["host"]) for result in results):
            raise UpstreamNotAllowed("host resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class UpstreamEndpoints:
    """The URLs of one OpenAI-compatible base URL, built once and reused."""

    chat: URL
    models: URL


@lru_cache(maxsize=4096)
def endpoints_for(provider: str, base_url: str, allow_private: bool) -> UpstreamEndpoints:
    """The chat and models URLs under `base_url`; refuses a URL that is not plain http(s).

    Messages never quote the URL: it may carry credentials in its user info or query.
    """
    try:
        url = URL(base_url.strip())
    except (ValueError, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise errors.bad_request(
            f"The {provider} base URL on this connection is not a valid http(s) URL.",
            code="provider_misconfigured",
        )
    if not allow_private and (
        _is_non_canonical_ipv4(url.host)
        or (_is_ip_literal(url.host) and not is_public_address(url.host))
    ):
        raise not_allowed(provider)
    # A query on the base URL (e.g. an api-version some servers need) is kept on every call.
    path = url.path.rstrip("/")
    return UpstreamEndpoints(
        chat=url.with_path(path + "/chat/completions").with_query(url.query),
        models=url.with_path(path + "/models").with_query(url.query),
    )


def not_allowed(provider: str) -> ByoError:
    return ByoError(
        400,
        "upstream_not_allowed",
        f"The {provider} base URL on this connection points to a private or local address, "
        "which this router is configured not to call.",
    )


def create_session(settings: RouterSettings) -> aiohttp.ClientSession:
    """The process's one client session: pooled keep-alive connections, timeouts, no cookies."""
    resolver: AbstractResolver = DefaultResolver()
    if not settings.allow_private_upstreams:
        resolver = PublicOnlyResolver(resolver)
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections,
        limit_per_host=settings.max_connections_per_host,
        resolver=resolver,
        ttl_dns_cache=60,
        keepalive_timeout=30,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.upstream_connect_timeout_s,
        sock_read=settings.upstream_read_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # One user's provider must never set cookies that another user's request then sends.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
        trust_env=False,
        auto_decompress=True,
    )
