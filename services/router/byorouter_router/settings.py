"""Router settings: upstream timeouts, retries, the connection pool, caches and the SSRF guard."""

from __future__ import annotations

from pydantic import Field

from byorouter_common.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    # BYOROUTER_METRICS_PORT: /metrics on its own listener (0: none); see docs/operations.md.
    metrics_port: int = Field(default=9402, ge=0, le=65535)
    # Opening a TCP/TLS connection to a provider.
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0)
    # Waiting for the first byte, and for each next byte of a streamed answer.
    upstream_read_timeout_s: float = Field(default=60.0, gt=0)
    # The most a request may take until its answer starts flowing (a non-streamed answer: until
    # it is complete). A stream that keeps delivering is bounded by the read timeout only, so a
    # long generation is not cut off mid-answer.
    request_deadline_s: float = Field(default=120.0, gt=0)
    # A streamed answer's pace, counted in SSE events (an upstream's keep-alive comments do not
    # count, so a live-looking but silent upstream is still cut off): its first event after the
    # request, the longest gap between two events, and the whole answer. Each ends the stream
    # with an in-band 504 upstream_timeout, or a plain 504 if nothing was sent yet.
    upstream_first_token_timeout_s: float = Field(default=60.0, gt=0)
    upstream_gap_timeout_s: float = Field(default=60.0, gt=0)
    upstream_answer_timeout_s: float = Field(default=600.0, gt=0)
    # How often one provider is asked again after a 429, 5xx or timeout before falling back.
    max_retries: int = Field(default=1, ge=0, le=5)
    # Exponential backoff with full jitter between those retries (a Retry-After wins over it).
    retry_backoff_base_s: float = Field(default=0.25, gt=0)
    retry_backoff_cap_s: float = Field(default=2.0, gt=0)
    # Cooldowns (per router copy, in memory): a connection's provider and model that failed this
    # many times (429, 5xx, timeouts; 0: never cool down) within the window, or once with a
    # Retry-After, is tried after the others for a while (the Retry-After, capped).
    cooldown_after_failures: int = Field(default=3, ge=0)
    cooldown_window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=15.0, gt=0)
    cooldown_max_s: float = Field(default=60.0, gt=0)
    # How long a connection's decrypted credentials stay cached; change events drop them sooner.
    credential_cache_ttl_s: float = Field(default=60.0, ge=0)
    # How long a provider's model list is reused.
    model_cache_ttl_s: float = Field(default=300.0, ge=0)
    # BYOROUTER_ALLOW_PRIVATE_UPSTREAMS: let base URLs reach loopback/private/link-local
    # addresses. Off in production (SSRF); on for local development and tests.
    allow_private_upstreams: bool = False
    # A stream with nothing to say sends a keep-alive this often, so the caller's idle timer holds.
    keepalive_interval_s: float = Field(default=5.0, gt=0)
    # Upper bound on open upstream connections (the shared aiohttp pool).
    max_connections: int = Field(default=512, ge=1)
    # Cap per provider host; 0 leaves only max_connections.
    max_connections_per_host: int = Field(default=0, ge=0)
    # On shutdown, how long in-flight requests may finish before they are cancelled.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # OpenRouter's app attribution (HTTP-Referer, X-Title) on every call made with a user's key.
    # Set the referer to this installation's public URL; empty sends no header.
    openrouter_referer: str = Field(default="http://127.0.0.1:8080", max_length=512)
    openrouter_title: str = Field(default="BYORouter", max_length=100)
