"""``embedsvc eval``: run an evaluation from the shell and print its numbers.

With ``--json`` stdout carries exactly one JSON object (anything a library prints while loading
is diverted to stderr), so scripts can pipe it; progress bars always go to stderr. Every error a
user can cause exits with status 2 and a one-line message.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from embedsvc.errors import EmbedsvcError

eval_app = typer.Typer(
    name="eval",
    help="Measure a strategy on STS or BEIR retrieval data.",
    no_args_is_help=True,
    add_completion=False,
)

StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help="strategy name, e.g. mean")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="embedding cache root (default: embedsvc cache dir)"),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="always re-encode; write nothing")]


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON; report them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _call(task: Callable[[], dict[str, Any]], as_json: bool) -> dict[str, Any]:
    """``task()``, with progress kept off stdout under ``--json``; a user error exits 2 with
    its message."""
    try:
        if as_json:
            with contextlib.redirect_stdout(sys.stderr):
                return task()
        return task()
    except EmbedsvcError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _run(task: Callable[[], dict[str, Any]], as_json: bool) -> None:
    result = _call(task, as_json)
    result = {k: _finite(v) for k, v in result.items()}
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['task']} / {result['strategy']}", show_header=False)
    for key, value in result.items():
        if key in ("task", "strategy"):
            continue
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _strategy(name: str):
    from embedsvc.strategies import get_strategy

    return get_strategy(name)


@eval_app.command("sts")
def sts_command(
    strategy: StrategyOpt,
    file: Annotated[Path, typer.Option("--file", "-f", help="STS-B or SICK file")],
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Spearman/Pearson x100 of the strategy's similarity against gold STS scores."""
    from embedsvc.eval.sts import evaluate_sts

    _run(
        lambda: evaluate_sts(
            _strategy(strategy), file, cache_dir=cache_dir, use_cache=not no_cache
        ),
        as_json,
    )


@eval_app.command("retrieval")
def retrieval_command(
    strategy: StrategyOpt,
    corpus: Annotated[Path, typer.Option("--corpus", help="BEIR corpus.jsonl[.gz]")],
    queries: Annotated[Path, typer.Option("--queries", help="BEIR queries.jsonl")],
    qrels: Annotated[Path, typer.Option("--qrels", help="BEIR qrels TSV")],
    max_docs: Annotated[
        int | None,
        typer.Option(
            "--max-docs",
            min=1,
            help="score a subset: every judged document + seeded random distractors up to N",
        ),
    ] = None,
    bm25: Annotated[
        bool, typer.Option("--bm25", help="add the BM25 (bm25s) and BM25 + dense hybrid rows")
    ] = False,
    tune_qrels: Annotated[
        Path | None,
        typer.Option(
            "--tune-qrels",
            help="qrels of other queries (e.g. the train split) to choose fusion weights on",
        ),
    ] = None,
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """nDCG@10 and Recall@100 (x100) of exact search over the corpus (or a --max-docs subset)."""
    from embedsvc.eval.retrieval import evaluate_retrieval

    _run(
        lambda: evaluate_retrieval(
            _strategy(strategy),
            corpus,
            queries,
            qrels,
            max_docs=max_docs,
            bm25=bm25,
            tune_qrels=tune_qrels,
            cache_dir=cache_dir,
            use_cache=not no_cache,
        ),
        as_json,
    )


@eval_app.command("compare")
def compare_command(
    task: Annotated[str, typer.Option("--task", help="retrieval or sts")] = "retrieval",
    strategies: Annotated[
        str | None,
        typer.Option(
            "--strategies",
            help="comma-separated names (default: every encoder strategy; decoder-LLM ones "
            "on request, best with --max-docs)",
        ),
    ] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="BEIR corpus")] = None,
    queries: Annotated[Path | None, typer.Option("--queries", help="BEIR queries")] = None,
    qrels: Annotated[Path | None, typer.Option("--qrels", help="BEIR qrels TSV")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="STS file")] = None,
    tune_qrels: Annotated[
        Path | None, typer.Option("--tune-qrels", help="qrels to choose hybrid weights on")
    ] = None,
    no_bm25: Annotated[bool, typer.Option("--no-bm25", help="leave out the BM25 rows")] = False,
    max_docs: Annotated[
        int | None, typer.Option("--max-docs", min=1, help="judged docs + distractors up to N")
    ] = None,
    sample: Annotated[int, typer.Option("--sample", min=1, help="texts timed per row")] = 64,
    plot_file: Annotated[
        Path | None, typer.Option("--plot", help="write quality vs cost as a PNG")
    ] = None,
    as_json: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """One table of several strategies (and BM25 peers): quality, encode ms/text, bytes/doc."""
    from embedsvc.eval import compare

    names = (
        [s.strip() for s in strategies.split(",") if s.strip()]
        if strategies
        else list(compare.DEFAULT_STRATEGIES)
    )
    cache = {"cache_dir": cache_dir, "use_cache": not no_cache}

    def task_fn() -> dict[str, Any]:
        if task == "retrieval":
            if corpus is None or queries is None or qrels is None:
                raise EmbedsvcError("--task retrieval needs --corpus, --queries and --qrels")
            result = compare.compare_retrieval(
                names,
                corpus,
                queries,
                qrels,
                bm25=not no_bm25,
                tune_qrels=tune_qrels,
                max_docs=max_docs,
                sample=sample,
                **cache,
            )
        elif task == "sts":
            if file is None:
                raise EmbedsvcError("--task sts needs --file")
            result = compare.compare_sts(names, file, sample=sample, **cache)
        else:
            raise EmbedsvcError(f"unknown task {task!r}: use retrieval or sts")
        if plot_file is not None:
            compare.plot(result, plot_file)
            result["plot"] = str(plot_file)
        return result

    result = _call(task_fn, as_json)
    if as_json:
        typer.echo(json.dumps(result, default=_finite))
        return
    from rich.console import Console
    from rich.table import Table

    title = f"{result['task']} / {result['dataset']}"
    if result.get("docs"):
        title += f" ({result['docs']})"
    table = Table(title=title)
    for col in ("strategy", result["metric"], "R@100", "encode ms/text", "bytes/doc", "index"):
        table.add_column(col)
    for row in result["rows"]:
        recall = row.get("recall@100")
        table.add_row(
            row["name"],
            f"{row['quality']:.2f}",
            "" if recall is None else f"{recall:.2f}",
            f"{row['encode_ms']:.2f}",
            f"{row['bytes_per_doc']:.0f}",
            row["index_kind"],
        )
    Console().print(table)
    for name, why in (result.get("skipped") or {}).items():
        Console().print(f"skipped {name}: {why}")
    Console().print("encode ms are wall-clock on this machine: compare them only from a quiet run")


@eval_app.command("context")
def context_command(
    strategy: StrategyOpt,
    file: Annotated[Path, typer.Option("--file", "-f", help="nq_open_gold or hotpotqa file")],
    as_json: JsonOpt = False,
    buffer: Annotated[int, typer.Option("--buffer", min=0, help="Adaptive-k buffer")] = 5,
    head_fraction: Annotated[float, typer.Option("--head-fraction", min=0.0, max=0.99)] = 0.0,
    tail_fraction: Annotated[float, typer.Option("--tail-fraction", min=0.0, max=0.99)] = 0.1,
    pool_size: Annotated[
        int | None, typer.Option("--pool-size", min=100, help="cut from top-N (default: all)")
    ] = None,
    token_budget: Annotated[int | None, typer.Option("--token-budget", min=1)] = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Gold-passage recall vs context tokens: Adaptive-k, fixed k and full context."""
    from embedsvc.eval.context import evaluate_context
    from embedsvc.rag.adaptive_k import AdaptiveKConfig

    def task() -> dict[str, Any]:
        try:
            config = AdaptiveKConfig(
                buffer=buffer,
                head_fraction=head_fraction,
                tail_fraction=tail_fraction,
                token_budget=token_budget,
            )
        except ValueError as exc:
            raise EmbedsvcError(str(exc)) from None
        return evaluate_context(
            _strategy(strategy),
            file,
            config,
            pool_size=pool_size,
            cache_dir=cache_dir,
            use_cache=not no_cache,
        )

    _run(task, as_json)


if __name__ == "__main__":  # pragma: no cover
    eval_app()
