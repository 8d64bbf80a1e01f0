"""The import structure, read from the code: dependencies run one way.

pipeline.py (the DAG and the CLI) -> components/runner/ and components/kfp_components.py -> the
step packages -> components/lib/, and inside lib/ each layer imports only the layers that
components.lib.LAYERS allows it (its package docstring says the same). Every import counts,
function-level ones included; a name is read as the module it comes from.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import components.lib as lib_pkg
from components.lib import LAYERS

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"
LIB = COMPONENTS / "lib"
STEPS = ("prepare_data", "finetune_teacher", "pseudo_label", "distill_student", "evaluate", "export")


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def targets(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: `from components.lib.core import losses` reaches
    components.lib.core.losses, `from components.lib.core.losses import soft_loss` the module."""
    if (ROOT / Path(*module.split("."))).is_dir():
        return [f"{module}.{n}" for n in names] or [module]
    return [module]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["components", "lib"] else None


def lib_files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_lib_module_lives_in_a_layer():
    loose = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly in components/lib/: {loose}; put each in a layer package"
    layers = {p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert layers == set(LAYERS), f"layer packages {sorted(layers)} vs LAYERS {sorted(LAYERS)}"


def test_layers_form_no_circle():
    order: list[str] = []
    for _ in LAYERS:  # each round takes every layer whose allowed layers are already placed
        order += [name for name, deps in LAYERS.items() if name not in order and set(deps) <= set(order)]
    assert set(order) == set(LAYERS), f"circle among {sorted(set(LAYERS) - set(order))}"


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_package_docstring_states_the_rule(layer):
    doc = ast.get_docstring(ast.parse((LIB / layer / "__init__.py").read_text())) or ""
    found = re.search(r"May import: (.*)\.", doc)
    assert found, f"components/lib/{layer}/__init__.py: no 'May import: ...' line"
    stated = [] if found.group(1) == "nothing else in lib" else [x.strip() for x in found.group(1).split(",")]
    assert stated == list(LAYERS[layer]), f"components/lib/{layer}: docstring says {stated}, LAYERS {LAYERS[layer]}"


def test_lib_imports_follow_the_layers():
    bad = []
    for path in lib_files():
        rel = path.relative_to(LIB)
        own = rel.parts[0] if len(rel.parts) > 1 else None
        allowed = set(LAYERS.get(own, ())) | {own}
        for line, module, names in imports_of(path):
            if module == "kfp" or module.startswith("kfp."):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports kfp")
            for target in targets(module, names):
                if not target.startswith("components"):
                    continue
                layer = layer_of(target)
                if layer is None and target not in ("components", "components.lib"):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target} (above lib/)")
                elif layer is not None and own is not None and layer not in allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {layer} ({target})")
    assert not bad, "\n".join(bad)


def test_dependencies_run_one_way_above_lib():
    """Steps never import a runner, serving, kfp_components or pipeline.py; nothing below pipeline.py
    imports it; lib/ is below everything (test above)."""
    above_steps = ("components.runner", "components.serve", "components.kfp_components", "pipeline")
    bad = []
    for path in sorted(COMPONENTS.rglob("*.py")):
        rel = path.relative_to(COMPONENTS).parts
        for line, module, names in imports_of(path):
            for target in targets(module, names):
                where = f"{path.relative_to(ROOT)}:{line}: imports {target}"
                if target == "pipeline" or target.startswith("pipeline."):
                    bad.append(where)
                if rel[0] in STEPS and target.startswith(above_steps):
                    bad.append(where)
                if rel[0] in STEPS and target.startswith("components.") and target.split(".")[1] in STEPS \
                        and target.split(".")[1] != rel[0]:
                    bad.append(where + " (another step)")
                if rel[0] in ("runner", "serve") and target.startswith("components.") \
                        and target.split(".")[1] in STEPS:
                    bad.append(where + " (a step)")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module():
    bad = []
    for path in sorted([*COMPONENTS.rglob("*.py"), ROOT / "pipeline.py"]):
        for line, module, names in imports_of(path):
            if module.startswith("components") or module == "pipeline":
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: from {module} import {', '.join(private)}")
    assert not bad, "\n".join(bad)


def test_the_rule_is_written_where_a_reader_looks():
    assert "LAYERS" in (lib_pkg.__doc__ or "")
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Configuration")]
    for layer in LAYERS:
        assert re.search(rf"^ +{layer}/ ", layout, re.M), f"README.md's layout does not list lib/{layer}/"
