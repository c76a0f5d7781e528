"""Secrets and settings: validation at load, redaction of every outgoing text, tokens at rest."""
