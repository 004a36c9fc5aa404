"""Providers: how the router talks to each kind of upstream, behind one protocol (`base.py`).

`openai_compat.py` (OpenAI and self-hosted servers), `openrouter.py` and `anthropic/` each adapt
one upstream; what they all share is public in one place each: `http.py` (the chat POST and the
model-list GET), `sse.py` (reading an event stream) and `errors.py` (an upstream's failures as
the error envelope).
"""
