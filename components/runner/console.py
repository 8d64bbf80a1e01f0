"""What `distilflow run` shows while kfp.local runs the DAG.

Quiet by default: one line per step as it starts and as it ends (the time, and whether it ran, how
long, or came from the cache), then the summary table. kfp.local's own output (the executor input
JSON with the whole config, each step's streamed log, the outputs of every task) goes to the run's
log file, <work_dir>/kfp/<run_id>.log, and with --verbose to the terminal as well. Each step also
logs its own records to its MLflow run (lib/tracking.step_run), whatever the terminal shows.

kfp.local writes in two ways, and both pass through here: log records on the root logger (this is
a logging.Filter on it: dropping a record hides it from kfp's handler) and print() (write() is put
in place of builtins.print for the run; kfp's per-task indenting print wraps it).
"""

from __future__ import annotations

import builtins
import logging
import re
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
_CACHED = re.compile(r"Task (\S+) cache hit")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_RAISED = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit): \S")  # a traceback's end
_INPUT_FOLLOWS = "Got executor_input:"  # kfp's executor, before the JSON of the task's whole input
_AWAIT_JSON = "{"
TAIL_LINES = 30  # of a failed step's own output, shown by a quiet run


class RunConsole(logging.Filter):
    """kfp.local's records and prints -> the log file, and either everything (verbose) or one line
    per step start and end to `out`. Also records which tasks ran and which came from the cache."""

    def __init__(self, log_path: Path | None = None, verbose: bool = True, hidden: tuple[str, ...] = (),
                 out: TextIO | None = None, repeats: dict[str, int] | None = None):
        super().__init__()
        self.executed: list[str] = []  # task names, once per execution
        self.cached: list[str] = []
        self.verbose = verbose
        self.hidden = set(hidden)  # bookkeeping tasks: logged, not announced
        # tasks a ParallelFor runs more than once under one name (pseudo-label shards): shown as
        # "name [i/n]", i counted as kfp.local starts them (in parallel threads: each thread's own)
        self.repeats = dict(repeats or {})
        self._seen: dict[str, int] = {}
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115 (closed in close())
        self._out = out
        self._print = builtins.print
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._task = threading.local()  # the task whose output this thread prints (kfp runs parallel tasks in threads)
        self._runs: list[tuple[str, str]] = []  # (task name, label) of each execution, in start order
        self._lines: dict[str, deque[str]] = {}  # each execution's last TAIL_LINES printed lines
        self._finished: set[str] = set()
        self._in_input: dict[str, str] = {}  # task -> where it is in kfp's executor input JSON (_keep)

    # ---------------------------------------------------------------- the two inputs

    def filter(self, record: logging.LogRecord) -> bool:
        msg = ANSI.sub("", str(record.getMessage()))
        self._to_log(f"{time.strftime('%H:%M:%S')} {record.levelname} {msg}\n")
        if m := _EXECUTING.match(msg):
            label = self._label(m.group(1))
            self.executed.append(m.group(1))
            with self._lock:
                self._runs.append((m.group(1), label))
                self._started[label] = time.monotonic()
            self._task.name, self._task.label = m.group(1), label
            self._announce(m.group(1), label, "started")
        elif m := _CACHED.match(msg):
            self.cached.append(m.group(1))
            self._announce(m.group(1), self._label(m.group(1)), "cached: outputs reused from an earlier run")
        elif m := _FINISHED.match(msg):
            name, state = m.group(1), m.group(2).lower()
            # kfp.local logs a task's end in the thread that started it
            label = self._task.label if getattr(self._task, "name", None) == name else name
            if state == "success":
                self._finished.add(label)
            took = time.monotonic() - self._started.get(label, time.monotonic())
            self._announce(name, label, f"{'done' if state == 'success' else state} in {took:.1f} s")
        return self.verbose

    def _label(self, name: str) -> str:
        """`name`, or `name [i/n]` for the i-th of a task run n times."""
        if self.repeats.get(name, 1) <= 1:
            return name
        with self._lock:
            self._seen[name] = i = self._seen.get(name, 0) + 1
        return f"{name} [{i}/{self.repeats[name]}]"

    def write(self, *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
        """builtins.print while the DAG runs: to the log file, and to the terminal when verbose."""
        if file not in (None, sys.stdout):
            self._print(*args, sep=sep, end=end, file=file, flush=flush)
            return
        text = ANSI.sub("", (sep if sep is not None else " ").join(map(str, args)) + (end if end is not None else "\n"))
        self._to_log(text)
        if (task := getattr(self._task, "label", None)) is not None:
            self._keep(task, text.splitlines())
        if self.verbose:
            self._print(*args, sep=sep, end=end, flush=flush)

    def _keep(self, task: str, lines: list[str]) -> None:
        """Add a task's printed lines to its tail, less blank lines and the executor input JSON that
        kfp prints first (the whole config, dozens of lines): the tail is for what the step said."""
        with self._lock:
            tail = self._lines.setdefault(task, deque(maxlen=TAIL_LINES))
            for line in lines:
                state = self._in_input.get(task)
                if state is None:
                    if line.rstrip().endswith(_INPUT_FOLLOWS):
                        self._in_input[task] = _AWAIT_JSON
                    elif line.strip():
                        tail.append(line)
                elif state == _AWAIT_JSON:  # the JSON's first line: `{`, its last the `}` under it
                    if line.strip() == "{":
                        self._in_input[task] = line[: len(line) - len(line.lstrip())] + "}"
                    elif line.strip():  # no JSON after all
                        del self._in_input[task]
                        tail.append(line)
                elif line.rstrip() == state:
                    del self._in_input[task]

    # ---------------------------------------------------------------- output

    def _announce(self, name: str, label: str, what: str) -> None:
        if self.verbose or name in self.hidden:
            return
        line = f"{time.strftime('%H:%M:%S')}  {label:<28} {what}"
        with self._lock:
            self._print(line, file=self._out or sys.stdout, flush=True)

    def _to_log(self, text: str) -> None:
        if self._log is not None:
            with self._lock:
                self._log.write(text)
                self._log.flush()

    def unfinished(self) -> list[str]:
        """Executions (labels) that started and did not end in success: where a failed run failed."""
        return [label for name, label in self._runs if label not in self._finished and name not in self.hidden]

    def tail(self, task: str) -> str:
        """The last TAIL_LINES lines the execution `task` (a label) printed (what a quiet run shows when it fails)."""
        with self._lock:
            return "\n".join(self._lines.get(task, ()))

    def error_line(self, task: str) -> str | None:
        """The one-line error the execution `task` ended with: its CLI's `error: ...` line (cli.run_guarded,
        cli.step_errors), or a traceback's last `SomeError: message` line; None if it printed neither."""
        with self._lock:
            lines = [line.strip() for line in self._lines.get(task, ())]
        for line in reversed(lines):
            if line.startswith("error: "):
                return line[len("error: "):]
            if _RAISED.match(line):  # the class without its module: `RuntimeError: ...`
                kind, _, message = line.partition(": ")
                return f"{kind.rsplit('.', 1)[-1]}: {message}"
        return None

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
