"""The Connect flow's subjects: consent, authorization codes, manage links and sessions; served
by keystore.

Connect (the browser pages) and the gateway (the app's server-to-server calls) ask keystore to
issue and redeem the flow's one-time secrets. Every one-time secret travels only in request/reply
bodies, never in a subject; keystore stores only its SHA-256. (Trying a key before it is saved is
the router's `PROVIDER_TEST`, in `contracts.router`.)

The redirect URI rules live here too, because keystore applies them when an app registers and
Connect applies them again on every authorization request.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.connections import ConnectionInfo, ProviderCredentialInput
from byorouter_common.contracts.keystore.names import (
    PROVIDER_KINDS,
    SERVICE,
    ProviderKind,
    ProviderName,
)
from byorouter_common.contracts.keystore.user_limits import UserLimits

# An authorization code lives at most this long (RFC 9700 recommends minutes, not more).
MAX_CODE_TTL_S: Final = 600
# PKCE S256: the challenge is the unpadded base64url SHA-256 of the verifier, 43 characters.
CODE_CHALLENGE_PATTERN: Final = r"^[A-Za-z0-9_-]{43}$"
# RFC 7636 section 4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
CODE_VERIFIER_PATTERN: Final = r"^[A-Za-z0-9\-._~]{43,128}$"

_LOOPBACK_NAMES: Final = frozenset({"localhost"})


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback IP literals (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` may not be a redirect URI, or None if it may.

    An absolute https URL, or http on a loopback host (native and local apps); no user info
    (`https://good.example@evil.example/`), no fragment, no whitespace or control characters.
    Messages never quote the URI.
    """
    if not uri or len(uri) > 2000:
        return "must be an absolute URL of at most 2000 characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in uri):
        return "must not contain spaces, backslashes or control characters"
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute http(s) URL with a host"
    if "@" in parts.netloc:
        return "must not contain a user name or password"
    if "#" in uri:
        return "must not contain a fragment"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return "must use https (plain http is allowed only for localhost and 127.0.0.1)"
    return None


def origin_of(url: str) -> str:
    """scheme://host[:port] of an absolute URL, lower-cased as browsers compare origins."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    port = "" if parts.port in (None, default_port) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


# --- the consent page --------------------------------------------------------------------------


class ConsentAppGet(Contract):
    client_id: str = Field(max_length=200)


class ConsentApp(Contract):
    """What the consent page shows about the app that is asking."""

    app_id: str
    client_id: str
    name: str
    redirect_uris: list[str]
    # The app runs an AI of its own that a connection may fall back to; otherwise the page
    # hides the "fall back to the app's AI" choice.
    offers_default_provider: bool = False
    # The app's provider policy (`provider_policy`): the kinds the page may offer.
    allowed_providers: list[ProviderKind] = Field(default_factory=lambda: list(PROVIDER_KINDS))


class AuthorizationGrant(Contract):
    """The person said yes: store their keys as a new connection and issue a code for it."""

    client_id: str = Field(max_length=200)
    redirect_uri: str = Field(max_length=2000)
    code_challenge: str = Field(pattern=CODE_CHALLENGE_PATTERN)
    code_challenge_method: Literal["S256"] = "S256"
    providers: list[ProviderCredentialInput] = Field(min_length=1, max_length=8)
    fallback_to_default: bool = False
    # Connect's own setting keeps at least 10 s; the contract only bounds it (tests go lower).
    code_ttl_s: int = Field(default=300, ge=1, le=MAX_CODE_TTL_S)
    # The person chose "my own server, through a secure tunnel": Connect registers the tunnel
    # (TUNNEL_REGISTER) right after, so the self-hosted provider's base_url, then only the
    # direct address used while the tunnel is offline, may be empty.
    selfhosted_tunnel: bool = False
    # The pushed authorization request (RFC 9126) this consent answers: keystore then takes the
    # redirect URI, PKCE challenge and narrowed provider policy from it, and spends it.
    request_uri: SecretStr | None = None
    # Caps the person set on the consent page (the Manage page's form): stored with the connection.
    limits: UserLimits | None = None

    @field_serializer("request_uri", when_used="json")
    def _reveal_request_uri(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class AuthorizationCode(Contract):
    # Shown once, in the redirect to the app; only its SHA-256 is stored.
    code: SecretStr
    expires_at: datetime
    # The connection the code grants, for Connect's own next step (registering a tunnel); the
    # browser never sees it.
    connection_id: str | None = None

    @field_serializer("code", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class CodeExchange(Contract):
    """The app's server trades a code for the connection id (the gateway authenticated it)."""

    app_id: str
    code: SecretStr
    redirect_uri: str = Field(max_length=2000)
    code_verifier: SecretStr

    @field_serializer("code", "code_verifier", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


# --- managing a connection later -------------------------------------------------------------


class ManageLinkCreate(Contract):
    """An app asks for a short-lived link that lets its user manage one connection."""

    app_id: str
    connection_id: str
    return_url: str | None = Field(default=None, max_length=2000)
    ttl_s: int = Field(default=300, ge=10, le=900)


class ManageLink(Contract):
    token: SecretStr
    expires_at: datetime

    @field_serializer("token", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class ManageLinkPeek(Contract):
    """What a link would open, for Connect to ask the person first; the link stays unspent."""

    token: SecretStr

    @field_serializer("token", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class ManageLinkPreview(Contract):
    """What the confirmation page names: the app and a short label of the connection.

    No key, label or id: whoever holds the link (a link scanner too) sees it.
    """

    app_name: str
    # The connection's providers, in the order they are tried.
    providers: list[ProviderName]
    connected_at: datetime
    expires_at: datetime
    return_url: str | None


class ManageLinkRedeem(Contract):
    """Connect trades the link's token (once) for a browser session of its own."""

    token: SecretStr
    session_ttl_s: int = Field(default=1800, ge=60, le=12 * 3600)

    @field_serializer("token", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class ManageSessionOpened(Contract):
    session: SecretStr
    expires_at: datetime

    @field_serializer("session", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class _SessionRequest(Contract):
    session: SecretStr

    @field_serializer("session", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class ManageSessionGet(_SessionRequest):
    pass


class ProviderSet(_SessionRequest):
    """Add a provider, or replace one's key (a new data key; the connection id stays)."""

    credential: ProviderCredentialInput


class ProviderRemove(_SessionRequest):
    provider: ProviderName


class PreferencesSet(_SessionRequest):
    """Provider order (first is tried first), preferred models, and fallback to the app's AI."""

    order: list[ProviderName] = Field(min_length=1, max_length=8)
    preferred_models: dict[ProviderName, str | None] = Field(default_factory=dict)
    fallback_to_default: bool = False


class ManageDisconnect(_SessionRequest):
    pass


class LimitsSet(_SessionRequest):
    """The manage page's limits form: replaces every limit of the session's connection."""

    limits: UserLimits


class ManageView(Contract):
    """Everything the manage page shows: never a key, only masked labels and health."""

    app_name: str
    offers_default_provider: bool = False
    # What this connection may add: the app's provider policy, narrowed as its connect flow was.
    allowed_providers: list[ProviderKind] = Field(default_factory=lambda: list(PROVIDER_KINDS))
    return_url: str | None
    expires_at: datetime
    connection: ConnectionInfo


CONSENT_APP_GET = Endpoint(
    "byorouter.keystore.connect.app.get",
    ConsentAppGet,
    ConsentApp,
    SERVICE,
    "The app asking for consent, by client id (404 if unknown).",
)
AUTHORIZE = Endpoint(
    "byorouter.keystore.connect.authorize",
    AuthorizationGrant,
    AuthorizationCode,
    SERVICE,
    "Store a person's keys as a new connection and issue a single-use authorization code.",
)
CODE_EXCHANGE = Endpoint(
    "byorouter.keystore.connect.code.exchange",
    CodeExchange,
    ConnectionInfo,
    SERVICE,
    "Redeem an authorization code (PKCE S256) for its connection; reuse revokes it.",
)
MANAGE_LINK_CREATE = Endpoint(
    "byorouter.keystore.connect.manage_link.create",
    ManageLinkCreate,
    ManageLink,
    SERVICE,
    "A short-lived single-use link token for a person to manage one of the app's connections.",
)
MANAGE_LINK_PEEK = Endpoint(
    "byorouter.keystore.connect.manage_link.peek",
    ManageLinkPeek,
    ManageLinkPreview,
    SERVICE,
    "The app and connection an unspent manage link opens, without spending it.",
)
MANAGE_LINK_REDEEM = Endpoint(
    "byorouter.keystore.connect.manage_link.redeem",
    ManageLinkRedeem,
    ManageSessionOpened,
    SERVICE,
    "Trade a manage link token (once) for a manage session.",
)
MANAGE_SESSION_GET = Endpoint(
    "byorouter.keystore.connect.session.get",
    ManageSessionGet,
    ManageView,
    SERVICE,
    "The connection a manage session may change, with masked labels and health.",
)
PROVIDER_SET = Endpoint(
    "byorouter.keystore.connect.provider.set",
    ProviderSet,
    ManageView,
    SERVICE,
    "Add a provider to the session's connection or replace its key.",
)
PROVIDER_REMOVE = Endpoint(
    "byorouter.keystore.connect.provider.remove",
    ProviderRemove,
    ManageView,
    SERVICE,
    "Remove a provider from the session's connection (not the last one).",
)
PREFERENCES_SET = Endpoint(
    "byorouter.keystore.connect.preferences.set",
    PreferencesSet,
    ManageView,
    SERVICE,
    "Change provider order, preferred models and fallback of the session's connection.",
)
MANAGE_DISCONNECT = Endpoint(
    "byorouter.keystore.connect.disconnect",
    ManageDisconnect,
    ManageView,
    SERVICE,
    "Disconnect the session's connection: revoke it and erase its keys.",
)
LIMITS_SET = Endpoint(
    "byorouter.keystore.connect.limits.set",
    LimitsSet,
    ManageView,
    SERVICE,
    "Set the user's limits (requests a day, tokens a month, models) on the session's connection.",
)

# Not part of keystore's `ENDPOINTS`: operators never call the flow, only Connect and the gateway
# may (see `nats_permissions`).
KEYSTORE_ENDPOINTS = (
    CONSENT_APP_GET,
    AUTHORIZE,
    CODE_EXCHANGE,
    MANAGE_LINK_CREATE,
    MANAGE_LINK_PEEK,
    MANAGE_LINK_REDEEM,
    MANAGE_SESSION_GET,
    PROVIDER_SET,
    PROVIDER_REMOVE,
    PREFERENCES_SET,
    MANAGE_DISCONNECT,
    LIMITS_SET,
)
