"""Logging now; tracing and metrics join here."""
