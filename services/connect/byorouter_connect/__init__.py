"""Connect: the browser-facing Connect UI and authorization flow (HTTP :8080 + NATS)."""
