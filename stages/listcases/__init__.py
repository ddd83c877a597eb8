"""Pipeline step ``list-cases``: the cases under an images prefix, split into shards for parallel pods."""
