"""Providers: how the router talks to each kind of upstream (OpenAI-compatible today)."""
