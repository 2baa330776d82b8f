"""Memory of a real ``embedsvc serve`` under the hostile-but-legitimate requests of issue 13.

Starts a server (debug strategy, no model), then reports its RSS and peak RSS (VmHWM, reset
before each probe) around: N distinct unknown HTTP paths without a key (and the size of
``/metrics`` after them), a 100 MB body with a Content-Length, and a 100 MB chunked body.

    PYTHONPATH=. .venv/bin/python benchmarks/hardening_probe.py --paths 2000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedsvc.testing import ServerProcess  # noqa: E402
from tests.server.test_http_limits import _rss_kib, _send_body  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--body-mb", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = {"EMBEDSVC_PRELOAD_STRATEGIES": '["debug"]', "EMBEDSVC_AUTH__API_KEYS": '["k"]'}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp), env=env) as server:
        pid, base = server.proc.pid, f"http://127.0.0.1:{server.http_port}"
        key = {"authorization": "Bearer k"}

        def mib(field: str) -> float:
            return round(_rss_kib(pid, field) / 1024, 1)

        def reset_peak() -> None:
            Path(f"/proc/{pid}/clear_refs").write_text("5")

        with httpx.Client(base_url=base) as http:
            out["metrics_bytes_before"] = len(http.get("/metrics", headers=key).content)
            out["rss_mib_before_paths"] = mib("VmRSS")
            for i in range(args.paths):
                http.get(f"/unknown-{i}")
            out["rss_mib_after_paths"] = mib("VmRSS")
            out["metrics_bytes_after"] = len(http.get("/metrics", headers=key).content)
        for chunked in (False, True):
            name = "chunked" if chunked else "content_length"
            reset_peak()
            out[f"peak_mib_before_{name}"] = mib("VmHWM")
            response, sent = _send_body(server.http_port, args.body_mb * 1000 * 1000, chunked)
            out[f"status_{name}"] = int(response.split(b" ", 2)[1]) if response else 0
            out[f"body_mib_sent_{name}"] = round(sent / 2**20, 1)
            out[f"peak_mib_after_{name}"] = mib("VmHWM")
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
