"""Keystore's own metrics; its bus requests by endpoint and outcome are counted where every
service serves them (`byorouter_common.bus.serving`)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

from byorouter_common.metrics import NAMESPACE, Children

USAGE_RECORDED: Final = Counter(
    "keystore_usage_events_recorded",
    "Usage reports recorded for the first time (a report delivered again adds nothing).",
    namespace=NAMESPACE,
)
WEBHOOK_DELIVERIES: Final = Children(
    Counter(
        "keystore_webhook_deliveries",
        "Webhook delivery attempts, by outcome: delivered, retry (due again later) or failed "
        "(given up).",
        ["outcome"],
        namespace=NAMESPACE,
    )
)
