"""The typed pipeline configuration (pydantic) and the step command line built on it
(`python -m components.<step> --config F --set k=v`, one-line errors).

May import: core.
"""
