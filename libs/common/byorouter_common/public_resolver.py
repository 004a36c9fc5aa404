"""The aiohttp resolver that refuses host names leading to non-public addresses (SSRF guard).

Apart from `public_addresses` so that checking a URL does not load aiohttp: keystore checks
webhook URLs at registration and loads aiohttp only to send.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from byorouter_common.public_addresses import NotPublicAddress, is_public_address


class PublicOnlyResolver(AbstractResolver):
    """Resolves like the default resolver, but refuses names that lead to non-public addresses."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not all(is_public_address(result["host"]) for result in results):
            raise NotPublicAddress("host resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()
