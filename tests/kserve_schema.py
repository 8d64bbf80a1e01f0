"""Strict JSON Schemas for KServe objects, from the `kserve` PyPI package's OpenAPI models.

KServe's CRDs are not on PyPI; its SDK is, and the SDK's model classes (kserve/models/*.py) are
generated from KServe's published OpenAPI: `openapi_types` (attribute -> type), `attribute_map`
(attribute -> JSON key) and a ValueError for each required field. This module turns them, and the
kubernetes client's models for the core types they reference (V1Container, V1ResourceRequirements,
...), into one JSON Schema whose objects are closed (additionalProperties: false): a misspelt or
misplaced field fails, as `kubernetes-validate --strict` fails for core kinds.

The SDK files are parsed with `ast`, never imported: kserve's own pins (pandas<3, starlette>=1.3)
fight both venvs, so the Makefile installs it --no-deps into .venv-serve/kserve-sdk.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
_PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
               "bool": {"type": "boolean"}, "object": {}, "datetime": {"type": "string"}, "date": {"type": "string"}}


def sdk_models_dir() -> Path:
    venv = Path(os.environ.get("DISTILFLOW_SERVE_VENV") or ROOT / ".venv-serve")
    return venv / "kserve-sdk" / "kserve" / "models"


def _literal_dict(cls: ast.ClassDef, name: str) -> dict:
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def sdk_models(models_dir: Path) -> dict[str, tuple[dict, dict, set]]:
    """class name -> (openapi_types, attribute_map, required attributes), for every SDK model file."""
    out = {}
    for path in sorted(models_dir.glob("*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.name[:1].isupper():
                types = _literal_dict(node, "openapi_types")
                if types:
                    seg = ast.get_source_segment(source, node) or ""
                    out[node.name] = (types, _literal_dict(node, "attribute_map"), set(_REQUIRED.findall(seg)))
    return out


def _k8s_model(name: str) -> tuple[dict, dict, set] | None:
    import kubernetes.client.models as k8s

    cls = getattr(k8s, name, None)
    if cls is None or not hasattr(cls, "openapi_types"):
        return None
    return cls.openapi_types, cls.attribute_map, set(_REQUIRED.findall(inspect.getsource(cls)))


class SchemaBuilder:
    """Builds {"$ref": ...} schemas with a shared `definitions` table; `unresolved` names the types
    neither the SDK nor the installed kubernetes client defines (they stay open objects)."""

    def __init__(self, models_dir: Path | None = None):
        models_dir = models_dir or sdk_models_dir()
        if not models_dir.is_dir():
            raise FileNotFoundError(f"{models_dir}: the kserve SDK is not installed (make serve-setup)")
        self.sdk = sdk_models(models_dir)
        self.definitions: dict[str, dict] = {}
        self.unresolved: set[str] = set()

    def type_schema(self, t: str) -> dict:
        t = t.strip()
        if t in _PRIMITIVES:
            return dict(_PRIMITIVES[t])
        if m := re.fullmatch(r"list\[(.+)\]", t):
            return {"type": "array", "items": self.type_schema(m.group(1))}
        if m := re.fullmatch(r"dict\(str,\s*(.+)\)", t):
            return {"type": "object", "additionalProperties": self.type_schema(m.group(1))}
        return self.ref(t)

    def ref(self, name: str) -> dict:
        if name not in self.definitions:
            model = self.sdk.get(name) or _k8s_model(name)
            if model is None:
                self.unresolved.add(name)
                self.definitions[name] = {"type": "object"}
            else:
                self.definitions[name] = {}  # placeholder: recursive types refer to themselves
                types, keys, required = model
                self.definitions[name] = {
                    "type": "object",
                    "properties": {keys[a]: self.type_schema(t) for a, t in types.items()},
                    "additionalProperties": False,
                    **({"required": sorted(keys[a] for a in required)} if required else {}),
                }
        return {"$ref": f"#/definitions/{name}"}

    def schema(self, root: str, api_version: str, kind: str) -> dict:
        """A closed schema for one resource: the model `root` with apiVersion and kind pinned."""
        top = self.ref(root)
        return {
            "allOf": [top, {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}}}],
            "definitions": self.definitions,
        }


def validator(root: str, api_version: str, kind: str):
    import jsonschema

    builder = SchemaBuilder()
    schema = builder.schema(root, api_version, kind)
    return jsonschema.Draft7Validator(schema), builder


def errors(doc: dict) -> list[str]:
    """Strict validation of one InferenceService or ServingRuntime: a list of one-line errors."""
    roots = {"InferenceService": ("V1beta1InferenceService", "serving.kserve.io/v1beta1"),
             "ServingRuntime": ("V1alpha1ServingRuntime", "serving.kserve.io/v1alpha1")}
    if doc.get("kind") not in roots:
        return [f"kind {doc.get('kind')!r}: expected one of {sorted(roots)}"]
    root, api = roots[doc["kind"]]
    v, _ = validator(root, api, doc["kind"])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
