"""What Ray Serve costs and gives on this machine: one-text Embed latency through Ray Serve's
gRPC proxy vs the plain in-process gRPC server, and throughput with 1 vs 2 embedding replicas.

Same model (``mean``, all-MiniLM-L6-v2, torch), same client, same texts (STS-B sentences):

* ``latency``: one text per Embed call, calls back to back from one client: p50/p99 in ms; the
  difference between the rows is the per-request overhead of Ray Serve's path (proxy ->
  frontend replica -> embedding replica and back) over a plain ``embedsvc serve`` process;
* ``throughput``: 8 client threads, 16 texts per call, for ``--seconds``: texts/s.

The plain server (a separate ``embedsvc serve`` process) runs first and is stopped, then a
local Ray (2 CPUs) with 1 embedding replica, then the same application redeployed with 2. On 2
cores a second replica has no cores of its own to run on: the numbers show the overhead and
whether anything is lost, not scaling.

    /work/bin/quiet python benchmarks/bench_ray_serve.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    free_port,
    machine_info,
    percentiles,
    print_load_now,
    print_machine,
    stsb_sentences,
    table,
)

THREADS = 8
TEXTS_PER_CALL = 16


def latency(client, texts: list[str], calls: int) -> tuple[float, float]:
    for text in texts[:10]:
        client.embed([text], strategy="mean")
    seconds = []
    for i in range(calls):
        started = time.perf_counter()
        client.embed([texts[i % len(texts)]], strategy="mean")
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)  # ms


def throughput(client, texts: list[str], seconds: float) -> float:
    done = [0] * THREADS
    stop = time.perf_counter() + seconds

    def run(t: int) -> None:
        i = t * 97
        while time.perf_counter() < stop:
            batch = [texts[(i + j) % len(texts)] for j in range(TEXTS_PER_CALL)]
            client.embed(batch, strategy="mean")
            done[t] += len(batch)
            i += TEXTS_PER_CALL

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def cell(name: str, client, texts, args) -> dict:
    p50, p99 = latency(client, texts, args.calls)
    row = {
        "system": name,
        "one_text_p50_ms": round(p50, 2),
        "one_text_p99_ms": round(p99, 2),
        "texts_per_s_8x16": round(throughput(client, texts, args.seconds), 1),
    }
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = machine_info(["ray", "torch"])
    print_machine(info)

    from embedsvc.client import EmbedsvcClient
    from embedsvc.config import HttpConfig, RayServeConfig, ServiceConfig

    texts = stsb_sentences(2000)
    data = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    base = ServiceConfig(
        port=0, data_dir=data / "direct", preload_strategies=["mean"], http=HttpConfig(port=0)
    )
    rows = []
    # the plain server is its own process (`embedsvc serve`), as each Ray replica is; Ray gives a
    # replica OMP_NUM_THREADS = its CPUs (1 here), so the plain server runs with 1 and with 2
    from embedsvc.testing import ServerProcess

    for threads in (2, 1):
        env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        with ServerProcess(data / f"d{threads}", env=env) as server:
            label = f"embedsvc serve process, {threads} torch thread(s)"
            rows.append(cell(label, server.client, texts, args))

    import ray
    from ray import serve

    from embedsvc.server import ray_serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        grpc_port, http_port = free_port(), free_port()
        for replicas in (1, 2):
            config = base.model_copy(
                update={
                    "data_dir": data / "ray",
                    "ray_serve": RayServeConfig(
                        grpc_port=grpc_port,
                        http_port=http_port,
                        embedding_replicas=replicas,
                        embedding_num_cpus=1,
                        collection_num_cpus=0,
                    ),
                }
            )
            if replicas == 1:
                ray_serve.start(config)
            else:
                serve.run(ray_serve.build_app(config), name="embedsvc", route_prefix="/")
            target = f"127.0.0.1:{config.ray_serve.grpc_port}"
            with EmbedsvcClient(target, timeout=120) as client:
                client.wait_ready(timeout=300)
                handle = serve.get_deployment_handle("Embedder", app_name="embedsvc")
                deadline = time.monotonic() + 300
                while len({handle.pid.remote().result() for _ in range(20)}) < replicas:
                    if time.monotonic() > deadline:
                        raise SystemExit("replicas did not come up")
                    time.sleep(1)
                rows.append(
                    cell(f"ray serve, {replicas} embedding replica(s)", client, texts, args)
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    load = print_load_now()
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows, "load_end": load}))


if __name__ == "__main__":
    main()
