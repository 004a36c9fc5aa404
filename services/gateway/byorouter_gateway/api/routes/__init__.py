"""One FastAPI router per resource: chat, models, connections, connect sessions, token exchange.

The health probes are the shared ones from `byorouter_common.health`.
"""
