"""Integrations with HTTP clients."""
