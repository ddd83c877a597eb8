"""Pipeline step: ensemble."""
