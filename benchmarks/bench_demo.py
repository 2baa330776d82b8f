"""``embedsvc serve --demo``: time to SERVING on a first and a later start, and how well the demo
collection answers its own questions.

Starts the real server on a fresh data folder (first start: load MiniLM, embed the 1,312 shipped
passages), stops it (SIGTERM), starts it again on the same folder (later start: nothing is
embedded), then searches all 1,328 demo questions and reports how often the gold passage is at
rank 1, in the top 5 and in the top 10. The README quotes these numbers.

    .venv/bin/python benchmarks/bench_demo.py --json docs/results/issue14_demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_load_now, print_machine, table  # noqa: E402

from embedsvc.demo import DEMO_COLLECTION, demo_questions  # noqa: E402
from embedsvc.testing import ServerProcess  # noqa: E402


def _timed_start(data_dir: Path) -> tuple[ServerProcess, float]:
    began = time.monotonic()
    server = ServerProcess(data_dir, "--demo", ready_timeout=1800).start()
    return server, time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    info = machine_info()
    print_machine(info)
    result: dict = {"machine": info}
    with tempfile.TemporaryDirectory() as tmp:
        server, result["first_start_s"] = _timed_start(Path(tmp))
        server.stop()
        server, result["later_start_s"] = _timed_start(Path(tmp))
        try:
            questions = demo_questions()
            ranks = []
            for start in range(0, len(questions), 256):
                chunk = questions[start : start + 256]
                found = server.client.search(
                    DEMO_COLLECTION, [q["question"] for q in chunk], top_k=10
                )
                for q, hits in zip(chunk, found):
                    ids = [h.id for h in hits]
                    ranks.append(ids.index(q["gold_id"]) + 1 if q["gold_id"] in ids else None)
        finally:
            server.stop()
    result["questions"] = len(ranks)
    for k in (1, 5, 10):
        result[f"gold_at_{k}"] = sum(1 for r in ranks if r is not None and r <= k) / len(ranks)
    print(
        table(
            ["first start (s)", "later start (s)", "questions", "gold@1", "gold@5", "gold@10"],
            [
                [
                    round(result["first_start_s"], 1),
                    round(result["later_start_s"], 1),
                    result["questions"],
                    *(f"{100 * result[f'gold_at_{k}']:.1f}%" for k in (1, 5, 10)),
                ]
            ],
        )
    )
    result["load_at_end"] = print_load_now()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
