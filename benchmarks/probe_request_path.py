"""Where a request's time goes before any model work: one client, sequential requests.

Starts one ``embedsvc serve`` process and times, on one keep-alive connection each:

* ``GET /health`` (no engine work at all: the HTTP stack alone),
* ``POST /v1/embeddings`` with the model-free ``debug`` strategy (HTTP + batcher, no model),
* ``POST /v1/embeddings`` with ``mean`` (all-MiniLM-L6-v2),
* gRPC ``Embed`` with ``debug`` and with ``mean`` (``embedsvc.client.EmbedsvcClient``),

and prints p50/p99 per probe. A fixed timer (Nagle + delayed ACK is 40 ms) shows up as the
same p50 on ``/health`` and on ``debug``; this script is how each change on the request path
was measured (docs/results/issue15_request_path.md).

    .venv/bin/python benchmarks/probe_request_path.py --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, percentiles, print_load_now, print_machine, table  # noqa: E402

TEXT = "A man is playing a guitar on the street."


def _time(fn, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--probes", default="health,http-debug,http-mean,grpc-debug,grpc-mean")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]

    from embedsvc.client import EmbedsvcClient
    from embedsvc.testing import ServerProcess

    info = machine_info(["uvicorn", "uvloop", "httptools", "orjson", "fastapi"])
    print_machine(info)
    env = {"EMBEDSVC_PRELOAD_STRATEGIES": '["mean", "debug"]'}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    rows, results = [], {}
    with ServerProcess(Path(tempfile.mkdtemp(prefix="probe-")) / "indexes", env=env) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port)
        client = EmbedsvcClient(f"127.0.0.1:{server.port}", timeout=30)
        client.wait_ready(timeout=300)

        def get(path: str) -> None:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status

        def post(model: str) -> None:
            body = json.dumps({"input": TEXT, "model": model})
            conn.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, data[:200]

        calls = {
            "health": lambda: get("/health"),
            "http-debug": lambda: post("debug"),
            "http-mean": lambda: post("mean"),
            "grpc-debug": lambda: client.embed([TEXT], strategy="debug"),
            "grpc-mean": lambda: client.embed([TEXT], strategy="mean"),
        }
        for probe in probes:
            latencies = _time(calls[probe], args.requests, args.warmup)
            p50, p99 = percentiles(latencies)
            results[probe] = {"p50_ms": p50, "p99_ms": p99, "n": len(latencies)}
            rows.append([probe, len(latencies), p50, p99])
            print(f"  {probe:11s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
        client.close()
        conn.close()
    load = print_load_now()
    print()
    print(table(["probe", "requests", "p50 ms", "p99 ms"], rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": info, "load_at_end": load, "env": env, "probes": results}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
