"""The chat hot path: one bus request in, the chosen provider's answer streamed back out.

Requests arrive on nats-py directly (`byorouter.router.chat`, queue group `router`). nats-py runs
a subscription's callback for one message at a time, so the callback only starts a task per
request and returns; a cancel message (`byorouter.router.cancel.<request_id>`) cancels that task,
which aborts the upstream HTTP call. The answer goes back to the caller's inbox through a
`BusReply` (`reply.py`).

Before the answer starts, a failing provider is retried and then fallen back from (`fallback`);
`start` goes out once, from the attempt that succeeded. Every request that got an answer
started publishes its token usage (`usage.py`) to the durable usage stream, off the answer's
path; one that broke midway too, marked partial. A provider that rejects a user's key gets it
marked as failing in keystore.

Just over 500 lines: chat, embeddings and Responses share this one path on purpose (one key
resolution, fallback, limits and usage for all three).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from byorouter_common import errors
from byorouter_common.bus import (
    Discovery,
    DurablePublisher,
    KeepAliveTicker,
    StreamWriter,
    parts_of,
    receive_rest,
)
from byorouter_common.contracts import HDR_REQUEST_ID, events
from byorouter_common.contracts.base import Endpoint
from byorouter_common.contracts.router import (
    CHAT,
    EMBEDDINGS,
    RESPONSES,
    ChatRequest,
    cancel_wildcard,
    request_id_of_cancel,
    upload_subject,
)
from byorouter_common.errors import ByoError
from byorouter_router.cooldowns import Cooldowns
from byorouter_router.credentials import ConnectionCredentials, CredentialCache
from byorouter_router.fallback import (
    APP_DEFAULT,
    KEY_REJECTED,
    AppDefaultTarget,
    Candidate,
    FallbackChain,
    RetryPolicy,
    fallback_candidates,
)
from byorouter_router.metrics import RequestRecord, count_in_flight, count_tokens
from byorouter_router.model_ids import choose_provider
from byorouter_router.providers.base import Operation, Provider, ProviderCredential
from byorouter_router.reply import BusReply
from byorouter_router.tracing import OFF, RequestTrace, provider_kind, traced_request
from byorouter_router.usage import ask_for_usage, encoded, usage_event, wants_usage
from byorouter_router.user_limits import Admit, admit, allows

log = logging.getLogger(__name__)

ENDPOINT_NAME: Final = CHAT.name
# Served like chat (same envelope, same reply stream) and passed through to the provider.
PASSTHROUGHS: Final[dict[Operation, Endpoint[Any, Any]]] = {
    "embeddings": EMBEDDINGS,
    "responses": RESPONSES,
}


def _app_default_target(connection: ConnectionCredentials) -> AppDefaultTarget | None:
    default = connection.app_default
    if default is None:
        return None
    return AppDefaultTarget(default.provider, default.preferred_model)


class ChatRouter:
    """Serves chat requests: one task per request, cancellable by request id."""

    def __init__(
        self,
        nc: NatsClient,
        credentials: CredentialCache,
        providers: dict[str, Provider],
        *,
        discovery: Discovery,
        keepalive: KeepAliveTicker,
        deadline_s: float,
        retry: RetryPolicy | None = None,
        admit: Admit | None = None,
        usage_replicas: int = 1,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self._nc = nc
        self._admit = admit
        self._credentials = credentials
        self._providers = providers
        self._discovery = discovery
        self._keepalive = keepalive
        self._deadline_s = deadline_s
        self._retry = retry or RetryPolicy()
        self._cooldowns = cooldowns
        self._chain: FallbackChain | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._requests: Subscription | None = None
        self._passthroughs: list[Subscription] = []
        self._cancels: Subscription | None = None
        self._stopping = False
        self._usage = DurablePublisher(nc, events.USAGE_STREAM, replicas=usage_replicas)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        # The loop's clock: the same one the request deadline is measured on.
        self._chain = FallbackChain(
            self._retry, clock=asyncio.get_running_loop().time, cooldowns=self._cooldowns
        )
        count_in_flight(lambda: len(self._tasks))
        await self._usage.start()
        self._discovery.add(ENDPOINT_NAME, CHAT.subject, CHAT.service, CHAT.description)
        self._requests = await self._nc.subscribe(
            CHAT.subject, queue=CHAT.service, cb=self.on_request
        )
        for operation, endpoint in PASSTHROUGHS.items():
            self._discovery.add(
                endpoint.name, endpoint.subject, endpoint.service, endpoint.description
            )
            self._passthroughs.append(
                await self._nc.subscribe(
                    endpoint.subject, queue=endpoint.service, cb=self._on_request_for(operation)
                )
            )
        # No queue group: only the copy holding the request acts on its cancel.
        self._cancels = await self._nc.subscribe(cancel_wildcard(), cb=self.on_cancel)

    async def stop(self, grace_s: float) -> None:
        """Take no new requests, let in-flight ones finish for `grace_s`, cancel the rest."""
        if self._requests is not None:
            # Drain, not unsubscribe: requests already delivered to us are still answered.
            with contextlib.suppress(nats.errors.Error):
                await self._requests.drain()  # type: ignore[no-untyped-call]
            self._requests = None
        for subscription in self._passthroughs:
            with contextlib.suppress(nats.errors.Error):
                await subscription.drain()  # type: ignore[no-untyped-call]
        self._passthroughs = []
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            self._stopping = True
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._cancels is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._cancels.unsubscribe()
            self._cancels = None
        await self._usage.close(grace_s)

    def _on_request_for(self, operation: Operation) -> Callable[[Msg], Awaitable[None]]:
        async def on_request(msg: Msg) -> None:
            await self.on_request(msg, operation)

        return on_request

    async def on_request(self, msg: Msg, operation: Operation = "chat") -> None:
        if not msg.reply:
            # Published without an inbox: there is nowhere to answer, so nothing to do.
            self._discovery.record(_endpoint_name(operation), 0, "no reply subject")
            return
        if parts_of(msg.headers) == 1:
            request_id, handling = self._accept(msg, msg.data, operation=operation)
        else:
            # Larger than one bus message: the rest arrives on a subject of this copy's own.
            request_id = (msg.headers or {}).get(HDR_REQUEST_ID) or msg.reply
            handling = self._accept_parts(msg, operation)
        task = asyncio.create_task(handling)
        self._tasks[request_id] = task
        task.add_done_callback(lambda t: self._forget(request_id, t))

    def _forget(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]

    async def on_cancel(self, msg: Msg) -> None:
        task = self._tasks.get(request_id_of_cancel(msg.subject))
        if task is not None:
            task.cancel()

    async def _accept_parts(self, msg: Msg, operation: Operation = "chat") -> None:
        parts = parts_of(msg.headers)
        writer = StreamWriter(self._nc, msg.reply)

        try:
            if parts < 1:
                raise errors.bad_request("Invalid chat request: malformed Byo-Parts header.")
            data = await receive_rest(
                self._nc,
                msg.data,
                parts,
                upload_subject(secrets.token_urlsafe(12)),
                writer,
                timeout_s=self._keepalive.interval_s * 2,
            )
        except ByoError as error:
            await writer.error(error)
            self._discovery.record(_endpoint_name(operation), 0, error.code)
            return
        await self._accept(msg, data, writer, operation=operation)[1]

    def _accept(
        self,
        msg: Msg,
        data: bytes,
        writer: StreamWriter | None = None,
        *,
        operation: Operation = "chat",
    ) -> tuple[str, Coroutine[Any, Any, None]]:
        """The request id and the coroutine that answers `msg`, parsing its JSON once.

        The contract model checks the envelope; the OpenAI body inside stays a plain dict.
        """
        try:
            request = ChatRequest.model_validate_json(data)
        except ValidationError:
            request_id = (msg.headers or {}).get(HDR_REQUEST_ID) or msg.reply
            return request_id, self._refuse(
                msg,
                errors.bad_request(
                    "Invalid chat request: expected request_id, app_id, connection_id and body."
                ),
                writer,
                operation,
            )
        return request.request_id, self._answer(
            msg,
            request.request_id,
            request.app_id,
            request.connection_id,
            request.body,
            writer,
            operation,
        )

    async def _refuse(
        self,
        msg: Msg,
        error: ByoError,
        writer: StreamWriter | None,
        operation: Operation = "chat",
    ) -> None:
        if msg.reply:
            await (writer or StreamWriter(self._nc, msg.reply)).error(error)
        self._discovery.record(_endpoint_name(operation), 0, error.code)

    async def _answer(
        self,
        msg: Msg,
        request_id: str,
        app_id: str,
        connection_id: str,
        body: dict[str, Any],
        writer: StreamWriter | None = None,
        operation: Operation = "chat",
    ) -> None:
        began = time.perf_counter_ns()
        record = RequestRecord(operation, request_id)
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        # A request that came in parts already has its writer (its `more` took a Byo-Seq).
        writer = writer or StreamWriter(self._nc, msg.reply)
        self._keepalive.add(writer)
        failure: str | None = None
        with traced_request(operation, msg.headers, request_id) as traced:
            try:
                connection = await self._credentials.resolve(app_id, connection_id)
                provider_name, model = choose_provider(body.get("model"), connection)
                requested = Candidate(provider_name, model)
                traced.asked(
                    app_id,
                    connection_id,
                    requested,
                    provider_kind(connection, requested),
                    body.get("stream") is True,
                )
                record.asked(requested)
                if provider_name == APP_DEFAULT and connection.app_default is not None:
                    if connection.app_default.provider not in self._providers:
                        raise ByoError(
                            404,
                            "provider_not_supported",
                            "The app's default provider is of a kind this router does not "
                            "support yet.",
                            param="model",
                        )
                elif provider_name not in self._providers:
                    raise ByoError(
                        404,
                        "provider_not_supported",
                        f"The {provider_name} provider is not supported yet.",
                        param="model",
                    )
                if connection.limits is not None and self._admit is not None:
                    await admit(self._admit, connection.limits, app_id, connection_id, requested)
                served, reply = await self._serve(
                    request_id,
                    connection,
                    requested,
                    body,
                    writer,
                    deadline,
                    operation,
                    traced,
                    record,
                )
                record.answered(served, reply.first_output)
                usage = self._publish_usage(request_id, connection, served, reply)
                traced.served(served, provider_kind(connection, served), usage)
            except ByoError as exc:
                failure = exc.code
                traced.failed(exc.code)
                await writer.error(exc)
            except asyncio.CancelledError:
                failure = "cancelled"
                if self._stopping:
                    # Tell the caller now rather than letting it wait out its idle timeout.
                    await writer.error(errors.unavailable("The router is shutting down."))
                # Otherwise the caller cancelled it: nobody is left to tell.
                raise
            except Exception:
                log.exception("chat request failed", extra={"request_id": request_id})
                failure = "internal_error"
                traced.failed(failure)
                await writer.error(errors.internal())
            finally:
                writer.closed = True
                self._keepalive.discard(writer)
                self._discovery.record(
                    _endpoint_name(operation), time.perf_counter_ns() - began, failure
                )
                record.finish(failure)

    async def _serve(
        self,
        request_id: str,
        connection: ConnectionCredentials,
        requested: Candidate,
        body: dict[str, Any],
        writer: StreamWriter,
        deadline: float,
        operation: Operation = "chat",
        traced: RequestTrace = OFF,
        record: RequestRecord | None = None,
    ) -> tuple[Candidate, BusReply]:
        """Answer from the requested provider or a fallback; who served it and its reply."""
        # Usage is always asked of a streaming upstream (it is what the user pays for); the
        # client only sees it if it asked too. (A Responses stream always ends with its usage.)
        strip_usage = operation == "chat" and body.get("stream") is True and not wants_usage(body)
        if strip_usage:
            ask_for_usage(body)
        if operation == "embeddings":
            # Vectors of another model are not comparable with the app's stored ones, so an
            # embeddings request never falls back to another provider's model (docs/decisions).
            candidates = [requested]
        else:
            candidates = fallback_candidates(
                requested,
                connection.targets,
                self._providers
                if operation == "chat"
                else [name for name, p in self._providers.items() if p.serves(operation)],
                fallback_to_default=connection.fallback_to_default,
                app_default=_app_default_target(connection),
            )
        if connection.limits is not None:
            # A fallback is the user's money too: only to models they allowed.
            candidates = [c for c in candidates if allows(connection.limits, c)]
        replies: list[BusReply] = []
        tried: list[Candidate] = []
        recorded = record or RequestRecord(operation, request_id)

        async def attempt(candidate: Candidate, attempts: int) -> None:
            reply = BusReply(
                writer, candidate.provider, candidate.model, attempts, strip_usage=strip_usage
            )
            replies.append(reply)
            tried.append(candidate)
            if attempts > 1:
                log.info(
                    "trying again",
                    extra={
                        "request_id": request_id,
                        "provider": candidate.provider,
                        "attempt": attempts,
                    },
                )
            with (
                traced.attempt(candidate, provider_kind(connection, candidate)),
                recorded.attempt(candidate),
            ):
                provider, credential = self._provider_for(connection, candidate)
                if operation == "chat":
                    await provider.chat(credential, candidate.model, body, reply, deadline)
                else:
                    await provider.passthrough(
                        operation, credential, candidate.model, body, reply, deadline
                    )

        async def observe(candidate: Candidate, error: ByoError) -> None:
            # The app default's key is the operator's: no connection's credential to mark.
            if candidate.provider == APP_DEFAULT:
                return
            if error.code == KEY_REJECTED and not connection.is_failing(candidate.provider):
                await self._publish_credential_status(
                    connection, candidate.provider, "failing", error.message
                )

        if self._chain is None:
            raise RuntimeError("chat router not started")
        try:
            served = await self._chain.run(
                candidates,
                deadline,
                attempt,
                started=lambda: bool(replies) and replies[-1].started,
                observe=observe,
                upstream_of=connection.upstream,
            )
        except BaseException:
            # Broke after it started (upstream cut, client gone): what was delivered is billed.
            if replies and replies[-1].started:
                self._publish_usage(request_id, connection, tried[-1], replies[-1], partial=True)
            raise
        if connection.is_failing(served.candidate.provider):
            await self._publish_credential_status(connection, served.candidate.provider, "ok")
        return served.candidate, replies[-1]

    def _provider_for(
        self, connection: ConnectionCredentials, candidate: Candidate
    ) -> tuple[Provider, ProviderCredential]:
        """The provider implementation and credential a candidate is called with.

        The app default is called by its kind (openai, anthropic, ...) with the app's key, yet
        answers, and is billed, as `default`.
        """
        if candidate.provider == APP_DEFAULT:
            default = connection.app_default
            if default is None:
                raise RuntimeError("app default candidate without an app default")
            return self._providers[default.provider], default
        if candidate.provider in connection.blocked:
            raise ByoError(
                403,
                "provider_not_allowed",
                f"This app no longer lets its users use {candidate.provider} providers, so the "
                f"user's {candidate.provider} key was not used. Ask for a model of another "
                "provider the user connected, or ask the user to connect one the app allows.",
                param="model",
            )
        return self._providers[candidate.provider], connection.providers[candidate.provider]

    def _publish_usage(
        self,
        request_id: str,
        connection: ConnectionCredentials,
        served: Candidate,
        reply: BusReply,
        *,
        partial: bool = False,
    ) -> events.UsageEvent:
        event = usage_event(
            request_id,
            connection,
            served,
            reply.reported_usage(),
            partial=partial,
            delivered=reply.delivered,
        )
        # The ack is awaited (and retried) in the background: the answer never waits for it.
        self._usage.publish(events.USAGE.subject, encoded(event), request_id)
        count_tokens(served.provider, event)
        return event

    async def _publish_credential_status(
        self,
        connection: ConnectionCredentials,
        provider: str,
        status: str,
        last_error: str | None = None,
    ) -> None:
        event = events.CredentialStatusEvent(
            connection_id=connection.connection_id,
            app_id=connection.app_id,
            provider=provider,
            status="failing" if status == "failing" else "ok",
            last_error=last_error,
        )
        await self._publish(events.CREDENTIAL_STATUS.subject, event.model_dump_json().encode())

    async def _publish(self, subject: str, data: bytes) -> None:
        # A report lost to a bus hiccup must not fail the answer the client already has.
        try:
            await self._nc.publish(subject, data)
        except (nats.errors.Error, OSError):
            log.warning("could not publish event", extra={"subject": subject})


def _endpoint_name(operation: Operation) -> str:
    endpoint = PASSTHROUGHS.get(operation)
    return endpoint.name if endpoint is not None else ENDPOINT_NAME
