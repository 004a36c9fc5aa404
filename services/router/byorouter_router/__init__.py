"""Router: per chat request, resolve the connection's credentials, call its provider, stream back.

NATS only. `handlers.py` wires it onto the bus: the chat hot path (`chat.py`, on nats-py
directly), the model list (`catalog.py`) and the Connect page's key check
(`credential_check.py`) as request/reply endpoints. A chat request's model id names its provider
(`model_ids.py`); `fallback.py` decides what is tried next when it fails, `reply.py` streams the
answer back and `usage.py` strips and reports token usage. `providers/` speaks each upstream.
"""
