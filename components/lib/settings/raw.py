"""Reading a config file's raw values: ${VAR} / ${VAR:-default} expansion that names the key
it is in, `--set section.key=value` items, and YAML syntax errors with the line and column.
lib/settings/config.py validates what these return.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from components.lib.core.errors import UserError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, key: str, origin: str) -> Any:
    """Expand ${VAR} and ${VAR:-default} in every string under `value` (found at config `key`).

    ${VAR:-default} is VAR's value, or `default` when VAR is unset *or empty* (the shell's `:-`).
    ${VAR} with VAR unset or empty is an error naming the key and the variable: the value is
    almost always a path or a model name, and an empty one silently means the current directory
    (work_dir) or a confusing "cannot load" further on. Write ${VAR:-} to accept an empty value.
    """
    if isinstance(value, str):
        return _ENV.sub(lambda m: _env_value(m, key, origin), value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k), origin) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}.{i}", origin) for i, v in enumerate(value)]
    return value


def _env_value(match: re.Match[str], key: str, origin: str) -> str:
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value:
        return value
    if default is not None:
        return default
    state = "is not set" if value is None else "is set but empty"
    raise UserError(f"{origin}: config key '{key}': ${{{name}}} {state} and has no default; "
                    f"set {name}, or write ${{{name}:-default}}")


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set raw[a][b]... = value for key 'a.b...'. Inside a list a part is an index or, for a list of
    entries with a `lang` (data.languages), that language: data.languages.hr.augment_copies=10."""
    parts = key.split(".")
    if not all(parts):
        raise UserError(f"--set {key}: expected section.key=value")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, key, parts[:i])]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict | list):
            raise UserError(f"--set {key}: '{part}' is not a section")
        node = child
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key, parts[:-1])] = value
    else:
        node[parts[-1]] = value


def _list_index(items: list, part: str, key: str, where: list[str]) -> int:
    """The entry `part` names in the list at `where`: its index, or the entry whose lang it is."""
    name = ".".join(where)
    if part.isdigit():
        if int(part) < len(items):
            return int(part)
        raise UserError(f"--set {key}: {name} has {len(items)} entries (0-{len(items) - 1}), not {part}")
    langs = [item.get("lang") if isinstance(item, dict) else None for item in items]
    if part in langs:
        return langs.index(part)
    known = ", ".join(str(x) for x in langs if x is not None) or "none has a lang"
    raise UserError(f"--set {key}: no entry of {name} has lang '{part}' ({known}); or give its index")


def parse_set(item: str) -> tuple[str, Any]:
    """'student.hidden=128' -> ('student.hidden', 128); values are parsed as YAML scalars."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected section.key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """`<file>:<line>:<col>: not valid YAML: <problem> (<context>)`, 1-based as editors count."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start is not mark:  # where the unclosed [ or { began
        context = f"{context} at {start.line + 1}:{start.column + 1}"
    text = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {' '.join(text.split())}; fix the file there"
