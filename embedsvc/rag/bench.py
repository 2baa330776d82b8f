"""``embedsvc bench spec`` and ``embedsvc datastore build``: speculative-decoding numbers.

One run of ``bench spec`` decodes every prompt with plain greedy, then with each drafter (DReSD,
REST) on the same datastore, side by side per prompt (so machine-load drift hits all methods
alike), checks that every drafted output is token-identical to greedy, and reports per drafter:
mean accepted length (bonus excluded), acceptance rate, target calls per generated token and the
tokens/s ratio against greedy (total tokens / total wall time of each method).

Prompt files: HumanEval (``{prompt}``, jsonl.gz) or MT-Bench (``{turns}``, first turn), or any
corpus format :func:`embedsvc.rag.datastore.read_corpus` reads; prompts go through the chat
template.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from embedsvc.errors import EmbedsvcError

bench_app = typer.Typer(help="Benchmarks (speculative decoding).", no_args_is_help=True)
datastore_app = typer.Typer(help="DReSD / REST datastores.", no_args_is_help=True)


def _fail(exc: EmbedsvcError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(2)


def make_drafter(
    kind: str,
    datastore: Any,
    num_drafts: int = 10,
    len_drafts: int = 10,
    self_keys: bool = False,
    min_score: float | None = None,
) -> Any:
    """``none`` -> None, ``dresd`` / ``rest`` -> a drafter over ``datastore``."""
    from embedsvc.errors import InvalidArgument

    if kind in ("", "none"):
        return None
    if datastore is None:
        raise InvalidArgument(f"drafter {kind!r} needs a datastore", field="datastore")
    if kind == "dresd":
        from embedsvc.rag.dresd import DReSDConfig, DReSDDrafter

        cfg = DReSDConfig(
            num_drafts=num_drafts, len_drafts=len_drafts, self_keys=self_keys, min_score=min_score
        )
        return DReSDDrafter(datastore, cfg)
    if kind == "rest":
        from embedsvc.rag.rest import RESTConfig, RESTDrafter

        return RESTDrafter.from_datastore(
            datastore, RESTConfig(num_drafts=num_drafts, len_drafts=len_drafts)
        )
    raise InvalidArgument(f"unknown drafter {kind!r}: none | dresd | rest", field="drafter")


def parse_method(spec: str) -> tuple[str, bool, str]:
    """``kind[+self][@shape]`` -> (kind, self_keys, shape).

    shape: ``adaptive`` (default: tree verification, adaptive node budget), ``full`` (tree,
    every node of the num_drafts x len_drafts drafts, the paper's draft shape), ``batch`` (the
    DReSD reference verifier: the KV cache repeated per draft row).

    >>> parse_method("dresd+self@full")
    ('dresd', True, 'full')
    >>> parse_method("rest")
    ('rest', False, 'adaptive')
    """
    from embedsvc.errors import InvalidArgument

    name, _, shape = spec.partition("@")
    kind, _, extra = name.partition("+")
    shape = shape or "adaptive"
    if kind not in ("dresd", "rest") or extra not in ("", "self") or (extra and kind != "dresd"):
        raise InvalidArgument(f"unknown method {spec!r}: dresd[+self] | rest, then @shape")
    if shape not in ("adaptive", "full", "batch"):
        raise InvalidArgument(f"unknown shape in {spec!r}: adaptive | full | batch")
    return kind, extra == "self", shape


def run_spec_bench(
    prompts_file: Path,
    datastore: str,
    drafters: list[str],
    max_new_tokens: int = 64,
    limit: int | None = None,
    num_drafts: int = 10,
    len_drafts: int = 10,
    backbone: str = "smollm2",
    log: Any = None,
    offset: int = 0,
    max_nodes: int = 32,
    min_score: float | None = None,
    hf_generate: bool = False,
    small_batch_linear: bool = True,
) -> dict[str, Any]:
    """Decode prompts ``offset..offset+limit`` with greedy and each method; check identity."""
    from embedsvc.backbones import load_backbone
    from embedsvc.rag.datastore import Datastore, chat_prompt_ids, read_corpus
    from embedsvc.rag.speculative import GenerationStats, SpecConfig, SpeculativeDecoder

    bb = load_backbone(backbone)
    ds = Datastore.open(datastore)
    pairs = read_corpus(Path(prompts_file), (offset + limit) if limit else None)
    prompts = [p for p, _ in pairs][offset:]
    base = SpecConfig(
        max_new_tokens=max_new_tokens,
        num_drafts=num_drafts,
        len_drafts=len_drafts,
        max_nodes=max_nodes,
        small_batch_linear=small_batch_linear,
    )
    methods = {"greedy": SpeculativeDecoder(bb, None, base)}
    for spec in drafters:
        kind, self_keys, shape = parse_method(spec)
        cfg = base.model_copy()
        if shape == "full":
            cfg.adaptive_nodes, cfg.max_nodes = False, num_drafts * len_drafts
        elif shape == "batch":
            cfg.verify = "batch"
        drafter = make_drafter(kind, ds, num_drafts, len_drafts, self_keys, min_score)
        methods[spec] = SpeculativeDecoder(bb, drafter, cfg)
    names = list(methods)
    if hf_generate:
        names.append("hf_generate")
    totals = {name: GenerationStats() for name in names}
    identical = {name: 0 for name in names if name != "greedy"}
    mismatches: dict[str, list[int]] = {name: [] for name in identical}
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        ids = chat_prompt_ids(bb.tokenizer, prompt)
        ref: list[int] = []
        for name in names:
            if name == "hf_generate":
                out, stats = _hf_generate(bb, ids, max_new_tokens)
            else:
                out, stats = methods[name].generate(ids, max_new_tokens)
            totals[name] += stats
            if name == "greedy":
                ref = out
            elif out == ref:
                identical[name] += 1
            else:
                mismatches[name].append(offset + i)
        if log:
            log(
                f"[{i + 1}/{len(prompts)}] {time.perf_counter() - t0:.0f}s "
                + " ".join(
                    f"{n}:acc={s.mean_accepted_length:.2f},tps={s.tokens_per_s:.2f}"
                    for n, s in totals.items()
                )
            )
    base_tps = totals["greedy"].tokens_per_s
    report: dict[str, Any] = {
        "prompts_file": str(prompts_file),
        "prompts": len(prompts),
        "offset": offset,
        "max_new_tokens": max_new_tokens,
        "num_drafts": num_drafts,
        "len_drafts": len_drafts,
        "max_nodes": max_nodes,
        "min_score": min_score,
        "small_batch_linear": small_batch_linear,
        "datastore": {
            k: ds.manifest[k] for k in ("name", "tokens", "keys", "index", "lookup_ms_top50")
        },
        "greedy": totals["greedy"].summary(),
    }
    for name in identical:
        row = totals[name].summary()
        row["tokens_per_s_ratio_vs_greedy"] = round(row["tokens_per_s"] / base_tps, 4)
        row["identical_to_greedy"] = f"{identical[name]}/{len(prompts)}"
        row["mismatched_prompts"] = mismatches[name]
        report[name] = row
    return report


def _hf_generate(bb: Any, ids: list[int], max_new_tokens: int) -> tuple[list[int], Any]:
    """A plain ``model.generate`` (greedy, stock ``F.linear``) of the same model, timed."""
    import torch

    from embedsvc.rag.kernels import plain_linear
    from embedsvc.rag.speculative import GenerationStats

    eos = int(bb.tokenizer.eos_token_id)
    t = time.perf_counter()
    with torch.inference_mode(), plain_linear():
        gen = bb.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    wall = time.perf_counter() - t
    out = gen[0, len(ids) :].tolist()
    stats = GenerationStats(new_tokens=len(out), target_calls=len(out), wall_time_s=wall)
    return out, stats


@bench_app.command("spec")
def spec(
    prompts: Path = typer.Option(..., help="HumanEval (jsonl.gz) or MT-Bench (jsonl) prompt file"),
    datastore: str = typer.Option("smollm2-id-mix160", help="datastore name or folder"),
    max_new_tokens: int = typer.Option(64, min=1),
    limit: int = typer.Option(None, min=1, help="first N prompts"),
    drafters: str = typer.Option(
        "dresd,rest",
        help="comma-separated methods: dresd | dresd+self (request-local keys, not in the "
        "paper) | rest, each optionally @adaptive (default) | @full (every node of the "
        "num_drafts x len_drafts drafts) | @batch (DReSD's reference batched verifier)",
    ),
    num_drafts: int = typer.Option(10, min=1),
    len_drafts: int = typer.Option(10, min=1),
    offset: int = typer.Option(0, min=0, help="skip the first N prompts"),
    max_nodes: int = typer.Option(32, min=1, help="@adaptive: most draft tokens per step"),
    min_score: float = typer.Option(None, help="DReSD: no draft below this neighbour score"),
    hf_generate: bool = typer.Option(False, help="also time a plain transformers generate"),
    small_batch_linear: bool = typer.Option(True, help="W @ x.T kernels (greedy and drafted)"),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's)"),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, help="no per-prompt progress on stderr"),
) -> None:
    """Mean accepted length, acceptance rate, calls/token, tokens/s ratio; identity to greedy."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    names = [d.strip() for d in drafters.split(",") if d.strip()]
    try:
        report = run_spec_bench(
            prompts,
            datastore,
            names,
            max_new_tokens=max_new_tokens,
            limit=limit,
            num_drafts=num_drafts,
            len_drafts=len_drafts,
            log=None if quiet else (lambda m: typer.echo(m, err=True)),
            offset=offset,
            max_nodes=max_nodes,
            min_score=min_score,
            hf_generate=hf_generate,
            small_batch_linear=small_batch_linear,
        )
    except EmbedsvcError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{report['prompts']} prompts x {max_new_tokens} tokens, datastore {datastore}")
    typer.echo(f"greedy: {report['greedy']}")
    shown = [n for n, v in report.items() if isinstance(v, dict) and "identical_to_greedy" in v]
    for name in shown:
        typer.echo(f"{name}: {report[name]}")
    bad = [n for n in shown if report[n]["mismatched_prompts"] and n != "hf_generate"]
    if bad:
        raise typer.Exit(1)


@datastore_app.command("build")
def build(
    name: str = typer.Argument(..., help="stored as <cache>/datastores/<name>/"),
    corpus: list[Path] = typer.Option(..., help="corpus file(s); repeat the option"),
    form: str = typer.Option("id", help="id (the model's own greedy responses) | ood"),
    limit: int = typer.Option(None, min=1, help="records per corpus file"),
    max_seq_tokens: int = typer.Option(512, min=8),
    id_max_new_tokens: int = typer.Option(128, min=1),
    index_kind: str = typer.Option("auto", help="auto | flat | hnsw"),
    threads: int = typer.Option(None, min=1),
    overwrite: bool = typer.Option(False),
) -> None:
    """Build a DReSD datastore (keys: PCA-64 final-norm states; values: next 20 tokens)."""
    import torch

    from embedsvc.rag.datastore import DatastoreConfig, build_datastore

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        typer.echo(f"{time.perf_counter() - t0:7.1f}s {stage} {done}/{total}", err=True)

    try:
        config = DatastoreConfig(
            form=form,
            max_records=limit,
            max_seq_tokens=max_seq_tokens,
            id_max_new_tokens=id_max_new_tokens,
            index_kind=index_kind,
        )
        ds = build_datastore(name, corpus, config, overwrite=overwrite, progress=progress)
    except EmbedsvcError as exc:
        _fail(exc)
    typer.echo(json.dumps(ds.manifest, indent=2))


@datastore_app.command("info")
def info(name: str = typer.Argument(...)) -> None:
    """Print a datastore's manifest."""
    from embedsvc.rag.datastore import Datastore

    try:
        typer.echo(json.dumps(Datastore.open(name).manifest, indent=2))
    except EmbedsvcError as exc:
        _fail(exc)
