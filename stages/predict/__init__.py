"""Pipeline step: predict."""
