"""Provider policy: which kinds of provider an app's users may connect, and the app server's
pushed authorization request (RFC 9126) that narrows it for one connect flow; served by keystore.

A policy of None allows every kind. A pushed request may only narrow the app's policy; what it
pushed is bound to its client, used once, and never passes through the browser.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE, ProviderKind

# RFC 9126 section 2.2: the request_uri is short-lived; the person then has this long to finish.
PAR_TTL_S: Final = 90
PAR_CONSENT_WINDOW_S: Final = 1800
REQUEST_URI_PREFIX: Final = "urn:ietf:params:oauth:request_uri:"


class AppPolicySet(Contract):
    client_id: str = Field(max_length=200)
    # None: every kind (the default); otherwise the kinds allowed, at least one.
    allowed_providers: list[ProviderKind] | None = Field(default=None, min_length=1)


class AppPolicy(Contract):
    client_id: str
    app_id: str
    allowed_providers: list[ProviderKind] | None


class PushedAuthorization(Contract):
    """The app's server pushes its authorization request; the gateway authenticated the app."""

    app_id: str
    redirect_uri: str = Field(max_length=2000)
    # Raw bytes as the app sent them, base64url-encoded (the redirect returns them byte for byte).
    state_b64: str | None = Field(default=None, max_length=4096)
    code_challenge: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    # None: the app's own policy; otherwise a subset of it.
    allowed_providers: list[ProviderKind] | None = Field(default=None, min_length=1)
    ttl_s: int = Field(default=PAR_TTL_S, ge=1, le=600)


class PushedAuthorizationCreated(Contract):
    request_uri: SecretStr
    expires_in: int

    @field_serializer("request_uri", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class PushedAuthorizationOpen(Contract):
    """Connect opens a pushed request (once, `open`) or reads it again on each form post."""

    client_id: str = Field(max_length=200)
    request_uri: SecretStr
    # True on GET /authorize: the request_uri is then spent for opening.
    open: bool = False

    @field_serializer("request_uri", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class PushedAuthorizationView(Contract):
    redirect_uri: str
    state_b64: str | None
    code_challenge: str
    # The app's policy narrowed by the pushed one: what the page may offer.
    allowed_providers: list[ProviderKind]
    expires_at: datetime


APP_POLICY_SET = Endpoint(
    "byorouter.keystore.app_policy.set",
    AppPolicySet,
    AppPolicy,
    SERVICE,
    "Set which provider kinds an app's users may connect; routers drop its cached connections.",
)
PAR_CREATE = Endpoint(
    "byorouter.keystore.connect.par.create",
    PushedAuthorization,
    PushedAuthorizationCreated,
    SERVICE,
    "Store an app's pushed authorization request (RFC 9126); returns its single-use request_uri.",
)
PAR_OPEN = Endpoint(
    "byorouter.keystore.connect.par.open",
    PushedAuthorizationOpen,
    PushedAuthorizationView,
    SERVICE,
    "Open a pushed authorization request (once) or read it again for the consent page's forms.",
)
