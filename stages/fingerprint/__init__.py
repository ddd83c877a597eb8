"""Pipeline step: fingerprint."""
