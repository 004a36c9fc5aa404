"""Apps' webhooks: registration, the outbox their events are written to, and the sender.

An event is a `webhook_deliveries` row per webhook of the app, added in the transaction of the
change it reports (`enqueue_event`), so it exists exactly when the change does. Every keystore
copy runs a `WebhookSender`: it claims due rows with `FOR UPDATE SKIP LOCKED` (two copies never
send the same row at once), posts them signed per the Standard Webhooks spec, and marks them
delivered or due again later. Nothing here is on the chat path. Decision 0015.

Just over 500 lines since the sender loads its HTTP client at the first delivery (keystore
starts without aiohttp); the sender is the next to move out, into its own module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook as Signer

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_common.public_addresses import is_forbidden_host
from byorouter_keystore.crypto import (
    KeyringStore,
    SealedSecret,
    UnknownKekVersion,
    rewrap,
    seal,
    unseal,
)
from byorouter_keystore.metrics import WEBHOOK_DELIVERIES
from byorouter_keystore.settings import KeystoreSettings
from byorouter_keystore.shared import BASE_URL_RULE, Handlers, audit, get_app, is_plain_http_url
from byorouter_keystore.tables import Connection, Credential, Webhook, WebhookDelivery

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

# What the sealed secret is bound to besides the webhook id (`crypto`'s "provider" slot).
_SEAL_PURPOSE = "webhook"
_MAX_ERROR = 500
_USER_AGENT = "byorouter-webhooks/0.1"


def webhook_not_found() -> errors.ByoError:
    return errors.not_found("Webhook not found.", code="webhook_not_found")


def _new_webhook_id() -> str:
    return "wh_" + secrets.token_hex(12)


def _new_message_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def _new_secret() -> str:
    # 32 random bytes, base64, with the prefix the Standard Webhooks libraries expect.
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """The same rules as a provider's base URL: plain http(s), and public unless allowed."""
    if not is_plain_http_url(url):
        raise errors.bad_request(f"url {BASE_URL_RULE}.", param="url")
    host = urlsplit(url).hostname or ""
    if not allow_private and (is_forbidden_host(host) or host.lower() == "localhost"):
        raise errors.bad_request(
            "url points to a private or local address, which this keystore is configured "
            "not to call.",
            code="webhook_url_not_allowed",
            param="url",
        )


# --- registration -------------------------------------------------------------------------------


async def add_webhook(
    session: AsyncSession, keyring: KeyringStore, client_id: str, url: str, *, allow_private: bool
) -> tuple[Webhook, str]:
    """A new webhook of the app and its signing secret (returned once, stored sealed)."""
    url = url.strip()
    check_webhook_url(url, allow_private=allow_private)
    app = await get_app(session, client_id)
    webhook_id, secret = _new_webhook_id(), _new_secret()
    sealed = seal(keyring.current, secret.encode(), webhook_id, _SEAL_PURPOSE)
    webhook = Webhook(
        id=webhook_id,
        app_id=app.id,
        url=url,
        kek_version=sealed.kek_version,
        wrapped_dek=sealed.wrapped_dek,
        ciphertext=sealed.ciphertext,
    )
    session.add(webhook)
    await session.flush()
    audit(session, "webhook.added", app.id, webhook_id)
    return webhook, secret


async def list_webhooks(session: AsyncSession, client_id: str) -> ks.WebhookList:
    app = await get_app(session, client_id)
    hooks = list(
        await session.scalars(
            select(Webhook).where(Webhook.app_id == app.id).order_by(Webhook.created_at)
        )
    )
    counts: dict[tuple[str, str], int] = {}
    last: dict[str, datetime] = {}
    if hooks:
        ids = [h.id for h in hooks]
        rows = await session.execute(
            select(
                WebhookDelivery.webhook_id,
                WebhookDelivery.status,
                func.count(),
                func.max(WebhookDelivery.delivered_at),
            )
            .where(WebhookDelivery.webhook_id.in_(ids))
            .group_by(WebhookDelivery.webhook_id, WebhookDelivery.status)
        )
        for webhook_id, status, count, delivered_at in rows:
            counts[(webhook_id, status)] = count
            if delivered_at is not None:
                last[webhook_id] = delivered_at
    return ks.WebhookList(
        app_id=app.id,
        webhooks=[
            ks.WebhookInfo(
                webhook_id=h.id,
                url=h.url,
                created_at=h.created_at,
                pending=counts.get((h.id, "pending"), 0),
                failed=counts.get((h.id, "failed"), 0),
                last_delivered_at=last.get(h.id),
            )
            for h in hooks
        ],
    )


async def remove_webhook(session: AsyncSession, webhook_id: str) -> None:
    webhook = await session.get(Webhook, webhook_id)
    if webhook is None:
        raise webhook_not_found()
    await session.delete(webhook)
    audit(session, "webhook.removed", webhook.app_id, webhook_id)


# --- key rotation: the signing secrets are sealed like provider keys -------------------------


async def webhook_kek_versions_in_use(session: AsyncSession) -> dict[int, int]:
    """How many webhook secrets each KEK version wraps: prune must keep every one of them."""
    rows = await session.execute(
        select(Webhook.kek_version, func.count()).group_by(Webhook.kek_version)
    )
    return dict(rows.tuples().all())


async def rewrap_webhook_secrets(
    sessions: async_sessionmaker[AsyncSession], keyring: KeyringStore, batch_size: int
) -> tuple[int, int]:
    """Move webhook secrets' data keys onto the active KEK; (re-wrapped, undecryptable)."""
    rewrapped = failed = 0
    last_id = ""
    while True:
        async with sessions.begin() as session:
            rows = (
                await session.execute(
                    select(Webhook.id, Webhook.kek_version, Webhook.wrapped_dek)
                    .where(Webhook.kek_version != keyring.current.active, Webhook.id > last_id)
                    .order_by(Webhook.id)
                    .limit(batch_size)
                )
            ).all()
            if not rows:
                return rewrapped, failed
            last_id = rows[-1].id
            for row in rows:
                sealed = SealedSecret(row.kek_version, row.wrapped_dek, b"")
                try:
                    new_wrapped = rewrap(keyring.current, sealed, row.id, _SEAL_PURPOSE)
                except (UnknownKekVersion, ByoError):
                    failed += 1
                    continue
                await session.execute(
                    update(Webhook)
                    .where(Webhook.id == row.id, Webhook.kek_version == row.kek_version)
                    .values(kek_version=keyring.current.active, wrapped_dek=new_wrapped)
                )
                rewrapped += 1


# --- the outbox ---------------------------------------------------------------------------------


async def enqueue_event(
    session: AsyncSession, app_id: str, event_type: ks.WebhookEventType, data: dict[str, Any]
) -> int:
    """Add the event for each of the app's webhooks in the caller's transaction; how many."""
    webhook_ids = list(await session.scalars(select(Webhook.id).where(Webhook.app_id == app_id)))
    payload = {
        "type": event_type,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    for webhook_id in webhook_ids:
        session.add(
            WebhookDelivery(
                id=_new_message_id(), webhook_id=webhook_id, event_type=event_type, payload=payload
            )
        )
    return len(webhook_ids)


async def enqueue_connection_event(
    session: AsyncSession, app_id: str, connection_id: str, *, disconnected: bool
) -> None:
    event: ks.WebhookEventType = "connection.disconnected" if disconnected else "connection.updated"
    await enqueue_event(session, app_id, event, {"connection_id": connection_id})


async def enqueue_credential_transition(
    session: AsyncSession,
    app_id: str,
    connection_id: str,
    provider: str,
    status: str,
    last_error: str | None,
) -> None:
    """`credential.failing` once when a key starts failing, `credential.recovered` once when it
    works again: reports that repeat the stored status add nothing (the debounce)."""
    current = await session.scalar(
        select(Credential.status)
        .join(Connection, Connection.id == Credential.connection_id)
        .where(
            Connection.app_id == app_id,
            Credential.connection_id == connection_id,
            Credential.provider == provider,
        )
        .with_for_update(of=Credential)
    )
    if current is None or current == status:
        return
    data: dict[str, Any] = {"connection_id": connection_id, "provider": provider}
    if status == "failing":
        data["error"] = last_error
        await enqueue_event(session, app_id, "credential.failing", data)
    else:
        await enqueue_event(session, app_id, "credential.recovered", data)


# --- the sender ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claimed:
    id: str
    webhook_id: str
    url: str
    secret: str
    body: str
    attempts: int


def retry_delay_s(schedule: tuple[float, ...], attempts: int) -> float | None:
    """Seconds until the next try after `attempts` failed ones (+-20%); None: give up."""
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.8, 1.2)


class WebhookSender:
    """Posts due deliveries, `concurrency` at a time, until stopped."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: KeyringStore,
        settings: KeystoreSettings,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    def _http_session(self) -> aiohttp.ClientSession:
        """The HTTP client, made at the first delivery: aiohttp (8 MiB resident) is loaded only
        by a keystore that has webhooks to send."""
        if self._http is None:
            import aiohttp
            from aiohttp.abc import AbstractResolver
            from aiohttp.resolver import DefaultResolver

            from byorouter_common.public_resolver import PublicOnlyResolver

            resolver: AbstractResolver = DefaultResolver()
            if not self._settings.allow_private_upstreams:
                resolver = PublicOnlyResolver(resolver)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._settings.webhook_concurrency, resolver=resolver
                ),
                timeout=aiohttp.ClientTimeout(total=self._settings.webhook_timeout_s),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": _USER_AGENT},
                trust_env=False,
            )
        return self._http

    async def stop(self) -> None:
        """Claim nothing more and let deliveries in flight finish (within one timeout), so
        their outcomes are recorded; one cut short is sent again once its lease runs out."""
        self._stopping.set()
        if self._task is not None:
            # On a timeout wait_for cancels it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, self._settings.webhook_timeout_s + 1)
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                claimed = await self._claim()
            except Exception:
                log.warning("webhook outbox unavailable", exc_info=True)
                claimed = []
            if claimed:
                await asyncio.gather(*(self._deliver(c) for c in claimed))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), self._settings.webhook_poll_interval_s
                )

    async def _claim(self) -> list[_Claimed]:
        """Due rows, locked against other copies and leased: if this copy dies mid-send, the
        row is due again once the lease runs out (at least once, never lost)."""
        lease = timedelta(seconds=self._settings.webhook_timeout_s + 30)
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(
                    select(WebhookDelivery, Webhook)
                    .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= func.now(),
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(self._settings.webhook_concurrency)
                    .with_for_update(of=WebhookDelivery, skip_locked=True)
                )
            ).all()
            claimed = []
            for delivery, webhook in rows:
                delivery.next_attempt_at = func.now() + lease
                secret = self._open_secret(webhook)
                if secret is None:
                    # Nothing could sign it, now or later: fail it rather than block the rest.
                    delivery.status = "failed"
                    delivery.last_error = "The webhook's signing secret cannot be decrypted."
                    continue
                claimed.append(
                    _Claimed(
                        id=delivery.id,
                        webhook_id=webhook.id,
                        url=webhook.url,
                        secret=secret,
                        body=orjson.dumps(delivery.payload).decode(),
                        attempts=delivery.attempts,
                    )
                )
        return claimed

    def _open_secret(self, webhook: Webhook) -> str | None:
        sealed = SealedSecret(webhook.kek_version, webhook.wrapped_dek, webhook.ciphertext)
        try:
            try:
                return unseal(self._keyring.current, sealed, webhook.id, _SEAL_PURPOSE).decode()
            except UnknownKekVersion:
                # Another copy rotated and we have not heard yet: read the file and retry once.
                self._keyring.reload()
                return unseal(self._keyring.current, sealed, webhook.id, _SEAL_PURPOSE).decode()
        except (UnknownKekVersion, ByoError):
            log.warning(
                "webhook signing secret cannot be decrypted", extra={"webhook_id": webhook.id}
            )
            return None

    async def _deliver(self, claimed: _Claimed) -> None:
        error = await self._post(claimed)
        attempts = claimed.attempts + 1
        values: dict[str, Any] = {"attempts": attempts}
        if error is None:
            values.update(status="delivered", delivered_at=func.now(), last_error=None)
            WEBHOOK_DELIVERIES("delivered").inc()
        else:
            delay = retry_delay_s(self._settings.webhook_retry_schedule_s, attempts)
            values["last_error"] = error[:_MAX_ERROR]
            if delay is None:
                values["status"] = "failed"
                WEBHOOK_DELIVERIES("failed").inc()
            else:
                values["next_attempt_at"] = func.now() + timedelta(seconds=delay)
                WEBHOOK_DELIVERIES("retry").inc()
            # The webhook's id, never its URL: a URL may carry the receiver's own token.
            log.info(
                "webhook delivery failed",
                extra={"webhook_id": claimed.webhook_id, "attempt": attempts, "error": error},
            )
        try:
            async with self._sessions.begin() as session:
                await session.execute(
                    update(WebhookDelivery).where(WebhookDelivery.id == claimed.id).values(**values)
                )
        except Exception:
            log.warning("webhook delivery outcome not recorded", exc_info=True)

    async def _post(self, claimed: _Claimed) -> str | None:
        """None when the receiver took it (2xx); otherwise what went wrong, in a few words."""
        import aiohttp  # loaded by _http_session

        http = self._http_session()
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": claimed.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Signer(claimed.secret).sign(claimed.id, now, claimed.body),
        }
        try:
            # No redirects: a public URL must not bounce the request somewhere private.
            async with http.post(
                claimed.url, data=claimed.body.encode(), headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return "timed out"
        except (aiohttp.ClientError, OSError) as exc:
            return f"unreachable ({type(exc).__name__})"


# --- bus handlers -------------------------------------------------------------------------------


class WebhookHandlers(Handlers):
    """The operator's webhook commands, and this copy's sender."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.WEBHOOK_ADD, self.webhook_add, discovery=discovery)
        serve(broker, ks.WEBHOOK_LIST, self.webhook_list, discovery=discovery)
        serve(broker, ks.WEBHOOK_REMOVE, self.webhook_remove, discovery=discovery)
        self.runtime.on_started(self._start_sending)

    async def _start_sending(self) -> None:
        sender = WebhookSender(self.sessions, self.keyring, self.runtime.settings)
        sender.start()
        # Registered after the engine's disposal hook, so it stops before the engine goes.
        self.runtime.on_stop(sender.stop)

    async def webhook_add(self, request: ks.WebhookAdd) -> ks.WebhookCreated:
        async with self.sessions.begin() as session:
            webhook, secret = await add_webhook(
                session,
                self.keyring,
                request.client_id,
                request.url,
                allow_private=self.runtime.settings.allow_private_upstreams,
            )
        return ks.WebhookCreated(
            webhook_id=webhook.id, app_id=webhook.app_id, url=webhook.url, secret=SecretStr(secret)
        )

    async def webhook_list(self, request: ks.WebhookListRequest) -> ks.WebhookList:
        async with self.sessions.begin() as session:
            return await list_webhooks(session, request.client_id)

    async def webhook_remove(self, request: ks.WebhookRemove) -> ks.WebhookRemoved:
        async with self.sessions.begin() as session:
            await remove_webhook(session, request.webhook_id)
        return ks.WebhookRemoved(webhook_id=request.webhook_id)
