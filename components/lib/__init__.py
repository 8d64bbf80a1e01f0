"""Shared code of the steps. Nothing here imports kfp."""
