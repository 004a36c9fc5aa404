"""Tunnel: accepts `byorouter-tunnel` clients over WebSocket and bridges NATS requests to them."""
