"""Typed configuration with defaults that work out of the box.

One source of truth for the server, the CLI and the library: ``ServiceConfig`` reads a YAML/JSON
file (``--config``) and ``EMBEDSVC_*`` environment variables (nested with ``__``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    """Where converted checkpoints and embedding caches live (never inside the repo)."""
    env = os.environ.get("EMBEDSVC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "embedsvc"


class BatchingConfig(BaseModel):
    """Cross-request batching of Embed and Search texts (TEI's max_batch_tokens idea)."""

    max_batch_tokens: int = Field(4096, ge=1, description="token budget of one forward pass")
    max_batch_texts: int = Field(256, ge=1)
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="under load, how long a batch waits for company (a lone request on an idle "
        "worker never waits)",
    )
    max_queue_texts: int = Field(8192, ge=1, description="past this, RESOURCE_EXHAUSTED")
    #: a blocking caller (gRPC worker thread) runs a lone request's forward itself when the
    #: worker is idle and there is no load, sparing two thread hand-offs; off = always the worker
    run_on_caller: bool = True
    #: run concurrent searches of one collection as one multi-query FAISS call (index kinds that
    #: gain from it only: ``VectorIndex.gains_from_batching``, i.e. flat)
    batch_searches: bool = True
    max_search_queries: int = Field(1024, ge=1, description="queries per batched FAISS call")


class LimitsConfig(BaseModel):
    max_texts_per_request: int = Field(1024, ge=1)
    max_text_chars: int = Field(100_000, ge=1, description="reject longer texts before tokenising")
    max_top_k: int = Field(1000, ge=1)
    max_queries_per_search: int = Field(256, ge=1)
    #: document ids in one Delete call (a repeated field otherwise bounded only by the 64 MiB
    #: message size)
    max_ids_per_request: int = Field(10_000, ge=1)


class AuthConfig(BaseModel):
    """API keys for every data RPC and HTTP route (health and reflection stay open).

    No keys configured = no authentication (the loopback default).
    """

    api_keys: list[str] = []
    #: keys that may embed, search and list, but not create, upsert or delete
    read_only_keys: list[str] = []
    #: keys that may only scrape ``GET /metrics`` (a Prometheus scraper's credential)
    metrics_keys: list[str] = []

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.read_only_keys)


class TlsConfig(BaseModel):
    """Serve gRPC and HTTP over TLS when both files are given."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


class HttpConfig(BaseModel):
    """The OpenAI-compatible HTTP API, served beside gRPC from the same engine."""

    enabled: bool = True
    #: 0 = any free port
    port: int = 8080
    #: largest request body accepted, counted while reading (Content-Length and chunked alike);
    #: larger ones get 413 before more than this is read
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    #: uvicorn's event loop: ``auto`` = uvloop when installed (it is a dependency), else asyncio
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    #: uvicorn's HTTP/1.1 parser: ``auto`` = httptools when installed (a dependency), else h11
    parser: Literal["auto", "h11", "httptools"] = "auto"


class MetricsConfig(BaseModel):
    """Prometheus metrics: on the HTTP port at ``/metrics`` (behind the API keys when keys are
    configured), and optionally on a separate port without a key, to keep on a private network.
    """

    #: a separate Prometheus listener (no key; bind it where only the scraper can reach it);
    #: None = none, 0 = any free port
    port: int | None = None
    host: str = "127.0.0.1"


class TracingConfig(BaseModel):
    """OpenTelemetry traces over OTLP/gRPC; off (no SDK loaded, no overhead) without an endpoint.

    Needs the ``otel`` extra (``pip install embedsvc[otel]``).
    """

    #: OTLP/gRPC collector, e.g. ``http://localhost:4317`` (``http://`` = plaintext)
    otlp_endpoint: str | None = None
    #: the ``service.name`` resource attribute
    service_name: str = "embedsvc"
    #: plaintext gRPC to the collector; None = decided by the endpoint's scheme
    insecure: bool | None = None
    #: seconds one export (retries included) may take; bounds shutdown with a dead collector
    export_timeout_s: float = Field(5.0, gt=0)

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint)


class LoggingConfig(BaseModel):
    """Log lines of the server: ``json`` (one object per line) or ``text``; one access line per
    request, every line with the request id."""

    format: Literal["text", "json"] = "text"
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING or ERROR")
        return level


class MilvusConfig(BaseModel):
    """Where collections created with ``backend: milvus`` live (needs the ``milvus`` extra).

    No ``uri``: the embedded milvus-lite database ``<data_dir>/milvus.db`` (one process, owned
    with the data folder). A cluster: ``http://host:19530`` (and ``token`` when it has auth);
    every embedsvc replica pointing at it sees the same collections.
    """

    uri: str | None = None
    token: str | None = None
    db_name: str = ""
    #: Milvus collection name = prefix + the embedsvc name (``-``/``.`` escaped)
    collection_prefix: str = Field("embedsvc_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    #: Strong = read your own writes, as the FAISS backend does; Bounded trades that for speed
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    #: seconds one Milvus call may take
    timeout_s: float = Field(30.0, gt=0)


class RayServeConfig(BaseModel):
    """``embedsvc serve --ray``: the service as Ray Serve deployments (needs the ``serve`` extra).

    Embedding replicas are stateless (one model copy each); the collection side owns the data
    folder, so it is one replica per data folder (replicated search is the Milvus backend's).
    Clients reach both through Ray Serve's proxies: gRPC on ``grpc_port``, HTTP on ``http_port``.
    """

    #: a running cluster (``ray://head:10001`` or ``auto``); None = start a local Ray
    address: str | None = None
    host: str = "127.0.0.1"
    grpc_port: int = 9000
    http_port: int = 8000
    embedding_replicas: int = Field(1, ge=1)
    #: autoscale embedding replicas on queue length between these bounds (None = fixed count)
    max_embedding_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    embedding_num_cpus: float = Field(1.0, ge=0)
    embedding_num_gpus: float = Field(0.0, ge=0)
    collection_num_cpus: float = Field(1.0, ge=0)
    #: concurrent requests one replica takes before Ray queues them (the batcher merges them)
    max_ongoing_requests: int = Field(64, ge=1)
    application: str = "embedsvc"


class ServiceConfig(BaseSettings):
    """Everything the service needs; every field has a working default."""

    model_config = SettingsConfigDict(env_prefix="EMBEDSVC_", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("indexes")
    cache_dir: Path = Field(default_factory=default_cache_dir)
    #: strategies loaded at start-up (others load on first use)
    preload_strategies: list[str] = ["mean"]
    #: torch | onnx
    runtime: str = "torch"
    torch_threads: int | None = None
    grpc_workers: int = 32
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    tls: TlsConfig = TlsConfig()
    http: HttpConfig = HttpConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    milvus: MilvusConfig = MilvusConfig()
    ray_serve: RayServeConfig = RayServeConfig()
    logging: LoggingConfig = LoggingConfig()
    #: seconds a forward pass may run before health reports NOT_SERVING (engine wedged)
    watchdog_timeout_s: float = Field(120.0, gt=0)
    #: how often the data folder is probed for writability (health of CollectionService)
    storage_check_interval_s: float = Field(10.0, gt=0)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> ServiceConfig:
        """Read a YAML or JSON config file (optional), then apply explicit overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            text = Path(path).read_text()
            if str(path).endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
