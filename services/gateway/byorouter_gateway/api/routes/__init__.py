"""One FastAPI router per resource: chat completions, models, connections, health."""
