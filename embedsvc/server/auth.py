"""API-key authentication, shared by the gRPC interceptor and the HTTP routes.

Keys arrive as ``authorization: Bearer <key>``. Health checks and reflection are always open.
Read-only keys may call the read methods only (embed, search, list, get, select context,
generate, and the HTTP ``/metrics`` and ``/openapi.json``); every other method needs a full key.
Metrics keys may scrape ``/metrics`` and nothing else (and, configured alone, close ``/metrics``
while the data API stays open). Keys are compared in constant time.
"""

from __future__ import annotations

import hmac

from embedsvc.config import AuthConfig
from embedsvc.errors import PermissionDenied, Unauthenticated

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: the method names of the HTTP ``/metrics`` and ``/openapi.json`` routes
METRICS, OPENAPI = "Metrics", "OpenAPI"
#: RPC (or HTTP route) names a read-only key may call; anything else counts as a write
READ_METHODS = frozenset(
    {
        "ListStrategies",
        "Embed",
        "Search",
        "ListCollections",
        "GetCollection",
        "SelectContext",
        "Generate",
        "Senses",
        METRICS,
        OPENAPI,
    }
)


class ApiKeyAuth:
    def __init__(self, config: AuthConfig) -> None:
        self.full_keys = [k.encode() for k in config.api_keys]
        self.read_keys = [k.encode() for k in config.read_only_keys]
        self.metrics_keys = [k.encode() for k in config.metrics_keys]

    @property
    def enabled(self) -> bool:
        return bool(self.full_keys or self.read_keys)

    @staticmethod
    def is_open(method: str) -> bool:
        return method.startswith(OPEN_PREFIXES)

    def check(self, method: str, authorization: str | None) -> None:
        """Raise Unauthenticated / PermissionDenied unless ``authorization`` may call ``method``.

        ``method`` is a gRPC path (``/pkg.Service/Method``) or a bare method name.
        """
        name = method.rsplit("/", 1)[-1]
        guarded = self.enabled or (name == METRICS and self.metrics_keys)
        if not guarded or self.is_open(method):
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("missing API key: send the header 'authorization: Bearer <key>'")
        given = key.strip().encode()
        if any(hmac.compare_digest(given, k) for k in self.full_keys):
            return
        if any(hmac.compare_digest(given, k) for k in self.read_keys):
            if name in READ_METHODS:
                return
            raise PermissionDenied(f"this API key is read-only and cannot call {name}")
        if any(hmac.compare_digest(given, k) for k in self.metrics_keys):
            if name == METRICS:
                return
            raise PermissionDenied(f"this API key may only read /metrics, not call {name}")
        raise Unauthenticated("invalid API key")
