"""MLflow at the edges (one nested run per step, model references, the tracking URI) and the cache
salts of local runs.

May import: core, settings, sources.
"""
