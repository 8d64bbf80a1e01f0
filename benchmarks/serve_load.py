"""Load benchmark of the served models: the demo's student (and its int8 twin when export kept
one) against its teacher, each behind MLServer (components/serve) on 127.0.0.1, driven by N
concurrent keep-alive clients for a fixed number of seconds. The students run on --runtime
(lean, the default, or mlflow) over --protocol (http, or grpc through benchmarks/grpc_load.py
in the serving venv), with MLServer's adaptive batching when --max-batch-size > 1; the teacher
always on the MLflow runtime over HTTP (benchmarks/serve_rounds.py interleaves variants).

    python benchmarks/serve_load.py [--work-dir runs/demo] [--concurrency 8] [--seconds 30] \
        [--runtime lean|mlflow] [--protocol http|grpc] [--max-batch-size N --max-batch-time S]

Needs `make demo` (runs/demo/export/pyfunc, the teacher logged under runs:/<id>/teacher in
runs/demo/mlflow.db) and the serving venv with torch (`make serve-bench` builds both and runs
this). Writes benchmarks/results/serve_load.json: per model requests_per_s, p50/p95/p99_ms,
errors, peak_rss_mb (the server's process tree), cpu_cores (its CPU time / wall time), the
concurrency and seconds used; then the targets (student >= 20x the teacher's requests/s, p99 <=
1/10 of the teacher's) and the bad requests sent to the student server after its load run.

The teacher is the MLflow transformers model finetune-teacher logged, re-saved with
model_config {truncation: true, max_length: teacher.max_length}: as logged it answers any text
past 512 word pieces with a 500 (its pipeline does not truncate). Loopback only; every phase
is bounded in time; servers are stopped by PID with all their children.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.serve.codec import error_reason, post, v2_request  # noqa: E402
from components.serve.server import process_tree, start, stop, tree_rss_mb  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "serve_load.json"
BAD = {  # the bad requests: (body, content type)
    "empty body": (b"", "application/json"),
    "wrong content type": (json.dumps(v2_request(["a text"])).encode(), "text/plain"),
    "batch of 10,000 texts": (json.dumps(v2_request(["a text"] * 10_000)).encode(), "application/json"),
    "1 MB text": (json.dumps(v2_request(["x" * (1 << 20)])).encode(), "application/json"),
    "non-UTF-8 bytes": (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["caf\xe9"]}]}',
                        "application/json"),
    "wrong input name": (json.dumps(v2_request(["a text"], name="sentences")).encode(), "application/json"),
}


# ---------------------------------------------------------------- what to serve

def demo_texts(work: Path, limit: int = 500) -> list[str]:
    """The demo's held-out test texts (what prepare-data wrote), as raw strings."""
    import pyarrow.parquet as pq

    found = sorted((work / "kfp").glob("**/prepare-data/**/test.parquet"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"{work}: no prepare-data test.parquet under kfp/ (run `make demo` first)")
    return [t for t in pq.read_table(found[-1], columns=["text"]).column("text").to_pylist() if t][:limit]


def teacher_model(tracking_uri: str, max_length: int, dst: Path, parent: str | None = None) -> Path:
    """The teacher finetune-teacher logged (in the parent run given, else the newest), re-saved to
    truncate at max_length."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    query = "tags.`distilflow.teacher_uri` LIKE 'runs:/%'" + (f" AND tags.`mlflow.parentRunId` = '{parent}'" if parent else "")
    runs = client.search_runs(exps, query, max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit(f"{tracking_uri}: no run with a logged teacher (distilflow.teacher_uri)")
    uri = runs[0].data.tags["distilflow.teacher_uri"]
    mlflow.set_tracking_uri(tracking_uri)
    parts = mlflow.transformers.load_model(uri, return_type="components")
    info = mlflow.models.get_model_info(uri)
    out = dst / "teacher"
    task = parts.get("task", "text-classification")
    parts = {k: v for k, v in parts.items() if k in ("model", "tokenizer")}
    mlflow.transformers.save_model(parts, str(out), task=task,
                                   signature=info.signature, model_config={"truncation": True, "max_length": max_length},
                                   pip_requirements=[])
    print(f"teacher: {uri} (re-saved with truncation at {max_length} pieces)", flush=True)
    return out


def int8_twin(pyfunc: Path, export_dir: Path, dst: Path) -> Path | None:
    """A copy of the exported pyfunc serving model.int8.onnx, when export kept it (and serves fp32)."""
    summary = json.loads((export_dir / "export_summary.json").read_text())
    if not summary["int8"].get("kept") or summary.get("served") == "model.int8.onnx":
        return None
    out = dst / "student_int8"
    shutil.copytree(pyfunc, out)
    conf = yaml.safe_load((out / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
    bundle = out / next(iter(conf.values()))["path"]
    shutil.copy2(export_dir / "model.int8.onnx", bundle / "model.int8.onnx")
    (bundle / summary["served"]).unlink()
    pyfunc_json = json.loads((bundle / "pyfunc.json").read_text())
    (bundle / "pyfunc.json").write_text(json.dumps({**pyfunc_json, "onnx": "model.int8.onnx"}, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- load

def http_clients(url: str, bodies: list[bytes], concurrency: int, seconds: float, started) -> tuple[list, int, float]:
    """`concurrency` threads, each one keep-alive connection, POST for `seconds`: (latencies in ms,
    errors, wall s); started() is called as the clock starts."""
    parts = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        i = k
        while time.monotonic() < stop_at:
            body = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            latencies[k].append((time.perf_counter() - t0) * 1000)
            errors[k] += not ok
        conn.close()

    started()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    return [x for per in latencies for x in per], sum(errors), time.monotonic() - t0


def grpc_clients(server, texts: list[str], batch: int, concurrency: int, seconds: float, started) -> tuple[list, int, float]:
    """benchmarks/grpc_load.py in the serving venv (grpcio and MLServer's stubs live there)."""
    from components.serve.server import serve_venv

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    cmd = [str(serve_venv() / "bin" / "python"), str(ROOT / "benchmarks" / "grpc_load.py"),
           "--target", f"127.0.0.1:{server.ports['grpc']}", "--model", server.name, "--texts", f.name,
           "--batch", str(batch), "--concurrency", str(concurrency), "--seconds", str(seconds)]
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                if line.strip() == "start":
                    started()
                elif line.startswith("{"):
                    out = json.loads(line)
            proc.wait(timeout=seconds + 120)
    finally:
        os.unlink(f.name)
    return out["latencies_ms"], out["errors"], out["wall_s"]


def drive(clients, pid: int) -> dict:
    """Run clients(started) -> (latencies ms, errors, wall s) while sampling the server's process
    tree (peak RSS, CPU time from started() on)."""
    import psutil

    peak = [tree_rss_mb(pid)]
    done = threading.Event()
    procs = process_tree(pid)
    cpu0 = [0.0]

    def sampler() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mb(pid))

    def started() -> None:
        cpu0[0] = sum(sum(p.cpu_times()[:2]) for p in procs)

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    latencies, errors, wall = clients(started)
    done.set()
    watcher.join()
    cpu1 = 0.0
    for p in procs:
        try:
            cpu1 += sum(p.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    lat = np.array(latencies)
    return {
        "requests": int(lat.size), "requests_per_s": round(lat.size / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": int(errors),
        "peak_rss_mb": round(peak[0], 1), "cpu_cores": round((cpu1 - cpu0[0]) / wall, 2),
        "seconds": round(wall, 1),
    }


def bad_requests(server) -> dict:
    """Each bad request's status and one-line reason, and whether a good request works after it."""
    good = json.dumps(v2_request(["the bank raised interest rates"])).encode()
    out = {}
    for case, (body, content_type) in BAD.items():
        status, answer = post(server.infer_url, body, content_type)
        after, _ = post(server.infer_url, good)
        out[case] = {"status": status, "reason": error_reason(answer), "serving_after": after == 200 and server.alive()}
        print(f"  {case}: HTTP {status} {out[case]['reason']} (then {after})", flush=True)
    return out


def measure(name: str, model_dir: Path, texts: list[str], args, runtime: str = "lean", protocol: str = "http",
            batch: tuple[int, float] = (0, 0.0)) -> dict:
    """One model behind one MLServer (runtime, protocol, adaptive batching) under load."""
    print(f"{name}: starting MLServer ({runtime} runtime) for {model_dir}", flush=True)
    t0 = time.monotonic()
    server = start(model_dir, name=name, workers=args.workers, runtime=runtime, batch=batch)
    try:
        started = time.monotonic() - t0
        if protocol == "grpc":
            res = drive(lambda go: grpc_clients(server, texts, args.batch, args.concurrency, args.seconds, go), server.pid)
        else:
            bodies = [json.dumps(v2_request(texts[i:i + args.batch])).encode() for i in range(0, len(texts), args.batch)]
            for body in bodies[:10]:  # warm-up: first requests pay lazy initialisation
                post(server.infer_url, body)
            res = drive(lambda go: http_clients(server.infer_url, bodies, args.concurrency, args.seconds, go), server.pid)
        res.update(concurrency=args.concurrency, texts_per_request=args.batch, start_s=round(started, 1),
                   workers=args.workers, runtime=runtime, protocol=protocol,
                   max_batch_size=batch[0], max_batch_time_ms=round(batch[1] * 1000, 3))
        if name == "student" and protocol == "http":
            res["bad_requests"] = bad_requests(server)
        res["alive_at_end"] = server.alive()
        print(f"{name}: {json.dumps({k: v for k, v in res.items() if k != 'bad_requests'})}", flush=True)
        return res
    finally:
        stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--tracking-uri", default=None, help="default sqlite:///<work-dir>/mlflow.db")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="for teacher.max_length")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=1, help="texts per request")
    parser.add_argument("--workers", type=int, default=2, help="MLServer inference workers (one per core here)")
    parser.add_argument("--models", default="student,student_int8,teacher")
    parser.add_argument("--runtime", choices=["lean", "mlflow"], default="lean",
                        help="the students' MLServer runtime (the teacher always runs on mlflow)")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http", help="the students' protocol")
    parser.add_argument("--max-batch-size", type=int, default=0, help="the students' adaptive batching (0: off)")
    parser.add_argument("--max-batch-time", type=float, default=0.0, metavar="S", help="... its wait, in seconds")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from components.lib.settings.config import load_config

    cfg = load_config(args.config)
    work = args.work_dir.resolve()
    uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    pyfunc = work / "export" / "pyfunc"
    if not (pyfunc / "MLmodel").exists():
        raise SystemExit(f"{pyfunc}: no exported student (run `make demo` first)")
    texts = demo_texts(work)
    last_run = work / "last_run.json"  # the demo's parent run: its teacher is the one evaluate compared
    parent = json.loads(last_run.read_text()).get("parent_run_id") if last_run.exists() else None
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews every number
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        models = {"student": lambda: pyfunc, "student_int8": lambda: int8_twin(pyfunc, work / "export", Path(tmp)),
                  "teacher": lambda: teacher_model(uri, cfg.teacher.max_length, Path(tmp), parent)}
        for name in args.models.split(","):
            model_dir = models[name]()
            if model_dir is None:
                continue
            student = name != "teacher"
            results[name] = measure(name, model_dir, texts, args, args.runtime if student else "mlflow",
                                    args.protocol if student else "http",
                                    (args.max_batch_size, args.max_batch_time) if student else (0, 0.0))
    s, t = results.get("student"), results.get("teacher")
    if s and t:
        results["targets"] = {
            "throughput_ratio": round(s["requests_per_s"] / t["requests_per_s"], 1), "throughput_min": 20,
            "p99_ratio": round(t["p99_ms"] / s["p99_ms"], 1), "p99_ratio_min": 10,
            "errors_under_load": sum(r["errors"] for r in results.values() if isinstance(r, dict) and "errors" in r),
            "bad_requests_all_4xx": all(400 <= b["status"] < 500 for b in s["bad_requests"].values()),
            "alive_at_end": all(r["alive_at_end"] for k, r in results.items() if k != "targets"),
        }
    results["setup"] = {"texts": len(texts), "source": "demo test split (BBC News)", "host": "127.0.0.1",
                        "client": "threads with one keep-alive http.client connection each, same machine",
                        "server": "MLServer 1.7.1: students on the runtime and protocol in their rows, the teacher on "
                                  "mlserver-mlflow (distilflow_runtime.DistilflowRuntime) over HTTP",
                        "teacher_max_length": cfg.teacher.max_length, "student_max_length": cfg.student.max_length,
                        "cpus": os.cpu_count(), "loadavg_before": load_before,
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if "targets" in results:
        print(json.dumps(results["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
