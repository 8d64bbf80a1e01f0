"""The shared `python -m components.<step>` entry point: --config, --set, one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from components.lib.core.errors import UserError
from components.lib.settings.config import PipelineConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default configs/demo.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set student.hidden=128 (repeatable)",
    )


def to_jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if hasattr(result, "__dataclass_fields__"):
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(result), default=str))
    return result


def run_guarded(fn: Callable[[], Any]) -> int:
    """Run fn; a UserError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        result = fn()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        print(json.dumps(to_jsonable(result), indent=2, default=str))
    return 0


def step_main(run: Callable[[PipelineConfig], Any], description: str, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_guarded(lambda: run(load_config(args.config, args.overrides)))
