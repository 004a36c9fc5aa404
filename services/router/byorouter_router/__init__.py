"""Router: per chat request, resolve the connection's credentials, call its provider, stream back.

NATS only. The chat hot path (`chat.py`) uses nats-py directly; the model list is a plain
request/reply endpoint.
"""
