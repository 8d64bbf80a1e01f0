"""The Parquet tables the steps exchange (labeled, transfer and pseudo-labeled, for both tasks):
schemas, validated reads, atomic writes, the pseudo tables' value checks and their sharded writing.

May import: core, settings.
"""
