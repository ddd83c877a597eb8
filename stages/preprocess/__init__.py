"""Pipeline step: preprocess."""
