"""Pipeline step: dataset."""
