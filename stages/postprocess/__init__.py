"""Pipeline step: postprocess."""
