"""The gRPC side of benchmarks/serve_load.py: `concurrency` threads, each with its own channel to
MLServer's Open Inference gRPC endpoint, calling ModelInfer for `seconds`. Runs in the serving
venv (grpcio and MLServer's generated stubs come with mlserver; the pipeline's venv has neither).

    .venv-serve/bin/python benchmarks/grpc_load.py --target 127.0.0.1:PORT --model NAME \\
        --texts texts.json --batch 1 --concurrency 8 --seconds 10

Prints the line `start` when the timed phase begins (the caller samples the server from then on),
then one JSON line: latencies_ms (every call), errors (non-OK calls or wrong row counts), wall_s.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import grpc
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

WARMUP = 10  # calls per thread before the clock starts: the first ones pay lazy initialisation


def request(model: str, texts: list[str]) -> pb.ModelInferRequest:
    """The V2 request of codec.v2_request, as protobuf: one BYTES input `text` of shape [N]."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[len(texts)],
        contents=pb.InferTensorContents(bytes_contents=[t.encode("utf-8") for t in texts]))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="a JSON list of strings")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    texts = json.loads(args.texts.read_text())
    reqs = [(request(args.model, texts[i:i + args.batch]), len(texts[i:i + args.batch]))
            for i in range(0, len(texts), args.batch)]
    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency
    ready = threading.Barrier(args.concurrency + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        with grpc.insecure_channel(args.target) as channel:
            infer = GRPCInferenceServiceStub(channel).ModelInfer
            for req, _ in reqs[k:k + WARMUP]:
                infer(req, timeout=60)
            ready.wait()
            i = k
            while time.monotonic() < stop_at[0]:
                req, rows = reqs[i % len(reqs)]
                i += args.concurrency
                t0 = time.perf_counter()
                try:
                    ok = infer(req, timeout=60).outputs[0].shape[0] == rows
                except grpc.RpcError:
                    ok = False
                latencies[k].append((time.perf_counter() - t0) * 1000)
                errors[k] += not ok

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + 3600  # until every thread has warmed up
    ready.wait()
    t0 = time.monotonic()
    stop_at[0] = t0 + args.seconds
    print("start", flush=True)
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    print(json.dumps({"latencies_ms": [x for per in latencies for x in per], "errors": sum(errors),
                      "wall_s": wall}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
