# embedsvc CPU image. The install steps are the README's (scripts/setup.sh), run in the image.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml hatch_build.py README.md ./
COPY protos ./protos
COPY embedsvc ./embedsvc
COPY scripts ./scripts
RUN PYTHON=python3 bash scripts/setup.sh
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
