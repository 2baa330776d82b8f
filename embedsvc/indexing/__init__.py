"""Batch indexing jobs (Ray Data); the single-process indexer is ``embedsvc index``."""
