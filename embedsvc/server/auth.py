"""API-key authentication, shared by the gRPC interceptor and the HTTP routes.

Keys arrive as ``authorization: Bearer <key>``. Health checks and reflection are always open.
Read-only keys may call the read methods only (embed, search, list, get, select context,
generate); every other method needs a full key. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac

from embedsvc.config import AuthConfig
from embedsvc.errors import PermissionDenied, Unauthenticated

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
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
    }
)


class ApiKeyAuth:
    def __init__(self, config: AuthConfig) -> None:
        self.full_keys = [k.encode() for k in config.api_keys]
        self.read_keys = [k.encode() for k in config.read_only_keys]

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
        if not self.enabled or self.is_open(method):
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("missing API key: send the header 'authorization: Bearer <key>'")
        given = key.strip().encode()
        if any(hmac.compare_digest(given, k) for k in self.full_keys):
            return
        if any(hmac.compare_digest(given, k) for k in self.read_keys):
            if method.rsplit("/", 1)[-1] in READ_METHODS:
                return
            raise PermissionDenied(
                f"this API key is read-only and cannot call {method.rsplit('/', 1)[-1]}"
            )
        raise Unauthenticated("invalid API key")
