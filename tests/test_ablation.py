"""benchmarks/ablation.py: one row per lever from multilingual_ner.py result files, the retention
each adds over the row before, a teacher that changed flagged, and the rows written under
`ablation` without touching the rest of the result file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def result(teacher: float, student: float, retention: float, seeds: int = 3) -> dict:
    ms = lambda v: {"mean": v, "std": 0.0, "n": seeds, "values": [v] * seeds}  # noqa: E731
    return {"macro_f1": {"teacher": ms(teacher), "student": ms(student), "baseline": ms(0.5)}, "seeds": seeds,
            "retention_mean": retention, "retention_min": retention - 0.05, "compression": 24.1,
            "speedup": ms(68.0), "params": {"student": 4877321, "teacher": 117509385}, "command": "x"}


def test_rows_adds_and_teacher_flag(tmp_path):
    files = {}
    for name, res in (("base", result(0.754, 0.645, 0.855)), ("unl", result(0.754, 0.690, 0.910, 1)),
                      ("weak", result(0.700, 0.680, 0.950, 1))):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(res))
    into = tmp_path / "uner.json"
    into.write_text(json.dumps({**result(0.754, 0.645, 0.855), "languages": {"da": {}}}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--row", f"today={files['base']}",
                           "--row", f"+ unlabeled text={files['unl']}", "--row", f"+ weaker teacher={files['weak']}",
                           "--into", str(into)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(into.read_text())
    assert written["languages"] == {"da": {}}  # the rest of the file untouched
    rows = written["ablation"]
    assert [r["lever"] for r in rows] == ["today", "+ unlabeled text", "+ weaker teacher"]
    assert rows[0]["adds"] is None and abs(rows[1]["adds"] - 0.055) < 1e-9
    assert [r["same_teacher"] for r in rows] == [True, True, False]
    assert "| + unlabeled text | 0.754 | 0.690 | 0.910 / 0.860 | +0.055 |" in proc.stdout
    assert "0.700 (other teacher)" in proc.stdout


def test_evaluate_set_takes_only_evaluate_keys_and_tags_the_rescoring():
    """multilingual_ner.py --evaluate-set rescoring the same models: a training key is refused in one
    line (exit 2) before any step runs; evaluate keys are typed like --set and named by a short tag."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "multilingual_ner.py"), "--evaluate-set", "student.seed=2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("--evaluate-set 'student.seed=2': expected evaluate.KEY=VALUE "
                                                         "(training settings go in --set)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import multilingual_ner

    assert multilingual_ner.typed_overrides(["evaluate.decoding=constrained", "evaluate.batch_size=64"]) == {
        "evaluate.decoding": "constrained", "evaluate.batch_size": 64}
    assert multilingual_ner.evaluate_tag([]) == ""
    tag = multilingual_ner.evaluate_tag(["evaluate.decoding=constrained"])
    assert tag.startswith("-") and len(tag) == 9 and tag == multilingual_ner.evaluate_tag(["evaluate.decoding=constrained"])
    assert tag != multilingual_ner.evaluate_tag(["evaluate.decoding=argmax"])


def test_the_teacher_is_compared_by_its_run_and_a_rescoring_names_its_decoding(tmp_path):
    """With teacher_run in the results, one teacher decoded another way (F1 moved) is the same
    teacher, marked with its decoding; another run at the same F1 is flagged."""
    def res(teacher_f1, run, decoding):
        return {**result(teacher_f1, 0.70, 0.93, 1), "teacher_run": run, "protocol": {"decoding": {"test": decoding}}}

    specs = []
    for name, r in (("base", res(0.758, "run-a", "argmax")), ("decoded", res(0.770, "run-a", "constrained")),
                    ("retrained", res(0.758, "run-b", "argmax"))):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
        specs += ["--row", f"{name} (x=1)={tmp_path / f'{name}.json'}"]  # a label may hold "="
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), *specs],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| decoded (x=1) | 0.770 (constrained decoding) |" in proc.stdout
    assert "| retrained (x=1) | 0.758 (other teacher) |" in proc.stdout
    assert "| base (x=1) | 0.758 |" in proc.stdout


def test_pooled_speed_rounds_and_another_key(tmp_path):
    """A result that pools its timing rounds gives the row its median and range; --key writes the
    rows beside `ablation`, which stays as it was."""
    pooled = {**result(0.77, 0.72, 0.934), "speedup_rounds": {"median": 36.1, "min": 27.7, "max": 47.2, "n": 18}}
    plain = result(0.77, 0.70, 0.924)
    for name, res in (("pooled", pooled), ("plain", plain)):
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    into = tmp_path / "uner.json"
    into.write_text(json.dumps({"ablation": [{"lever": "kept"}]}))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--row", f"plain={tmp_path / 'plain.json'}",
                           "--row", f"pooled={tmp_path / 'pooled.json'}", "--into", str(into), "--key", "three_seeds"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(into.read_text())
    assert written["ablation"] == [{"lever": "kept"}]
    assert [(r["speedup"], r["speedup_range"]) for r in written["three_seeds"]] == [(68.0, None), (36.1, [27.7, 47.2])]
    assert "| 24.1x | 36.1x (27.7-47.2) | 3 |" in proc.stdout and "| 24.1x | 68.0x | 3 |" in proc.stdout
