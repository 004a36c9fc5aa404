"""Who may do what on the bus: each NATS user's permissions, derived from the contract.

Every service connects as its own user (named after the service); operators and the `byorouter`
CLI connect as `admin`. A user may publish only to the endpoints it calls and subscribe only to
the subjects it serves, so the one subject whose reply holds decrypted provider keys,
`byorouter.keystore.credentials.resolve`, is reachable by `router` alone.

Replies travel on inboxes, and whoever may subscribe to an inbox reads the reply, keys included.
So each user subscribes only to inboxes under its own prefix (`_INBOX.<user>.>`; the connection
sets it with `inbox_prefix`), while every service may publish to any inbox to answer whoever
asked. `render_config` writes the nats-server configuration that enforces all this.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from byorouter_common.contracts import events
from byorouter_common.contracts import gateway as gw
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.contracts import tunnel as tn
from byorouter_common.contracts.base import (
    DurableConsumer,
    DurableStream,
    Endpoint,
    Event,
    KeyValueBucket,
    service_wildcard,
)
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.contracts.keystore import headless as hl
from byorouter_common.contracts.keystore import provider_policy as pp

ADMIN: Final = "admin"
SERVICE_USERS: Final = ("keystore", "router", "gateway", "connect", "tunnel")
USERS: Final = (*SERVICE_USERS, ADMIN)

INBOX_ROOT: Final = "_INBOX"
# The NATS micro protocol ($SRV.PING/INFO/STATS): everyone answers it and everyone may ask.
DISCOVERY: Final = "$SRV.>"
# Every service may listen to every event; none carries a secret.
EVENTS_ROOT: Final = "byorouter.events"

# Replies to these carry decrypted provider keys; every user but their readers is denied them
# outright, so widening someone's allow list by mistake still cannot reach them.
SECRET_ENDPOINTS: Final[tuple[Endpoint[Any, Any], ...]] = (ks.CREDENTIALS_RESOLVE,)
SECRET_READERS: Final = frozenset({"router"})

# The endpoints each service calls. Keep this to calls the code makes today: a new call is a
# one-line change here, and a missing one fails loudly as a permissions violation in the logs.
# The app's server-to-server half of the Connect flow goes through the gateway.
_GATEWAY_FLOW: Final = (cn.CODE_EXCHANGE, cn.MANAGE_LINK_CREATE)
CALLS: Final[Mapping[str, tuple[Endpoint[Any, Any], ...]]] = {
    "keystore": (),
    # The user's request and token caps, counted in keystore so every router copy shares them.
    "router": (ks.CREDENTIALS_RESOLVE, ks.user_limits.LIMITS_ADMIT),
    "gateway": (
        ks.APP_AUTHENTICATE,
        ks.CONNECTION_GET,
        ks.CONNECTION_DELETE,
        ks.USAGE_GET,
        rt.CHAT,
        rt.MODELS,
        rt.EMBEDDINGS,
        rt.RESPONSES,
        *_GATEWAY_FLOW,
        pp.PAR_CREATE,
        ks.TUNNEL_REGISTER,
        ks.TUNNEL_GET,
        ks.TUNNEL_ROTATE,
        ks.TUNNEL_REVOKE,
        # Headless apps: their server stores keys and tests them (keystore refuses other apps).
        *hl.GATEWAY_ENDPOINTS,
        rt.PROVIDER_TEST,
    ),
    # Connect changes connections only through a consent or a live manage session. (It may
    # still read one, masked: tests/security uses that as its example of an allowed call.)
    "connect": (
        *(e for e in cn.KEYSTORE_ENDPOINTS if e not in _GATEWAY_FLOW),
        rt.PROVIDER_TEST,
        ks.CONNECTION_GET,
        # A pushed authorization request (RFC 9126) the app's server made through the gateway.
        pp.PAR_OPEN,
        # The Connect page's tunnel option: set up, show, rotate and revoke the user's tunnel.
        ks.TUNNEL_REGISTER,
        ks.TUNNEL_GET,
        ks.TUNNEL_ROTATE,
        ks.TUNNEL_REVOKE,
    ),
    # The tunnel service checks its clients and reports them; nothing it calls returns a key.
    "tunnel": (ks.TUNNEL_AUTHENTICATE, ks.TUNNEL_SESSION_REFRESH, ks.TUNNEL_PRESENCE),
}
# Subjects besides contract calls and events: the gateway tells the router a client went away
# and asks tunnels who is connected; the router calls tunnels (requests, their cancels and the
# parts of a large request). (The router's usage and rejected-key reports are events: see
# `ANNOUNCES`.)
NOTIFIES: Final[Mapping[str, tuple[str, ...]]] = {
    "gateway": (rt.cancel_wildcard(), rt.upload_wildcard(), tn.status_wildcard()),
    "connect": (tn.status_wildcard(),),
    "router": (tn.http_wildcard(), tn.cancel_wildcard(), tn.upload_wildcard()),
}
# Who may announce what. Only keystore knows when apps, keys and connections change: a forged
# `app_key.revoked` from anyone else would lock an app out of every gateway. Only the router
# sees usage and rejected keys.
ANNOUNCES: Final[Mapping[str, tuple[Event[Any], ...]]] = {
    "keystore": (
        events.APP_KEY_REVOKED,
        events.CONNECTION_CHANGED,
        events.APP_DEFAULT_CHANGED,
        events.APP_POLICY_CHANGED,
        events.APP_LIMITS_CHANGED,
        events.KEYRING_ROTATED,
        events.TUNNEL_CHANGED,
    ),
    "router": (events.USAGE, events.CREDENTIAL_STATUS),
}

# JetStream, by the API subjects each user needs and no more: the router makes sure the usage
# stream exists (and publishes to it through `ANNOUNCES`); keystore owns it (puts its limits
# back) and pulls from its one consumer and acks; the gateway keeps its rate limits in one
# key-value bucket (`BUCKETS`). Nobody else may touch JetStream at all.
JS_API: Final = "$JS.API"
STREAMS_ENSURED: Final[Mapping[str, tuple[DurableStream, ...]]] = {
    "router": (events.USAGE_STREAM,),
}
STREAMS_OWNED: Final[Mapping[str, tuple[DurableStream, ...]]] = {
    "keystore": (events.USAGE_STREAM,),
}
CONSUMES: Final[Mapping[str, tuple[DurableConsumer, ...]]] = {
    "keystore": (events.USAGE_RECORDER,),
}
# Key-value buckets a user creates if missing, reads (by key) and writes; nobody may delete or
# purge one. Gateway copies share their rate limits in theirs (decision 0021).
BUCKETS: Final[Mapping[str, tuple[KeyValueBucket, ...]]] = {
    "gateway": (gw.RATE_LIMITS,),
}


def jetstream_subjects(user: str) -> tuple[str, ...]:
    """The JetStream API and ack subjects `user` may publish to."""
    subjects: list[str] = []
    for stream in STREAMS_ENSURED.get(user, ()):
        subjects += [f"{JS_API}.STREAM.INFO.{stream.name}", f"{JS_API}.STREAM.CREATE.{stream.name}"]
    for stream in STREAMS_OWNED.get(user, ()):
        subjects += [
            f"{JS_API}.STREAM.INFO.{stream.name}",
            f"{JS_API}.STREAM.CREATE.{stream.name}",
            f"{JS_API}.STREAM.UPDATE.{stream.name}",
        ]
    for consumer in CONSUMES.get(user, ()):
        at = f"{consumer.stream.name}.{consumer.name}"
        subjects += [
            f"{JS_API}.CONSUMER.INFO.{at}",
            # nats-py names the filter subject after the consumer: CREATE.<stream>.<name>.<filter>
            f"{JS_API}.CONSUMER.CREATE.{at}.>",
            f"{JS_API}.CONSUMER.MSG.NEXT.{at}",
            f"$JS.ACK.{at}.>",
        ]
    for bucket in BUCKETS.get(user, ()):
        subjects += [
            f"{JS_API}.STREAM.INFO.{bucket.stream}",
            f"{JS_API}.STREAM.CREATE.{bucket.stream}",
            # A read by key: `DIRECT.GET.<stream>.$KV.<bucket>.<key>`, or the stream's own get.
            f"{JS_API}.DIRECT.GET.{bucket.stream}.>",
            f"{JS_API}.STREAM.MSG.GET.{bucket.stream}",
            bucket.subjects,
        ]
    return tuple(dict.fromkeys(subjects))


@dataclass(frozen=True)
class Permissions:
    """What one NATS user may publish and subscribe to (deny wins over allow)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()


def inbox_prefix(user: str) -> str:
    """The inbox prefix a connection as `user` must use: the only inboxes it may read."""
    return f"{INBOX_ROOT}.{user}"


def _deny_secrets(user: str) -> tuple[str, ...]:
    if user in SECRET_READERS:
        return ()
    return tuple(endpoint.subject for endpoint in SECRET_ENDPOINTS)


def service_permissions(service: str) -> Permissions:
    """A service calls what `CALLS` lists, serves `byorouter.<service>.>`, answers any inbox."""
    if service not in SERVICE_USERS:
        raise ValueError(f"unknown service: {service}")
    publish = [endpoint.subject for endpoint in CALLS[service]]
    publish += NOTIFIES.get(service, ())
    publish += [event.subject for event in ANNOUNCES.get(service, ())]
    publish += jetstream_subjects(service)
    publish += [f"{INBOX_ROOT}.>", DISCOVERY]
    subscribe = (
        service_wildcard(service),
        f"{EVENTS_ROOT}.>",
        f"{inbox_prefix(service)}.>",
        DISCOVERY,
    )
    return Permissions(tuple(publish), subscribe, _deny_secrets(service))


def admin_permissions() -> Permissions:
    """Operators may call every keystore and router endpoint except the secret ones.

    Admin serves nothing, so it answers no inbox; it may listen to events and discovery, and
    ask any tunnel's `.status` (who is connected: metadata, never a request).
    """
    secret = {endpoint.subject for endpoint in SECRET_ENDPOINTS}
    publish = [e.subject for e in (*ks.ENDPOINTS, *rt.ENDPOINTS) if e.subject not in secret]
    publish += [rt.cancel_wildcard(), tn.status_wildcard(), DISCOVERY]
    subscribe = (f"{EVENTS_ROOT}.>", f"{inbox_prefix(ADMIN)}.>", DISCOVERY)
    return Permissions(tuple(publish), subscribe, _deny_secrets(ADMIN))


def permissions(user: str) -> Permissions:
    return admin_permissions() if user == ADMIN else service_permissions(user)


def password_env_var(user: str) -> str:
    """The environment variable a nats-server reads `user`'s password from (docker compose)."""
    return f"NATS_{user.upper()}_PASSWORD"


def _subjects(subjects: tuple[str, ...]) -> str:
    # Quoted: `$SRV.>` unquoted would be read as a variable reference.
    return "[" + ", ".join(json.dumps(subject) for subject in subjects) + "]"


def _render(password_values: Mapping[str, str], header: str) -> str:
    lines = [header, "authorization {", "  users = ["]
    for user in USERS:
        granted = permissions(user)
        publish = [f"        allow: {_subjects(granted.publish)}"]
        if granted.publish_deny:
            publish.append(f"        deny: {_subjects(granted.publish_deny)}")
        lines += [
            "    {",
            f"      user: {json.dumps(user)}",
            f"      password: {password_values[user]}",
            "      permissions {",
            "        publish {",
            *("  " + line for line in publish),
            "        }",
            "        subscribe {",
            f"          allow: {_subjects(granted.subscribe)}",
            "        }",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def render_config(passwords: Mapping[str, str]) -> str:
    """A nats-server config with every user, its password inline and its permissions.

    It holds secrets: write it readable by its owner only.
    """
    missing = [user for user in USERS if not passwords.get(user)]
    if missing:
        raise ValueError(f"no password for: {', '.join(missing)}")
    values = {user: json.dumps(passwords[user]) for user in USERS}
    return _render(values, "# BYORouter's NATS users and what each may do (contains passwords).")


# Room for every stream on the deployed nats-server's disk (the usage stream takes up to 1 GiB).
# Its store directory is a command-line flag, not set here: nats-server refuses a store_dir
# given both ways, and the test and dev servers pass their own.
JETSTREAM_MAX_FILE_STORE: Final = "10GB"


def render_env_config() -> str:
    """The same config with `$NATS_<USER>_PASSWORD` references nats-server reads from its env.

    This is `deploy/nats.conf`: it holds no secret, so it can be committed.
    """
    values = {user: "$" + password_env_var(user) for user in USERS}
    return _render(
        values,
        "# BYORouter's NATS users and what each may do; passwords come from the environment.\n"
        "# Generated from the bus contract: python -m byorouter_common.nats_permissions\n"
        "\n"
        "# Usage waits on disk until keystore records it (docs/decisions/0010-durable-usage.md).\n"
        "# The store directory comes from the command line (docker-compose.yml: -sd).\n"
        f"jetstream {{\n  max_file_store: {JETSTREAM_MAX_FILE_STORE}\n}}\n",
    )


if __name__ == "__main__":
    sys.stdout.write(render_env_config())
