"""The bus contract: every subject and its request/reply models, in one place.

Handlers and callers import subjects from here and never spell a subject string themselves.
Subjects are grouped by the service that serves them: `keystore` (a package, one module per
resource; the Connect flow is `keystore.connect_flow`), `router`, `tunnel`; `events` holds the
announcements anyone may listen to.
"""

from byorouter_common.contracts import events, keystore, router, tunnel
from byorouter_common.contracts.base import Contract, Empty, Endpoint, Event

# Streaming protocol headers (see byorouter_common.bus).
HDR_KIND = "Byo-Kind"
HDR_SEQ = "Byo-Seq"
HDR_REQUEST_ID = "Byo-Request-Id"
# Set on every piece but the last of a reply message too large for one bus message.
HDR_MORE = "Byo-More"

__all__ = [
    "HDR_KIND",
    "HDR_MORE",
    "HDR_REQUEST_ID",
    "HDR_SEQ",
    "Contract",
    "Empty",
    "Endpoint",
    "Event",
    "events",
    "keystore",
    "router",
    "tunnel",
]
