"""Wires the router onto the bus: chat, cancels, the model list, key checks and cache events.

The model list and the key check are plain FastStream endpoints; chat and cancel use nats-py
directly (see `chat.py`). `register` subscribes before the broker starts; the upstream pool and
the chat subscriptions start once the bus is connected and stop before it closes.
"""

from __future__ import annotations

import aiohttp

from byorouter_common.bus import KeepAliveTicker, serve, subscribe_event
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as contract
from byorouter_common.contracts.keystore import ConnectionRef, ResolvedConnection
from byorouter_common.contracts.keystore.user_limits import LimitsAdmit, LimitsAdmitted
from byorouter_common.contracts.router import ModelList
from byorouter_common.service import Service, ServiceRuntime
from byorouter_router.catalog import ModelCatalog
from byorouter_router.chat import ChatRouter
from byorouter_router.cooldowns import Cooldowns
from byorouter_router.credential_check import CredentialChecker
from byorouter_router.credentials import CredentialCache
from byorouter_router.fallback import RetryPolicy
from byorouter_router.metrics import cooldown_ended, cooldown_started
from byorouter_router.providers.anthropic.provider import AnthropicProvider
from byorouter_router.providers.base import Provider
from byorouter_router.providers.errors import Timeouts
from byorouter_router.providers.openai_compat import (
    OPENAI_BASE_URL,
    OpenAICompatProvider,
    SelfHostedProvider,
)
from byorouter_router.providers.openrouter import OpenRouterProvider
from byorouter_router.providers.tunnel import TunnelTransport
from byorouter_router.settings import RouterSettings
from byorouter_router.upstream import create_session


def upstream_timeouts(settings: RouterSettings) -> Timeouts:
    return Timeouts(
        settings.upstream_connect_timeout_s,
        settings.upstream_read_timeout_s,
        settings.request_deadline_s,
        first_token_s=settings.upstream_first_token_timeout_s,
        gap_s=settings.upstream_gap_timeout_s,
        answer_s=settings.upstream_answer_timeout_s,
    )


class RouterHandlers:
    def __init__(self, runtime: ServiceRuntime[RouterSettings]) -> None:
        self.runtime = runtime
        self.settings = settings = runtime.settings
        self.credentials = CredentialCache(
            self._resolve_credentials, settings.credential_cache_ttl_s
        )
        self.keepalive = KeepAliveTicker(settings.keepalive_interval_s)
        self.credential_checker = CredentialChecker(
            settings.allow_private_upstreams,
            upstream_timeouts(settings),
        )
        # Per copy, in memory: which providers failed lately, so requests try them last.
        self.cooldowns = Cooldowns(
            after_failures=settings.cooldown_after_failures,
            window_s=settings.cooldown_window_s,
            cooldown_s=settings.cooldown_s,
            max_cooldown_s=settings.cooldown_max_s,
            on_start=cooldown_started,
            on_end=cooldown_ended,
        )
        self._session: aiohttp.ClientSession | None = None
        self._catalog: ModelCatalog | None = None
        self._chat: ChatRouter | None = None

    async def _resolve_credentials(self, ref: ConnectionRef) -> ResolvedConnection:
        return await self.runtime.bus.request(ks.CREDENTIALS_RESOLVE, ref)

    async def _admit(self, request: LimitsAdmit) -> LimitsAdmitted:
        return await self.runtime.bus.request(ks.user_limits.LIMITS_ADMIT, request)

    def register(self) -> None:
        """FastStream subscribers (before `runtime.start()`), then the start and stop hooks."""
        self.runtime.on_started(self.start)
        self.runtime.on_stop(self.stop)
        serve(
            self.runtime.broker, contract.MODELS, self.list_models, discovery=self.runtime.discovery
        )
        subscribe_event(
            self.runtime.broker, events.CONNECTION_CHANGED, self.credentials.on_connection_changed
        )
        subscribe_event(
            self.runtime.broker, events.APP_DEFAULT_CHANGED, self.credentials.on_app_default_changed
        )
        subscribe_event(
            self.runtime.broker, events.APP_POLICY_CHANGED, self.credentials.on_app_policy_changed
        )
        discovery = self.runtime.discovery
        serve(
            self.runtime.broker,
            contract.PROVIDER_TEST,
            self.credential_checker.check,
            discovery=discovery,
        )

    def _providers(self, session: aiohttp.ClientSession) -> dict[str, Provider]:
        s = self.settings
        timeouts = upstream_timeouts(s)
        return {
            "openai": OpenAICompatProvider(
                "openai",
                session,
                timeouts,
                default_base_url=OPENAI_BASE_URL,
                allow_private=s.allow_private_upstreams,
            ),
            "selfhosted": SelfHostedProvider(
                session,
                timeouts,
                allow_private=s.allow_private_upstreams,
                tunnels=TunnelTransport(lambda: self.runtime.bus),
            ),
            "anthropic": AnthropicProvider(
                session, timeouts, allow_private=s.allow_private_upstreams
            ),
            "openrouter": OpenRouterProvider(
                session,
                timeouts,
                allow_private=s.allow_private_upstreams,
                referer=s.openrouter_referer,
                title=s.openrouter_title,
            ),
        }

    async def start(self) -> None:
        """The upstream pool and the chat subscriptions; after `runtime.start()`."""
        self._session = create_session(self.settings)
        providers = self._providers(self._session)
        self.credential_checker.attach(self._session, providers)
        self._catalog = ModelCatalog(self.credentials, providers, self.settings.model_cache_ttl_s)
        self._chat = ChatRouter(
            self.runtime.bus.nc,
            self.credentials,
            providers,
            discovery=self.runtime.discovery,
            keepalive=self.keepalive,
            deadline_s=self.settings.request_deadline_s,
            cooldowns=self.cooldowns,
            retry=RetryPolicy(
                self.settings.max_retries,
                self.settings.retry_backoff_base_s,
                self.settings.retry_backoff_cap_s,
            ),
            admit=self._admit,
            usage_replicas=self.settings.jetstream_replicas,
        )
        self.keepalive.start()
        await self._chat.start()

    async def stop(self) -> None:
        if self._chat is not None:
            await self._chat.stop(self.settings.shutdown_grace_s)
        await self.keepalive.stop()
        if self._session is not None:
            await self._session.close()

    async def list_models(self, ref: ConnectionRef) -> ModelList:
        if self._catalog is None:
            raise RuntimeError("router not started")
        return await self._catalog.list_models(ref.app_id, ref.connection_id)


async def register(runtime: ServiceRuntime[RouterSettings]) -> None:
    RouterHandlers(runtime).register()


SERVICE = Service(
    "router",
    "Calls the connection's providers for chat requests and streams the answers back.",
    register,
)
