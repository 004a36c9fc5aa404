"""Shared contract, settings, bus helpers and telemetry for every BYORouter service."""
