"""``embedsvc export``: write a strategy's ONNX folder (model, tokenizer, manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from embedsvc.errors import EmbedsvcError


def export_command(
    strategy: str = typer.Option("mean", "--strategy", "-s", help="registered strategy name"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (created)"),
    int8: bool = typer.Option(False, "--int8", help="also write model_int8.onnx (dynamic int8)"),
    opset: int = typer.Option(17, help="ONNX opset"),
    config: str = typer.Option(
        None, help='strategy config overrides as JSON, e.g. {"max_length": 128}'
    ),
) -> None:
    """Export a strategy to ONNX; prints the manifest's summary (parity vs torch included)."""
    from embedsvc.export.onnx import export_strategy

    try:
        overrides = json.loads(config) if config else None
    except json.JSONDecodeError as exc:
        typer.echo(f"error: --config is not JSON: {exc.msg}", err=True)
        raise typer.Exit(2) from None
    try:
        manifest = export_strategy(strategy, out, quantize_int8=int8, opset=opset, config=overrides)
    except EmbedsvcError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    summary = {
        "out": str(out),
        "strategy": manifest["strategy"]["name"],
        "files": list(manifest["files"]),
        "opset": manifest["opset"],
        "parity": manifest["parity"],
        "export_seconds": manifest["export_seconds"],
    }
    typer.echo(json.dumps(summary))
