"""The one pooled HTTP client every provider call goes through, and its guard against SSRF.

A connection's base URL is chosen by whoever connected it, so unless private upstreams are
allowed the router refuses to call loopback, private, link-local or otherwise non-public
addresses: IP literals are checked when the URL is parsed, by our own reading of them rather than
the HTTP library's (non-canonical IPv4 spellings such as `127.1` are refused, an IPv6 address
carrying an IPv4 one is judged as that IPv4), and host names every time they are resolved (so a
name that later resolves somewhere private is refused too).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from byorouter_common import errors
from byorouter_common.errors import ByoError
from byorouter_common.public_addresses import (
    NotPublicAddress,
    is_forbidden_host,
)
from byorouter_common.public_addresses import (
    is_public_address as is_public_address,
)
from byorouter_common.public_resolver import PublicOnlyResolver
from byorouter_router.settings import RouterSettings

USER_AGENT = "byorouter/0.1"

# The router's name for it: its provider errors map it to `upstream_not_allowed`.
UpstreamNotAllowed = NotPublicAddress


@dataclass(frozen=True, slots=True)
class UpstreamEndpoints:
    """The URLs of one OpenAI-compatible base URL, built once and reused."""

    chat: URL
    models: URL
    embeddings: URL
    responses: URL

    def of(self, operation: str) -> URL:
        """The URL an operation (`chat`, `embeddings`, `responses`) is posted to."""
        url: URL = getattr(self, operation)
        return url


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
    if not allow_private and is_forbidden_host(url.host):
        raise not_allowed(provider)
    # A query on the base URL (e.g. an api-version some servers need) is kept on every call.
    path = url.path.rstrip("/")
    return UpstreamEndpoints(
        chat=url.with_path(path + "/chat/completions").with_query(url.query),
        models=url.with_path(path + "/models").with_query(url.query),
        embeddings=url.with_path(path + "/embeddings").with_query(url.query),
        responses=url.with_path(path + "/responses").with_query(url.query),
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
