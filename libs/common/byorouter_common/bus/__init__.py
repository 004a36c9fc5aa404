"""The bus: connecting, calling endpoints, streamed replies with cancellation, and discovery.

Plain request/reply endpoints are served by FastStream subscribers (`serve`) and called with
nats-py's request (`Bus.request`). The chat hot path uses nats-py directly on both ends: the
responder writes `Byo-Kind`/`Byo-Seq` messages to the caller's inbox (`StreamWriter`) and every
caller process shares one wildcard inbox subscription (`StreamMux`), so a streamed request costs
no SUB/UNSUB round trips.

One module per job; this package's names are the API services import:
  connection   connect options, a bare client, the FastStream broker
  calls        `Bus`: request/reply, events, opening a streamed reply
  failures     what a failed call means: 503, 413 or 504
  streams      the streaming protocol's two ends and the keep-alive ticker
  serving      endpoints and event subscribers, the error envelope on every failure
  discovery    the NATS micro protocol ($SRV.PING/INFO/STATS)
  uploads      requests larger than one bus message, in parts
  gather       scatter-gather: every answer to one question
  gather       scatter-gather: one question, every copy's answer (a tunnel's `.status`)
  durable      JetStream streams for reports that must not be lost (usage)
"""

from byorouter_common.bus.calls import Bus
from byorouter_common.bus.connection import connect, connect_options, make_broker
from byorouter_common.bus.discovery import Discovery
from byorouter_common.bus.durable import DurablePublisher, DurableRecorder, ensure_stream
from byorouter_common.bus.failures import bus_error
from byorouter_common.bus.gather import gather_replies
from byorouter_common.bus.serving import (
    consume_event,
    map_dependency_errors,
    serve,
    subscribe_event,
)
from byorouter_common.bus.streams import (
    CHUNK,
    DONE,
    ERROR,
    KEEPALIVE,
    RESULT,
    START,
    TERMINAL,
    KeepAliveTicker,
    ReplyStream,
    StreamMux,
    StreamWriter,
)
from byorouter_common.bus.uploads import HDR_PARTS, MORE, parts_of, receive_rest

__all__ = [
    "CHUNK",
    "DONE",
    "ERROR",
    "HDR_PARTS",
    "KEEPALIVE",
    "MORE",
    "RESULT",
    "START",
    "TERMINAL",
    "Bus",
    "Discovery",
    "DurablePublisher",
    "DurableRecorder",
    "KeepAliveTicker",
    "ReplyStream",
    "StreamMux",
    "StreamWriter",
    "bus_error",
    "connect",
    "connect_options",
    "consume_event",
    "ensure_stream",
    "gather_replies",
    "make_broker",
    "map_dependency_errors",
    "parts_of",
    "receive_rest",
    "serve",
    "subscribe_event",
]
