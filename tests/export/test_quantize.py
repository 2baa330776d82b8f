"""int8 export: which MatMuls are quantised (``CoreModule.int8_keep_float``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from embedsvc.export.onnx import quantize_model_int8


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up_proj = nn.Linear(64, 128, bias=False)
        self.down_proj = nn.Linear(128, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.relu(self.up_proj(x)))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = _Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _export(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        _Block().eval(), (torch.randn(2, 5, 64),), str(path), dynamo=False, opset_version=17
    )
    return path


def _float_matmuls(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]


def test_keep_float_leaves_matching_matmuls_unquantised(tmp_path: Path) -> None:
    src = _export(tmp_path)
    assert len(_float_matmuls(src)) == 2
    every = tmp_path / "all.onnx"
    quantize_model_int8(src, every)
    assert _float_matmuls(every) == []  # both weights quantised
    kept = tmp_path / "kept.onnx"
    quantize_model_int8(src, kept, keep_float=("mlp/down_proj/",))
    assert [n.split("/")[-2] for n in _float_matmuls(kept)] == ["down_proj"]
