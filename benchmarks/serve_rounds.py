"""Serving variants of the demo student against its teacher, interleaved and repeated: each round
runs every variant (fp32 and int8 student) and then the teacher, so that the load other work puts
on a shared machine falls on all of them alike; the summary gives, per variant, the median and
the range over rounds of requests/s, p99 and their ratios to the same round's teacher.

    python benchmarks/serve_rounds.py [--rounds 3] [--seconds 10] \\
        [--variants mlflow:http,lean:http,lean:grpc,lean:http:8:2] [--out benchmarks/results/serve_load_lean.json]

A variant is runtime:protocol[:max_batch_size:max_batch_time_ms] (components/serve/server.py
RUNTIMES; MLServer's adaptive batching). Everything else is benchmarks/serve_load.py's: the demo's
test texts, 8 keep-alive clients, 2 workers, the teacher on the MLflow runtime over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import demo_texts, int8_twin, measure, teacher_model  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "serve_load_lean.json"
KEEP = ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "peak_rss_mb", "cpu_cores", "alive_at_end")


def parse_variant(spec: str) -> dict:
    parts = spec.split(":")
    if len(parts) not in (2, 4) or parts[0] not in ("lean", "mlflow") or parts[1] not in ("http", "grpc"):
        raise SystemExit(f"--variants {spec!r}: expected runtime:protocol[:max_batch_size:max_batch_time_ms]")
    batch = (int(parts[2]), float(parts[3]) / 1000) if len(parts) == 4 else (0, 0.0)
    return {"name": spec, "runtime": parts[0], "protocol": parts[1], "batch": batch}


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def cpu_ms(res: dict) -> float:
    """The server's CPU time per request, in ms: what other work on the machine changes least."""
    return 1000 * res["cpu_cores"] / res["requests_per_s"]


def summarise(rounds: list[dict]) -> dict:
    """Per variant and model: median/min/max over rounds of requests/s, p99, server CPU ms per
    request, and the ratios to the teacher of the same round (requests/s student/teacher, p99
    student/teacher, CPU per request teacher/student)."""
    out: dict = {}
    for rnd in rounds:
        teacher = rnd["teacher"]
        for key, res in rnd.items():
            if key == "teacher":
                continue
            cell = out.setdefault(key, {"requests_per_s": [], "p99_ms": [], "cpu_ms_per_request": [], "rps_ratio": [],
                                        "p99_ratio": [], "cpu_ratio": [], "errors": 0})
            cell["requests_per_s"].append(res["requests_per_s"])
            cell["p99_ms"].append(res["p99_ms"])
            cell["cpu_ms_per_request"].append(cpu_ms(res))
            cell["rps_ratio"].append(res["requests_per_s"] / teacher["requests_per_s"])
            cell["p99_ratio"].append(res["p99_ms"] / teacher["p99_ms"])
            cell["cpu_ratio"].append(cpu_ms(teacher) / cpu_ms(res))
            cell["errors"] += res["errors"]
    teachers = [r["teacher"] for r in rounds]
    out["teacher"] = {"requests_per_s": [t["requests_per_s"] for t in teachers],
                      "p99_ms": [t["p99_ms"] for t in teachers],
                      "cpu_ms_per_request": [cpu_ms(t) for t in teachers], "errors": sum(t["errors"] for t in teachers)}
    return {k: {m: (spread(v) if isinstance(v, list) else v) for m, v in cell.items()} for k, cell in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="for teacher.max_length")
    parser.add_argument("--variants", default="mlflow:http,lean:http,lean:grpc,lean:http:8:2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true", help="fp32 student only")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resummarise", action="store_true", help="recompute --out's summary from its rounds")
    args = parser.parse_args(argv)
    if args.resummarise:
        record = json.loads(args.out.read_text())
        record["summary"] = summarise(record["rounds"])
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record["summary"], indent=2))
        return 0
    args.batch = 1  # one text a request: the case the targets are about
    variants = [parse_variant(v) for v in args.variants.split(",")]

    from components.lib.settings.config import load_config

    cfg = load_config(args.config)
    work = args.work_dir.resolve()
    pyfunc = work / "export" / "pyfunc"
    texts = demo_texts(work)
    last_run = work / "last_run.json"
    parent = json.loads(last_run.read_text()).get("parent_run_id") if last_run.exists() else None
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "setup": {"texts": len(texts), "texts_per_request": 1, "concurrency": args.concurrency,
                        "workers": args.workers, "seconds": args.seconds, "cpus": os.cpu_count(),
                        "teacher": "mlserver-mlflow over HTTP (the teacher has no lean runtime)",
                        "serve_venv": os.environ.get("DISTILFLOW_SERVE_VENV", ".venv-serve"),
                        "note": "taken beside other work on a shared 2-core machine; see loadavg per run"},
              "rounds": [], "loadavg": []}
    with tempfile.TemporaryDirectory(prefix="serve-rounds-") as tmp:
        students = {"student": pyfunc}
        twin = None if args.no_int8 else int8_twin(pyfunc, work / "export", Path(tmp))
        if twin is not None:
            students["student_int8"] = twin
        teacher = teacher_model(f"sqlite:///{work / 'mlflow.db'}", cfg.teacher.max_length, Path(tmp), parent)
        for r in range(args.rounds):
            rnd: dict = {}
            for v in variants:
                for name, model_dir in students.items():
                    load = [round(x, 2) for x in os.getloadavg()]
                    res = measure(name, model_dir, texts, args, v["runtime"], v["protocol"], v["batch"])
                    rnd[f"{v['name']} {name}"] = {k: res[k] for k in KEEP}
                    record["loadavg"].append({"round": r, "run": f"{v['name']} {name}", "before": load})
            load = [round(x, 2) for x in os.getloadavg()]
            rnd["teacher"] = {k: v for k, v in measure("teacher", teacher, texts, args, "mlflow").items() if k in KEEP}
            record["loadavg"].append({"round": r, "run": "teacher", "before": load})
            record["rounds"].append(rnd)
            record["summary"] = summarise(record["rounds"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n")  # after every round: a partial run still counts
    print(json.dumps(record["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
