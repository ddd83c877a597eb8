"""Pipeline step: plan."""
