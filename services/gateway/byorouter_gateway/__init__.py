"""The gateway: BYORouter's OpenAI-compatible HTTP front door (:4000) onto the bus.

It authenticates apps by their API key (cached, dropped at once on revocation), validates the
request just enough to route it, and relays the router's reply stream to the client as JSON or
server-sent events, cancelling the upstream call when the client goes away.
"""
