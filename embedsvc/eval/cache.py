"""On-disk cache of evaluation embeddings, so re-running an evaluation does not re-encode.

Encoding the SciFact corpus takes minutes on CPU; a second ``embedsvc eval`` run (another
metric, another qrels split, a benchmark script) should take seconds. Entries are keyed by
everything that determines the vectors: the strategy's name, ``fingerprint`` (weights +
config) and output kind, the role, the normalisation flag and the sha256 of the exact text
list. Hashing the texts rather than the source file means a change in how texts are built
from a file (e.g. title joining) can never serve stale vectors. Files are ``.npy`` under
``<cache_dir>/embeddings/``, written to a temporary name and renamed, so a killed run never
leaves a truncated entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedsvc.config import default_cache_dir
from embedsvc.strategies.base import Role, Strategy

#: texts per ``encode`` call; small enough for a live progress bar, large enough to batch well
CHUNK = 256


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 of a text list, unambiguous (each text is length-prefixed)."""
    h = hashlib.sha256()
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(b"\x00%d\x00" % len(b))
        h.update(b)
    return h.hexdigest()


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)[:64]


def cache_path(
    cache_dir: Path, strategy: Strategy, role: Role, digest: str, normalize: bool
) -> Path:
    """Where the entry for these inputs lives (readable names, hashed identity)."""
    key = hashlib.sha256(
        "\x00".join(
            [
                strategy.name,
                strategy.fingerprint,
                strategy.output_kind,
                Role(role).value,
                str(normalize),
                digest,
            ]
        ).encode()
    ).hexdigest()[:32]
    name = f"{_safe(strategy.name)}-{Role(role).value}-{key}.npy"
    return cache_dir / "embeddings" / name


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_texts(
    strategy: Strategy,
    texts: Sequence[str],
    role: Role,
    *,
    normalize: bool = True,
    progress: Callable[[int], None] | None = None,
    sparse_out: list | None = None,
) -> np.ndarray:
    """Encode ``texts`` in length-sorted chunks; returns the vectors in input order.

    Sorting by length keeps padding low inside each chunk (as sentence-transformers does);
    ``progress(n)`` is called after each chunk with the number of texts done in it. For a dual
    strategy, ``sparse_out`` (a list) receives the sparse CSR of the texts, in input order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    parts: list[np.ndarray] = []
    sparse_parts: list = []
    for start in range(0, len(order), CHUNK):
        idx = order[start : start + CHUNK]
        emb = strategy.encode([texts[i] for i in idx], role, normalize=normalize, truncate=True)
        parts.append(np.asarray(emb.vectors))
        if emb.sparse is not None:
            sparse_parts.append(emb.sparse)
        if progress is not None:
            progress(len(idx))
    if not parts:
        width = strategy.dim // 8 if strategy.output_kind == "binary" else strategy.dim
        dtype = np.uint8 if strategy.output_kind == "binary" else np.float32
        return np.zeros((0, width), dtype=dtype)
    sorted_vecs = np.concatenate(parts)
    out = np.empty_like(sorted_vecs)
    out[np.asarray(order)] = sorted_vecs
    if sparse_out is not None and sparse_parts:
        from scipy import sparse

        stacked = sparse.vstack(sparse_parts, format="csr")
        sparse_out.append(stacked[np.argsort(np.asarray(order))])
    return out


def cached_encode(
    strategy: Strategy,
    texts: Sequence[str],
    role: Role,
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    normalize: bool = True,
    desc: str = "encoding",
) -> np.ndarray:
    """The vectors of ``texts`` for ``role``, from the cache when an entry exists.

    ``cache_dir`` defaults to :func:`embedsvc.config.default_cache_dir`. A progress bar (on
    stderr) shows only when encoding actually happens.
    """
    texts = list(texts)
    root = cache_dir if cache_dir is not None else default_cache_dir()
    path = cache_path(root, strategy, role, texts_digest(texts), normalize)
    if use_cache and path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape[0] == len(texts):
                return arr
        except (OSError, ValueError):
            pass  # unreadable entry: recompute and overwrite it below
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        vectors = encode_texts(strategy, texts, role, normalize=normalize, progress=bar.update)
    if use_cache:
        _save_atomic(path, vectors)
    return vectors


def cached_encode_dual(
    strategy: Strategy,
    texts: Sequence[str],
    role: Role,
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    desc: str = "encoding",
) -> tuple[np.ndarray, object]:
    """(dense vectors, sparse CSR) of a dual strategy's texts, cached like :func:`cached_encode`
    (the sparse part as ``.sparse.npz`` beside the dense ``.npy``)."""
    from scipy import sparse

    texts = list(texts)
    root = cache_dir if cache_dir is not None else default_cache_dir()
    path = cache_path(root, strategy, role, texts_digest(texts), True)
    spath = path.with_suffix(".sparse.npz")
    if use_cache and path.is_file() and spath.is_file():
        try:
            arr, mat = np.load(path, allow_pickle=False), sparse.load_npz(spath).tocsr()
            if arr.shape[0] == mat.shape[0] == len(texts):
                return arr, mat
        except (OSError, ValueError):
            pass
    out: list = []
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        vectors = encode_texts(strategy, texts, role, progress=bar.update, sparse_out=out)
    if not out:
        raise ValueError(f"strategy {strategy.name!r} returned no sparse part")
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        sparse.save_npz(tmp, out[0])
        os.replace(tmp, spath)
        _save_atomic(path, vectors)
    return vectors, out[0]
