"""Pipeline step: train."""
