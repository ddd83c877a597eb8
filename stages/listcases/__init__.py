"""Pipeline step: listcases."""
