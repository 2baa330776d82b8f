"""The gRPC server: a thin layer over :class:`embedsvc.engine.Engine`."""

from embedsvc.server.app import Service, create_server, serve

__all__ = ["Service", "create_server", "serve"]
