"""Server assembly: engine + servicers + health + reflection, and a graceful run loop.

Health is per service (gRPC health checks name one, or ``""`` for the whole server): every
service is NOT_SERVING until the warm-up finishes and while the engine is wedged;
``CollectionService`` is also NOT_SERVING while the data folder cannot be written (a read-only
mount, a full disk: probed at start-up and every ``storage_check_interval_s``), with the reason
in the log and on HTTP ``/health``, while ``EmbeddingService`` and the server as a whole stay
SERVING.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedsvc.collections.storage import probe
from embedsvc.config import ServiceConfig
from embedsvc.engine import Engine
from embedsvc.server.auth import ApiKeyAuth
from embedsvc.server.http import HttpServer, create_app
from embedsvc.server.interceptors import AuthInterceptor, MetricsInterceptor, RequestInterceptor
from embedsvc.server.metrics import Metrics
from embedsvc.server.servicer import add_servicers
from embedsvc.server.startup import Readiness, StartUp, StartupCancelled, describe
from embedsvc.server.tracing import create_tracing
from embedsvc.telemetry import install_log_record_factory

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Service:
    """A built, not yet started, server with its engine and health state."""

    def __init__(self, config: ServiceConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine(config)
        self.auth = ApiKeyAuth(config.auth)
        self.metrics = Metrics()
        self.metrics.track_queue(lambda: self.engine.batcher.queued_texts)
        self.metrics.track_collections(self._collection_sizes)
        self.engine.batcher.on_batch = self.metrics.observe_batch
        install_log_record_factory()  # every log record gets the request's id
        #: OTel spans to config.tracing.otlp_endpoint; None (no SDK loaded) without one
        self.tracing = create_tracing(config.tracing)
        self.serving = Readiness()
        #: service name -> why it is NOT_SERVING while the server serves (the data folder)
        self.degraded: dict[str, str] = {}
        self.startup = StartUp(self.serving)
        #: why the warm-up failed (the process exits non-zero with it); None while it has not
        self.startup_error: str | None = None
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.grpc_workers),
            interceptors=[
                RequestInterceptor(self.tracing),
                MetricsInterceptor(self.metrics),
                AuthInterceptor(self.auth),
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.service_names = add_servicers(self.server, self.engine)
        #: the services that need a writable data folder
        self._storage_services = [n for n in self.service_names if n.endswith(".CollectionService")]
        self.health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.set_serving(False)
        address = f"{config.host}:{config.port}"
        if config.tls.enabled:
            credentials = grpc.ssl_server_credentials(
                [(config.tls.key_file.read_bytes(), config.tls.cert_file.read_bytes())]
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {address}")
        self.http: HttpServer | None = None
        if config.http.enabled:
            app = create_app(
                self.engine,
                self.auth,
                self.metrics,
                self.serving,
                self.tracing,
                max_body_bytes=config.http.max_body_bytes,
                health_detail=lambda: dict(self.degraded),
            )
            http = config.http
            self.http = HttpServer(app, config.host, http.port, config.tls, http.loop, http.parser)
        #: the separate Prometheus listener (config.metrics.port), no key; None without one
        self.metrics_port: int | None = None
        if config.metrics.port is not None:
            self.metrics_port = self.metrics.serve(config.metrics.host, config.metrics.port)
        # the data folder's owner record names this server, so a refused process can point to it
        self.engine.collections.owner_lock.record(
            grpc=f"{config.host}:{self.port}",
            http=f"{config.host}:{self.http.port}" if self.http is not None else None,
        )
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._startup_thread: threading.Thread | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def _collection_sizes(self) -> dict[str, int]:
        sizes = {}
        for name in self.engine.collections.list():
            try:
                sizes[name] = self.engine.collections.get(name).count
            except Exception:  # deleted between list and get: skip it in this scrape
                continue
        return sizes

    def check_storage(self) -> str | None:
        """Probe the data folder; CollectionService NOT_SERVING (with the reason) while it
        cannot be written, SERVING again once it can. Returns the problem, or None."""
        problem = probe(self.config.data_dir)
        for name in self._storage_services:
            if problem == self.degraded.get(name):
                continue
            if problem is None:
                del self.degraded[name]
                log.warning("%s: data folder writable again: SERVING", name)
            else:
                self.degraded[name] = problem
                log.warning("%s NOT_SERVING: %s", name, problem)
            self._publish()
        return problem

    def _watchdog(self) -> None:
        """NOT_SERVING while a forward pass has run past the timeout (engine wedged); the data
        folder's writability every ``storage_check_interval_s``."""
        limit = self.config.watchdog_timeout_s
        period = min(1.0, limit / 4, self.config.storage_check_interval_s)
        last_probe = time.monotonic()
        while not self._stopped.wait(period):
            if time.monotonic() - last_probe >= self.config.storage_check_interval_s:
                last_probe = time.monotonic()
                self.check_storage()
            if not self._ready.is_set():
                continue
            wedged = self.engine.batcher.busy_for() > limit
            if wedged == self.serving.is_set():
                log.warning("engine %s", "wedged: NOT_SERVING" if wedged else "recovered")
                self.set_serving(not wedged, f"a forward pass has run for over {limit:g} s")

    def set_serving(self, serving: bool, reason: str = "starting") -> None:
        self.serving.reason = "" if serving else reason
        (self.serving.set if serving else self.serving.clear)()
        self._publish()

    def _publish(self) -> None:
        """gRPC health of the server ("") and of each service, from readiness and storage."""
        up, down = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        serving = self.serving.is_set()
        self.health.set("", up if serving else down)
        for name in self.service_names:
            self.health.set(name, up if serving and name not in self.degraded else down)

    def start(
        self,
        warm_up: Callable[[Engine, StartUp], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """Start answering; health turns SERVING once the models (and ``warm_up``) are ready.

        A failed warm-up leaves health NOT_SERVING with the reason, and calls ``on_failure``
        with it (``serve`` then exits non-zero rather than listening half-alive)."""
        self.server.start()
        if self.http is not None:
            self.http.start()
        self.check_storage()  # a read-only or full data folder is reported from the start
        threading.Thread(target=self._watchdog, name="embedsvc-watchdog", daemon=True).start()

        def ready() -> None:
            try:
                self.startup.report(
                    "loading models (" + ", ".join(self.config.preload_strategies) + ")"
                )
                self.engine.preload()
                if warm_up is not None:
                    warm_up(self.engine, self.startup)
                self.startup.check()
            except Exception as exc:
                if isinstance(exc, StartupCancelled) or self.startup.cancelled:
                    return  # stopped during start-up: not a failure
                self.startup_error = describe(exc)
                self.serving.reason = f"start-up failed: {self.startup_error}"
                log.error("start-up failed: %s", self.startup_error)
                log.debug("start-up failure", exc_info=True)
                if on_failure is not None:
                    on_failure(self.startup_error)
                return
            self._ready.set()
            self.set_serving(True)
            log.info("serving on %s:%d", self.config.host, self.port)

        self._startup_thread = threading.Thread(target=ready, name="embedsvc-startup", daemon=True)
        self._startup_thread.start()

    @property
    def ready(self) -> bool:
        """The warm-up finished (health may still be NOT_SERVING while the engine is wedged)."""
        return self._ready.is_set()

    def stop(self, grace: float = 10.0) -> None:
        """Drain: refuse new RPCs, let in-flight ones finish, then checkpoint collections and
        flush the spans still buffered."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False, "shutting down")
        # a warm-up stops between steps; wait for it so the engine is not closed under it
        self.startup.cancel()
        if self._startup_thread is not None:
            self._startup_thread.join(grace)
        if self.http is not None:
            self.http.stop(grace)
        self.metrics.stop_serving()
        self.server.stop(grace).wait()
        try:
            self.engine.close()
        finally:
            if self.tracing is not None:
                self.tracing.shutdown()

    def wait(self) -> None:
        self.server.wait_for_termination()


def create_server(config: ServiceConfig | None = None) -> tuple[Service, int]:
    """Build the service; bind ``port=0`` for a free port. Returns (service, bound port)."""
    service = Service(config or ServiceConfig())
    return service, service.port


def serve(config: ServiceConfig, warm_up: Callable[[Engine, StartUp], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit status: 0, or 1
    when the warm-up failed (the reason is logged in one line)."""
    service, port = create_server(config)
    done = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        state = "draining" if service.ready else "stopped during start-up"
        log.info("signal %d: %s", signum, state)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start(warm_up, on_failure=lambda reason: done.set())
    http = f", http on {config.host}:{service.http_port}" if service.http else ""
    print(f"embedsvc listening on {config.host}:{port}{http}", flush=True)
    done.wait()
    service.stop()
    return 1 if service.startup_error else 0
