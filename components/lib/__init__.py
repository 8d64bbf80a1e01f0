"""Shared code of the steps, grouped by layer; nothing here imports kfp.

Each subpackage may import only the layers listed below it in LAYERS (its docstring says the same;
tests/test_layers.py keeps code, docstrings and this table in step). Steps and runners sit above all
of them; nothing in lib/ imports a step, a runner or `components.serve`.
"""

LAYERS: dict[str, tuple[str, ...]] = {
    "core": (),
    "settings": ("core",),
    "contracts": ("core", "settings"),
    "sources": ("core", "settings", "contracts"),
    "models": ("core", "contracts"),
    "tracking": ("core", "settings", "sources"),
    "training": ("core", "settings", "contracts", "models", "tracking"),
    "evaluation": ("core", "settings"),
    "publish": ("core", "settings", "contracts", "models", "tracking", "evaluation"),
}
