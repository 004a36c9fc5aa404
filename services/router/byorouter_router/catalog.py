"""The models a connection can use now: every connected provider's list, provider-prefixed,
plus the app default provider's list as `default/<model>` when the app has one.

Each provider's list is cached per credential for a few minutes. A provider that fails is left
out (and logged without its key or URL) rather than failing the whole list.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from byorouter_common.contracts.router import ModelCard, ModelList
from byorouter_common.errors import ByoError
from byorouter_router.credentials import CredentialCache
from byorouter_router.providers.base import Provider, ProviderCredential

log = logging.getLogger(__name__)

_CacheKey = tuple[str, str, str]
# Past this many cached lists, expired ones are swept on the next insert.
_SWEEP_AT = 10_000


def _cache_key(credential: ProviderCredential) -> _CacheKey:
    # The key's digest, not the key: a changed key is a different list, a dump shows nothing.
    key = credential.api_key.get_secret_value() if credential.api_key is not None else ""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return credential.provider, credential.base_url or "", digest


class ModelCatalog:
    def __init__(
        self, credentials: CredentialCache, providers: dict[str, Provider], ttl_s: float
    ) -> None:
        self._credentials = credentials
        self._providers = providers
        self._ttl_s = ttl_s
        self._cached: dict[_CacheKey, tuple[float, list[ModelCard]]] = {}

    async def list_models(self, app_id: str, connection_id: str) -> ModelList:
        connection = await self._credentials.resolve(app_id, connection_id)
        wanted = [
            (self._providers[name], credential)
            for name, credential in connection.providers.items()
            if name in self._providers
        ]
        lists = await asyncio.gather(*(self._provider_models(p, c) for p, c in wanted))
        cards = [card for cards in lists for card in cards]
        default = connection.app_default
        if default is not None and default.provider in self._providers:
            # The app's own provider serves `default/<model>` for every connection of the app.
            offered = await self._provider_models(self._providers[default.provider], default)
            cards += [
                card.model_copy(update={"id": "default/" + card.id.partition("/")[2]})
                for card in offered
            ]
        return ModelList(data=cards)

    async def _provider_models(
        self, provider: Provider, credential: ProviderCredential
    ) -> list[ModelCard]:
        key = _cache_key(credential)
        now = asyncio.get_running_loop().time()
        cached = self._cached.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            cards = await provider.list_models(credential)
        except ByoError as exc:
            log.warning(
                "model list unavailable",
                extra={"provider": provider.name, "code": exc.code, "status": exc.status},
            )
            return []
        if len(self._cached) >= _SWEEP_AT:
            self._cached = {k: v for k, v in self._cached.items() if v[0] > now}
        self._cached[key] = (now + self._ttl_s, cards)
        return cards
