"""distilflow pipeline steps; each module has run(cfg) and a `python -m` CLI."""
