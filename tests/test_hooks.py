"""Every step is one flow over task hooks: its package's TASKS table has a module for every Task,
and each module satisfies the step's hooks Protocol (components/<step>/hooks.py): every constant
the Protocol annotates, of the annotated kind, every function with the Protocol's parameters (names and kinds; another
function bound to a hook's name must take them in order). No type
checker runs in the tests, so this is the check that a new task module is complete. No file of a
step package asks which task it is in (the old `cfg.is_token_task` branches).
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from pathlib import Path

import pytest

from components.lib.core.task import Task

PROTOCOLS = {
    "prepare_data": "PrepareHooks", "finetune_teacher": "TeacherHooks", "pseudo_label": "PseudoHooks",
    "distill_student": "DistillHooks", "evaluate": "EvalHooks", "export": "ExportHooks",
}


def protocol_of(step: str):
    return getattr(importlib.import_module(f"components.{step}.hooks"), PROTOCOLS[step])


def kind_of(hint):
    """What isinstance can check of an annotation: list[str] -> list, str | None as it is."""
    origin = typing.get_origin(hint)
    return hint if origin is None or origin is types.UnionType else origin


def functions_of(protocol) -> dict[str, object]:
    return {n: f for n, f in vars(protocol).items() if inspect.isfunction(f) and not n.startswith("_")}


@pytest.mark.parametrize("step", sorted(PROTOCOLS))
def test_every_task_has_a_complete_hooks_module(step):
    package = importlib.import_module(f"components.{step}")
    protocol = protocol_of(step)
    assert set(package.TASKS) == set(Task), f"components.{step}.TASKS misses {set(Task) - set(package.TASKS)}"
    assert protocol.__annotations__ or functions_of(protocol)
    hints = typing.get_type_hints(protocol)
    for task, module in package.TASKS.items():
        for name, hint in hints.items():
            assert hasattr(module, name), f"{module.__name__} ({task}) lacks the constant {name}"
            assert isinstance(getattr(module, name), kind_of(hint)), f"{module.__name__}.{name} is not a {hint}"
        for name, proto in functions_of(protocol).items():
            fn = getattr(module, name, None)
            assert callable(fn), f"{module.__name__} ({task}) lacks the hook {name}"
            want = [(p.name, p.kind) for p in inspect.signature(proto).parameters.values()][1:]  # without self
            if (getattr(fn, "__module__", None), fn.__name__) == (module.__name__, name):  # written as the hook
                got = [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]
                assert got == want, f"{module.__name__}.{name}: parameters {got}, the Protocol's {want}"
            else:  # another function bound to the hook's name: it takes the Protocol's arguments, in order
                inspect.signature(fn).bind(*[n for n, _ in want])


@pytest.mark.parametrize("step", sorted(PROTOCOLS))
def test_no_step_file_asks_which_task_it_is_in(step):
    folder = Path(importlib.import_module(f"components.{step}").__file__).parent
    assert not [p.name for p in folder.glob("*.py") if "is_token_task" in p.read_text()]


def test_each_task_module_is_the_one_its_contracts_name():
    from components import distill_student, evaluate, export, finetune_teacher, prepare_data, pseudo_label
    from components.lib.contracts import data, token_data

    seq, tok = Task.sequence_classification, Task.token_classification
    for package in (prepare_data, finetune_teacher, pseudo_label, distill_student, evaluate, export):
        assert package.TASKS[seq].__name__ == f"{package.__name__}.sequence"
        assert package.TASKS[tok].__name__ == f"{package.__name__}.tokens"
    assert finetune_teacher.TASKS[tok].TASK == tok and finetune_teacher.TASKS[seq].TASK == seq
    assert pseudo_label.TASKS[tok].TABLE == "pseudo-tokens" and pseudo_label.TASKS[seq].TABLE == "pseudo"
    # the transfer readers are the contracts' own (the streaming tests count rows through the hook)
    assert pseudo_label.TASKS[seq].read_rows is data.iter_transfer
    assert pseudo_label.TASKS[tok].read_rows is token_data.iter_token_transfer
    shared = {"data_dir", "label_names", "rows", "duplicates_removed", "overlap_removed", "seconds", "run_id"}
    for module in prepare_data.TASKS.values():
        assert shared <= set(module.Result.model_fields), module.__name__
    for module in distill_student.TASKS.values():
        assert module.METRIC in module.SCORES and set(module.LOGGED) <= set(module.SCORES), module.__name__
    for module in export.TASKS.values():
        assert {f"dev_{module.METRIC}_fp32", f"dev_{module.METRIC}_int8"} <= set(module.RESULT.model_fields)
    assert {"read_split", "load_teacher", "scores", "write_views", "result"} <= set(
        typing.get_type_hints(protocol_of("evaluate"))) | set(functions_of(protocol_of("evaluate")))
    assert set(protocol_of("export").__annotations__) == {"METRIC", "TASK_KEYS", "CODE_MODULES", "RESULT"}
