"""Pipeline step: evaluate."""
