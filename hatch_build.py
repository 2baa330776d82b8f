"""Build hook: generate the Python protobuf/gRPC stubs from ``protos/`` (never hand-written).

Runs for wheels and editable installs alike. ``protos/embedsvc/v1/x.proto`` becomes
``embedsvc/v1/x_pb2.py`` (+ ``_pb2_grpc.py``, ``.pyi``), importable as ``embedsvc.v1.x_pb2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def generate_stubs(root: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted((root / "protos").rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{root / 'protos'}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    return protos


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate_stubs(Path(self.root))


if __name__ == "__main__":
    generate_stubs(Path(__file__).parent)
