"""Forwarding to the one configured model server, and nothing else (the tunnel's SSRF guard).

A request from the tunnel names only a method and a path; the URL is always the configured base
plus a path from `protocol.ALLOWED_PATHS`, redirects are not followed, and the headers sent are
built here from scratch, so nothing a request carries can point this machine at another host on
the user's network or leak a BYORouter header to the model server.
"""

from __future__ import annotations

import http.cookiejar
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from byorouter_tunnel_client import __version__, _json
from byorouter_tunnel_client.protocol import ALLOWED_PATHS, RequestHead

USER_AGENT = f"byorouter-tunnel/{__version__}"
_log = logging.getLogger(__name__)


class ForwardError(Exception):
    """A request this client cannot answer; it goes back to the router as a sealed `fail`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def envelope(self) -> bytes:
        """The error envelope of a `fail` frame."""
        return _json.dumps(
            {"error": {"status": self.status, "code": self.code, "message": self.message}}
        )


def unreachable(message: str) -> ForwardError:
    return ForwardError(502, "upstream_unreachable", message)


def check_request(head: RequestHead) -> None:
    """Only the model-server API paths, only POST (and GET for the model list)."""
    if head.path not in ALLOWED_PATHS:
        raise ForwardError(403, "path_not_allowed", "this tunnel forwards only the model API paths")
    allowed = ("GET", "POST") if head.path == "/models" else ("POST",)
    if head.method not in allowed:
        raise ForwardError(
            403, "path_not_allowed", f"{head.method} {head.path} is not forwarded by this tunnel"
        )


@dataclass
class UpstreamResponse:
    """An open upstream response: its status line facts, and its body as it arrives."""

    status: int
    content_type: str
    _response: httpx.Response

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body's bytes as the network delivers them: never held back to fill a buffer, and
        not decoded (the client asked for `identity`, so these are the model server's bytes)."""
        try:
            async for piece in self._response.aiter_raw():
                if piece:
                    yield piece
        except httpx.HTTPError as exc:
            raise unreachable(
                f"the model server broke off its answer ({type(exc).__name__})"
            ) from None


class Upstream:
    """The model server at `base_url` (e.g. http://127.0.0.1:11434/v1)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout_s: float = 10.0,
        models_timeout_s: float = 5.0,
        max_connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._models_timeout_s = models_timeout_s
        # No read timeout: a model may think for minutes; the router enforces its own deadline
        # and cancels the stream, which closes this response.
        timeout = httpx.Timeout(connect=connect_timeout_s, read=None, write=30.0, pool=None)
        cookies = httpx.Cookies()
        # The model server must not set cookies that later requests (of other apps) then send.
        cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            # The environment's proxy settings are for this machine's own browsing; the model
            # server sits next to the client and its traffic must not go through a proxy.
            trust_env=False,
            cookies=cookies,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=8),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self, *, accept: str, router_key: str | None, json_body: bool) -> dict[str, str]:
        headers = {"Accept": accept}
        if json_body:
            headers["Content-Type"] = "application/json"
        # A key held on this machine wins over the one the router sends.
        key = self._api_key or router_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def list_models(self) -> list[str]:
        """The ids the model server lists at /models; [] (with a warning) when it cannot say."""
        try:
            response = await self._client.get(
                self.base_url + "/models",
                headers=self._headers(accept="application/json", router_key=None, json_body=False),
                timeout=self._models_timeout_s,
            )
            response.raise_for_status()
            data: Any = _json.loads(response.content)
            return [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            _log.warning(
                "could not list the model server's models at %s/models (%s); connecting anyway",
                self.base_url,
                _describe(exc),
            )
            return []

    @asynccontextmanager
    async def open(self, head: RequestHead, body: bytes) -> AsyncIterator[UpstreamResponse]:
        """Send `head`'s request to the model server; the response is closed on exit, which
        (on a cancel) tells the model server to stop generating."""
        check_request(head)
        accept = "text/event-stream" if head.stream else "application/json"
        post = head.method == "POST"
        request = self._client.build_request(
            head.method,
            self.base_url + head.path,
            content=body if post else None,
            headers=self._headers(accept=accept, router_key=head.upstream_key, json_body=post),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise unreachable("the model server did not accept the connection in time") from None
        except httpx.HTTPError as exc:
            raise unreachable(f"the model server is not reachable ({_describe(exc)})") from None
        try:
            yield UpstreamResponse(
                status=response.status_code,
                content_type=response.headers.get("content-type", "application/octet-stream"),
                _response=response,
            )
        finally:
            await response.aclose()


def _describe(exc: Exception) -> str:
    """An error's kind and short text for the log; never a request or response body."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text and len(text) < 200 else type(exc).__name__
