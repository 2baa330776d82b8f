"""kill -9 during streaming upserts, 20 times: the long form of ``tests/server/test_fault.py``.

Each trial (``embedsvc.testing.kill_during_upserts``) starts a real ``embedsvc serve`` on a fresh
data folder, streams upserts from 4 writer threads (8 documents per stream message, 3 messages
per stream), SIGKILLs the server after a random 0.75-2.25 s, restarts it on the same folder and
audits: every acknowledged document must be stored with its exact text and be found by a search
for its own text, and every stream message must be all-or-nothing (no torn message). Documents
of unacknowledged streams may be present (their messages committed before the kill): they are
counted, not failed. The model-free ``debug`` strategy keeps a trial about storage, not the model.

    .venv/bin/python benchmarks/bench_fault.py              # 20 trials (~4-6 min on 2 cores)
    .venv/bin/python benchmarks/bench_fault.py --trials 3 --json docs/results/bench_fault.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_load_now, print_machine, table  # noqa: E402

from embedsvc.testing import kill_during_upserts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--kill-after", type=float, default=1.5, help="mean seconds before the kill")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    info = machine_info()
    print_machine(info)

    rows, reports = [], []
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="bench-fault-") as tmp:
            started = time.perf_counter()
            report = kill_during_upserts(
                Path(tmp) / "indexes", seed=trial, writers=args.writers,
                kill_after_s=args.kill_after,
            )  # fmt: skip
            seconds = time.perf_counter() - started
        reports.append({"trial": trial, "seconds": round(seconds, 1), "ok": report.ok,
                        **asdict(report)})  # fmt: skip
        row = [
            trial, report.acknowledged, report.messages_sent, report.present_unacknowledged,
            len(report.missing_acknowledged), len(report.unsearchable),
            len(report.torn_messages), len(report.wrong_text), "ok" if report.ok else "FAIL",
            seconds,
        ]  # fmt: skip
        rows.append(row)
        print(
            f"trial {trial:2d}: acknowledged {report.acknowledged:5d}  messages {row[2]:4d}  "
            f"present-unacked {report.present_unacknowledged:4d}  missing {row[4]}  "
            f"unsearchable {row[5]}  torn {row[6]}  wrong-text {row[7]}  "
            f"{'ok' if report.ok else 'FAIL'}  ({seconds:.1f} s)",
            flush=True,
        )
    end_load = print_load_now()
    print()
    print(
        table(
            ["trial", "acknowledged docs", "messages sent", "present, unacked", "missing acked",
             "unsearchable", "torn messages", "wrong text", "result", "seconds"],
            rows,
        )
    )  # fmt: skip
    failed = [r for r in reports if not r["ok"]]
    total_acked = sum(r["acknowledged"] for r in reports)
    print(
        f"\nsummary: {len(reports) - len(failed)}/{len(reports)} trials ok; "
        f"{total_acked} acknowledged documents, "
        f"{sum(len(r['missing_acknowledged']) for r in reports)} lost, "
        f"{sum(len(r['unsearchable']) for r in reports)} unsearchable, "
        f"{sum(len(r['torn_messages']) for r in reports)} torn messages, "
        f"{sum(r['present_unacknowledged'] for r in reports)} unacknowledged-but-committed "
        "documents (allowed)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": info, "load_at_end": end_load, "trials": reports}
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
