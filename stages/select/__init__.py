"""Pipeline step: select."""
