"""Response and documentation models of the HTTP API.

The chat models exist for OpenAPI only: the hot path checks the few fields it needs with orjson and
passes the body on untouched, so a provider's newer fields work without a gateway release.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.errors import ErrorEnvelope


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat completion request; fields beyond these go to the provider unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1,
        description="Provider-prefixed model id: `openai/gpt-4o`, "
        "`anthropic/claude-3-5-sonnet-20241022`, `openrouter/<vendor>/<model>`, "
        "`selfhosted/<model>`, `default/<model>`.",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """A non-streamed answer, exactly as the provider's OpenAI-compatible reply."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ProviderView(BaseModel):
    """A provider of a connection as an app may see it: a masked label, never the key."""

    provider: ks.ProviderName
    label: str | None
    base_url: str | None
    preferred_model: str | None
    priority: int
    status: Literal["ok", "failing"]
    last_error: str | None

    @classmethod
    def of(cls, info: ks.ProviderInfo) -> ProviderView:
        return cls(
            provider=info.provider,
            label=info.label,
            base_url=info.base_url,
            preferred_model=info.preferred_model,
            priority=info.priority,
            status=info.status,
            last_error=info.last_error,
        )


class ConnectionView(BaseModel):
    id: str
    object: Literal["connection"] = "connection"
    status: Literal["active", "revoked"]
    fallback_to_default: bool
    created_at: datetime
    providers: list[ProviderView]
    # The limits the user set on this app and what is left (UTC day and month); null: none.
    limits: ks.user_limits.LimitsStatus | None = None

    @classmethod
    def of(cls, info: ks.ConnectionInfo) -> ConnectionView:
        return cls(
            id=info.connection_id,
            status=info.status,
            fallback_to_default=info.fallback_to_default,
            created_at=info.created_at,
            providers=[ProviderView.of(p) for p in info.providers],
            limits=info.limits,
        )


class ProviderWithModelsView(ProviderView):
    """A provider and the models it offers now, as in GET /v1/models (empty when it fails)."""

    models: list[rt.ModelCard]


class ProviderList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProviderWithModelsView]


class ConnectionDeletedView(BaseModel):
    id: str
    object: Literal["connection"] = "connection"
    deleted: bool = True


class UsageView(BaseModel):
    """Requests and tokens of one connection on one provider and model on one day (UTC)."""

    day: date
    provider: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Prompt tokens read from / written to the provider's prompt cache, completion tokens spent
    # reasoning (each part of the counts above), and requests whose answer broke midway.
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    partial_requests: int

    @classmethod
    def of(cls, row: ks.UsageRow) -> UsageView:
        return cls(
            day=row.day,
            provider=row.provider,
            model=row.model,
            requests=row.requests,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens,
            cached_tokens=row.cached_tokens,
            cache_write_tokens=row.cache_write_tokens,
            reasoning_tokens=row.reasoning_tokens,
            partial_requests=row.partial_requests,
        )


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageView]


class TunnelModelInfo(BaseModel):
    """A model the user's server has, as seed 002 declares it (`modelInfo`)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=200)
    capabilities: list[str] = Field(default_factory=list, max_length=32)


class TunnelRegisterRequest(BaseModel):
    """Seed 002's body; every field is optional. `userId` is accepted and ignored: the
    `X-Byorouter-Connection` header says whose tunnel it is."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    user_id: str | None = Field(default=None, alias="userId", max_length=200)
    name: str | None = Field(default=None, max_length=200)
    model_info: TunnelModelInfo | list[TunnelModelInfo] | None = Field(
        default=None, alias="modelInfo"
    )

    def declared_models(self) -> list[ks.DeclaredModel]:
        infos = self.model_info if isinstance(self.model_info, list) else [self.model_info]
        return [
            ks.DeclaredModel(name=m.name, capabilities=m.capabilities)
            for m in infos
            if m is not None
        ]


class TunnelRotateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # How long the old token still opens new sockets; sockets already up are never cut.
    overlap_seconds: int = Field(default=300, ge=0, le=7 * 24 * 3600)


class TunnelRegistered(BaseModel):
    """The token is shown once: only its hash is stored."""

    tunnel_id: str
    token: str
    connect_url: str
    command: str


class TunnelRotated(BaseModel):
    tunnel_id: str
    token: str
    previous_valid_until: datetime | None
    command: str


class TunnelRevokedView(BaseModel):
    tunnel_id: str
    revoked: bool = True


class TunnelClientView(BaseModel):
    connected_since: datetime
    rtt_ms: float | None
    client_version: str
    in_flight: int
    max_concurrency: int
    public_key_fingerprint: str


class DeclaredModelView(BaseModel):
    name: str
    capabilities: list[str]


class TunnelStatusView(BaseModel):
    tunnel_id: str
    connection_id: str
    state: Literal["online", "offline"]
    # `revoked` tunnels are always offline and refuse every client.
    status: Literal["active", "revoked"]
    clients: list[TunnelClientView]
    # When a client was last connected (as keystore recorded it).
    last_seen: datetime | None
    # Live from the connected clients when online; otherwise what a client last reported.
    models: list[str]
    requests_in_flight: int
    declared_models: list[DeclaredModelView]


_ERROR = {"model": ErrorEnvelope}
# The error statuses every authenticated route may answer, for the OpenAPI document.
APP_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Malformed request or missing connection header."},
    401: {**_ERROR, "description": "Missing, malformed, unknown or revoked app key."},
    404: {**_ERROR, "description": "No such connection for this app, or model not connected."},
    413: {**_ERROR, "description": "Request body too large."},
    429: {**_ERROR, "description": "Rate limited by the gateway or the provider (Retry-After)."},
    502: {**_ERROR, "description": "The provider failed."},
    503: {**_ERROR, "description": "A BYORouter service is not running."},
    504: {**_ERROR, "description": "The provider or a service did not answer in time."},
}


# Headless routes also answer 403 (keystore's) when the operator has not allowed the app.
HEADLESS_ERRORS: dict[int | str, dict[str, Any]] = {
    **APP_ERRORS,
    403: {**_ERROR, "description": "Headless connections are off for this app."},
}


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads a required JSON `model` by hand (`json_body`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(model)}},
        }
    }


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` inlined, to embed in `openapi_extra`."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


# --- headless connections and key tests ---------------------------------------------------------
# The field limits are keystore's (`ks.ProviderCredentialInput`); a key is never echoed back.

MAX_KEY_CHARS = 4096


class ProviderKeyInput(BaseModel):
    """One provider of a headless connection: the user's key, as the Connect page takes it."""

    model_config = ConfigDict(extra="forbid")

    provider: ks.ProviderName
    api_key: SecretStr | None = Field(default=None, max_length=MAX_KEY_CHARS)
    base_url: str | None = Field(default=None, max_length=2048)
    preferred_model: str | None = Field(default=None, max_length=200)
    # selfhosted: a tunnel of this connection (POST /api/tunnel/register makes one).
    tunnel_id: str | None = Field(default=None, max_length=64)

    def credential(self) -> ks.ProviderCredentialInput:
        return ks.ProviderCredentialInput(
            provider=self.provider,
            api_key=self.api_key,
            base_url=self.base_url,
            preferred_model=self.preferred_model,
            tunnel_id=self.tunnel_id,
        )


class ConnectionCreateRequest(BaseModel):
    """POST /v1/connections: providers in the order they are tried."""

    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderKeyInput] = Field(min_length=1, max_length=8)
    fallback_to_default: bool = False


class ConnectionUpdateRequest(BaseModel):
    """PATCH /v1/connections/{id}: every field optional; the changes apply together or not at all.

    `providers` are added, or replace the stored provider of the same kind (key included);
    then `remove_providers` go; then `order`, `preferred_models`, `fallback_to_default`.
    """

    model_config = ConfigDict(extra="forbid")

    providers: list[ProviderKeyInput] = Field(default_factory=list, max_length=8)
    remove_providers: list[ks.ProviderName] = Field(default_factory=list, max_length=8)
    order: list[ks.ProviderName] | None = Field(default=None, min_length=1, max_length=8)
    preferred_models: dict[ks.ProviderName, str | None] = Field(default_factory=dict)
    fallback_to_default: bool | None = None


class ProviderKeyReplace(BaseModel):
    """PUT /v1/connections/{id}/providers/{provider}: that provider's key and settings."""

    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = Field(default=None, max_length=MAX_KEY_CHARS)
    base_url: str | None = Field(default=None, max_length=2048)
    preferred_model: str | None = Field(default=None, max_length=200)
    tunnel_id: str | None = Field(default=None, max_length=64)


class CredentialTestRequest(BaseModel):
    """POST /v1/credentials/test: try a key before storing it; nothing is stored."""

    model_config = ConfigDict(extra="forbid")

    provider: ks.ProviderName
    api_key: SecretStr | None = Field(default=None, max_length=MAX_KEY_CHARS)
    base_url: str | None = Field(default=None, max_length=2048)
    # A model the app means to use: the answer says whether the provider lists it.
    model: str | None = Field(default=None, max_length=200)


class CredentialTestResult(BaseModel):
    """The Connect page's Test answer, in the same words, with every model the provider lists."""

    object: Literal["credential_test"] = "credential_test"
    ok: bool
    message: str
    model_count: int
    models: list[str]
    # Whether `model` (seed 002: `modelId`) is among `models`; null when none was asked about
    # or the key did not work.
    model_available: bool | None = None


# Seed 002's names for providers; `default` is the app's own AI, which stores no user key.
SeedProvider = Literal["default", "openrouter", "self-hosted", "selfhosted", "openai", "anthropic"]


class SeedAiProviderPreference(BaseModel):
    """Seed 002's `POST /api/user-preferences/ai-provider` body, as the seed writes it.

    `openRouterBaseUrl` is ours (not the seed's): an OpenRouter-compatible endpoint other than
    openrouter.ai. Fields the seed's preferences hold but BYORouter does not use are ignored.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    # The document lists what is stored here; `default` and the others are taken by the schema
    # only to be refused with a message saying where they go instead.
    ai_provider: SeedProvider = Field(
        alias="aiProvider",
        json_schema_extra={"enum": ["openrouter", "self-hosted", "selfhosted"]},
    )
    open_router_api_key: SecretStr | None = Field(
        default=None, alias="openRouterApiKey", max_length=MAX_KEY_CHARS
    )
    open_router_model_preference: str | None = Field(
        default=None, alias="openRouterModelPreference", max_length=200
    )
    open_router_base_url: str | None = Field(
        default=None, alias="openRouterBaseUrl", max_length=2048
    )
    fallback_to_default: bool = Field(default=False, alias="fallbackToDefault")
    tunnel_id: str | None = Field(default=None, alias="tunnelId", max_length=64)
    self_hosted_url: str | None = Field(default=None, alias="selfHostedUrl", max_length=2048)
    self_hosted_auth_key: SecretStr | None = Field(
        default=None, alias="selfHostedAuthKey", max_length=MAX_KEY_CHARS
    )


class SeedTestConnection(BaseModel):
    """Seed 002's `POST /api/ai/test-connection` body; `baseUrl` is ours, for self-hosted
    servers and OpenRouter-compatible endpoints."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    # `default` has no user key to test: refused with a message, so the document leaves it out.
    provider: SeedProvider = Field(
        json_schema_extra={
            "enum": ["openrouter", "self-hosted", "selfhosted", "openai", "anthropic"]
        }
    )
    api_key: SecretStr | None = Field(default=None, alias="apiKey", max_length=MAX_KEY_CHARS)
    model_id: str | None = Field(default=None, alias="modelId", max_length=200)
    base_url: str | None = Field(default=None, alias="baseUrl", max_length=2048)
