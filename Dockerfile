# embedsvc image. The install steps are the README's (scripts/setup.sh), run in the image.
#   CPU (default):  docker build -t embedsvc:cpu .
#   GPU:            docker build -t embedsvc:gpu \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#                     --build-arg EMBEDSVC_EXTRAS=gpu,ray,otel .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# which optional dependency groups setup.sh installs (pyproject.toml extras)
ARG EMBEDSVC_EXTRAS=cpu,onnx,ray,otel
# CUDA base images carry no Python: install it there (python:*-slim already has one)
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && (command -v python3 >/dev/null \
        || apt-get install -y --no-install-recommends python3 python3-venv python3-dev) \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml hatch_build.py README.md ./
COPY protos ./protos
COPY embedsvc ./embedsvc
COPY scripts ./scripts
RUN PYTHON=python3 EMBEDSVC_EXTRAS=${EMBEDSVC_EXTRAS} bash scripts/setup.sh
ENV PATH=/app/.venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    EMBEDSVC_CACHE_DIR=/models \
    EMBEDSVC_DATA_DIR=/indexes \
    EMBEDSVC_HOST=0.0.0.0
VOLUME ["/models", "/indexes"]
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
    CMD embedsvc health --server localhost:50051 || exit 1
CMD ["embedsvc", "serve"]
