"""Parity of ONNX fp32 with torch, per strategy, on STS-B dev sentences (one line each).

Exports each strategy into a temporary folder (or ``--out/<name>``), serves it with the
export's ONNX executor (``runtimes.base.load_export``) and compares ``encode`` with the torch
strategy on the same texts: min / mean
cosine for dense strategies; for binary ones (``btr``) the fraction of equal sentence-code bits
and of equal token-code payload bits (+ the largest fp16 scale difference). Also prints the
graph size and the export-time parity recorded in the manifest. Not a speed benchmark.

    PYTHONPATH=. .venv/bin/python benchmarks/onnx_parity.py \
        --strategies dupmae btr multisense text2token_s1 [--n 64] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared/data"


def sentences(n: int) -> list[str]:
    from embedsvc.eval.data import read_sts

    pairs = read_sts(DATA / "stsb/sts-dev.csv")
    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    step = max(1, len(unique) // n)
    return unique[::step][:n] + ['He asked: "why not?"', "ok"]


def compare(torch_s, served, texts: list[str]) -> dict:
    start = time.perf_counter()
    ref = torch_s.encode(texts)
    t_torch = time.perf_counter() - start
    start = time.perf_counter()
    got = served.encode(texts)
    t_onnx = time.perf_counter() - start
    row = {"n": len(texts), "torch_s": round(t_torch, 2), "onnx_s": round(t_onnx, 2)}
    row["token_counts_equal"] = bool(np.array_equal(ref.token_counts, got.token_counts))
    if torch_s.output_kind == "binary":
        from embedsvc.strategies.btr import decode_payload, unpack_bits

        a, b = unpack_bits(ref.vectors, torch_s.dim), unpack_bits(got.vectors, torch_s.dim)
        row["code_bits_equal"] = float((a == b).mean())
        if ref.payloads is not None and got.payloads is not None:
            agree, scale = [], 0.0
            for x, y in zip(ref.payloads, got.payloads, strict=True):
                (b1, s1), (b2, s2) = decode_payload(x), decode_payload(y)
                agree.append(float((b1 == b2).mean()))
                scale = max(scale, float(np.abs(s1 - s2).max()))
            row["payload_bits_equal_min"] = min(agree)
            row["payload_scale_maxdiff"] = scale
        return row
    a = ref.vectors / np.linalg.norm(ref.vectors, axis=1, keepdims=True)
    b = got.vectors / np.linalg.norm(got.vectors, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    row["min_cos"] = float(cos.min())
    row["mean_cos"] = float(cos.mean())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=64, help="STS-B dev sentences (+2 short texts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="keep the exports here (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from embedsvc.export.onnx import MODEL_FP32, export_strategy
    from embedsvc.runtimes.base import load_export
    from embedsvc.strategies import create_strategy

    texts = sentences(args.n)
    rows = []
    for name in args.strategies:
        strategy = create_strategy(name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = (args.out / name) if args.out else Path(tmp)
            start = time.perf_counter()
            manifest = export_strategy(strategy, folder)
            export_s = time.perf_counter() - start
            served = load_export(folder, threads=args.threads)
            row = {"strategy": name, "export_s": round(export_s, 1)}
            row["graph_mb"] = round((folder / MODEL_FP32).stat().st_size / 1e6, 1)
            row["export_parity"] = manifest["parity"]["fp32"]
            row.update(compare(strategy, served, texts))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
