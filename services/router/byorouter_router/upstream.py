"""The one pooled HTTP client every provider call goes through, and its guard against SSRF.

A connection's base URL is chosen by whoever connected it, so unless private upstreams are
allowed the router refuses to call loopback, private, link-local or otherwise non-public
addresses: IP literals are checked when the URL is parsed, host names every time they are
resolved (so a name that later resolves somewhere private is refused too).
"""

from __future__ import annotations

import ipaddress
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


def is_public_address(host: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as its IPv4)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


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
    if not allow_private and _is_ip_literal(url.host) and not is_public_address(url.host):
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
